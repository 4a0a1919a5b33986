"""The milter protocol codec and conversation, without a reactor (tlsmta.inbound._milter_protocol)."""

from __future__ import annotations

import struct

import pytest

from tlsmta.inbound import _milter_protocol as mp


def reply(command: bytes, payload: bytes = b"") -> bytes:
    return mp.packet(command, payload)


def optneg(actions: int = mp.OFFERED_ACTIONS, protocol: int = 0, version: int = 6) -> bytes:
    return reply(b"O", struct.pack("!III", version, actions, protocol))


def packets(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        out.append((data[4:5], data[5 : 4 + length]))
        data = data[4 + length :]
    return out


def drain(conversation: mp.Conversation) -> list[mp.Event]:
    events = []
    while (event := conversation.next_event()) is not None:
        events.append(event)
    return events


def sent(events: list[mp.Event]) -> list[tuple[bytes, bytes]]:
    return [p for e in events if isinstance(e, mp.Send) for p in packets(e.data)]


def negotiated(actions: int = mp.OFFERED_ACTIONS, protocol: int = 0) -> mp.Conversation:
    conversation = mp.Conversation()
    conversation.start()
    (first,) = drain(conversation)
    assert isinstance(first, mp.Send)
    assert packets(first.data) == [(b"O", struct.pack("!III", 6, mp.OFFERED_ACTIONS, mp.OFFERED_PROTOCOL))]
    conversation.receive_data(optneg(actions, protocol))
    assert drain(conversation) == [mp.Negotiated(actions, protocol)]
    return conversation


def ask(conversation: mp.Conversation, stage: mp.Stage) -> list[tuple[bytes, bytes]]:
    """Ask a stage; the packets sent for it up to the first that waits for a reply."""
    conversation.ask(stage)
    return sent(drain(conversation))


MESSAGE = mp.Message(headers=(("From", "a@example.test"), ("Subject", "hi")), body=b"body\r\n", macros={"i": "ID1"})


def test_connect_sends_macros_then_command_and_waits_for_the_reply():
    """CONNECT goes after its SMFIC_MACRO packet; the answer comes only after the milter's reply."""
    conversation = negotiated()
    out = ask(conversation, mp.Connect("client.test", "192.0.2.1", 2525, "4", {"j": "mx.test"}))
    assert out == [(b"D", b"Cj\0mx.test\0"), (b"C", b"client.test\0" + b"4" + struct.pack("!H", 2525) + b"192.0.2.1\0")]
    conversation.receive_data(reply(b"c"))
    assert drain(conversation) == [mp.Answer(mp.Verdict.CONTINUE)]


def test_a_reply_split_across_reads_is_put_together():
    """Packets arrive in pieces on a stream; the answer comes when the last byte is there."""
    conversation = negotiated()
    ask(conversation, mp.Helo("client.test"))
    data = reply(b"r")
    conversation.receive_data(data[:3])
    assert drain(conversation) == []
    conversation.receive_data(data[3:])
    assert drain(conversation) == [mp.Answer(mp.Verdict.REJECT)]


def test_message_goes_command_by_command_and_collects_modifications():
    """DATA, each header, EOH, body chunk, end of body: one at a time; the modifications before
    the final reply come with the answer."""
    conversation = negotiated()
    assert ask(conversation, mp.Mail("a@example.test", ("SIZE=10",))) == [(b"M", b"<a@example.test>\0SIZE=10\0")]
    conversation.receive_data(reply(b"c"))
    drain(conversation)
    conversation.ask(MESSAGE)
    expected = [
        [(b"D", b"Ti\0ID1\0"), (b"T", b"")],
        [(b"L", b"From\0a@example.test\0")],
        [(b"L", b"Subject\0hi\0")],
        [(b"N", b"")],
        [(b"B", b"body\r\n")],
        [(b"D", b"Ei\0ID1\0"), (b"E", b"")],
    ]
    for step in expected:
        assert sent(drain(conversation)) == step
        if step[-1][0] != b"E":
            conversation.receive_data(reply(b"c"))
    conversation.receive_data(
        reply(b"h", b"X-Spam\0yes\0")
        + reply(b"i", struct.pack("!I", 1) + b"DKIM-Signature\0v=1\0")
        + reply(b"m", struct.pack("!I", 1) + b"Subject\0\0")
        + reply(b"e", b"<new@example.test>\0")
        + reply(b"+", b"<added@example.test>\0")
        + reply(b"-", b"<gone@example.test>\0")
        + reply(b"b", b"new body\r\n")
        + reply(b"q", b"looks odd\0")
        + reply(b"a")
    )
    (answer,) = drain(conversation)
    assert answer == mp.Answer(
        mp.Verdict.ACCEPT,
        modifications=(
            mp.AddHeader("X-Spam", "yes"),
            mp.InsertHeader(1, "DKIM-Signature", "v=1"),
            mp.ChangeHeader(1, "Subject", ""),
            mp.ChangeSender("new@example.test"),
            mp.AddRecipient("added@example.test"),
            mp.DeleteRecipient("gone@example.test"),
            mp.ReplaceBody(b"new body\r\n"),
            mp.Quarantine("looks odd"),
        ),
    )
    assert not conversation.in_message


def test_steps_the_milter_declined_are_not_sent_nor_answered():
    """NO* steps are not sent; NR_* steps are sent without waiting; a body chunk answered SKIP ends the body."""
    conversation = negotiated(protocol=mp.NODATA | mp.NR_HDR | mp.NOEOH | mp.SKIP)
    out = ask(conversation, mp.Message(headers=(("A", "1"), ("B", "2")), body=b"x" * (mp.BODY_CHUNK + 10)))
    assert [c for c, _ in out] == [b"L", b"L", b"B"]
    conversation.receive_data(reply(b"s"))
    assert sent(drain(conversation)) == [(b"E", b"")]
    conversation.receive_data(reply(b"c"))
    assert drain(conversation) == [mp.Answer(mp.Verdict.CONTINUE)]


def test_replycode_gives_the_milters_text():
    """SMFIR_REPLYCODE: a 5xx is a reject with the milter's words, a 4xx a tempfail."""
    conversation = negotiated()
    ask(conversation, mp.Rcpt("b@example.test"))
    conversation.receive_data(reply(b"y", b"550 5.7.1 Gtube pattern\0"))
    (answer,) = drain(conversation)
    assert answer.verdict is mp.Verdict.REJECT
    assert answer.reply is not None and answer.reply.code == 550 and answer.reply.text == "5.7.1 Gtube pattern"


def test_next_mail_aborts_the_unfinished_transaction():
    """A MAIL after a transaction that never reached end of message sends SMFIC_ABORT first."""
    conversation = negotiated()
    conversation.ask(mp.Mail("a@example.test"))
    drain(conversation)
    conversation.receive_data(reply(b"c"))
    drain(conversation)
    conversation.ask(mp.Mail("b@example.test"))
    assert [c for c, _ in sent(drain(conversation))] == [b"A", b"M"]


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack("!I", 0),  # a zero-length packet
        struct.pack("!I", mp.MAX_PACKET + 1) + b"x",  # absurd length
        reply(b"Z"),  # unknown reply
        reply(b"y", b"250 all fine\0"),  # a reply code that is not 4xx/5xx
        reply(b"h", b"X-No-Terminator"),  # malformed strings
    ],
)
def test_garbage_is_a_protocol_error(garbage):
    """What the protocol does not allow raises MilterProtocolError (the shell's default action)."""
    conversation = negotiated()
    conversation.ask(MESSAGE)
    for _ in range(5):
        drain(conversation)
        conversation.receive_data(reply(b"c"))
    drain(conversation)
    with pytest.raises(mp.MilterProtocolError):
        conversation.receive_data(garbage)


def test_modification_not_negotiated_is_a_protocol_error():
    """A milter that did not ask for SMFIF_CHGBODY may not replace the body."""
    conversation = negotiated(actions=mp.ADDHDRS)
    conversation.ask(mp.Message(headers=(), body=b""))
    for _ in range(3):
        drain(conversation)
        conversation.receive_data(reply(b"c"))
    with pytest.raises(mp.MilterProtocolError):
        conversation.receive_data(reply(b"b", b"x"))


def test_negotiation_beyond_the_offer_is_refused():
    """A milter asking for steps we did not offer (SMFIP_RCPT_REJ) cannot be talked to."""
    conversation = mp.Conversation()
    conversation.start()
    drain(conversation)
    with pytest.raises(mp.MilterProtocolError):
        conversation.receive_data(optneg(protocol=0x800))


def test_unsolicited_reply_is_a_protocol_error():
    """A reply while nothing was asked is garbage."""
    conversation = negotiated()
    with pytest.raises(mp.MilterProtocolError):
        conversation.receive_data(reply(b"c"))


def test_split_and_join_keep_a_message_byte_for_byte():
    """Header fields as milters see them (no space after the colon, folds kept) and back."""
    message = b"Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n.. dot\r\n"
    headers, body = mp.split_message(message)
    assert headers == [("Received", "from x\r\n\tby y"), ("Subject", "hi")]
    assert body == b"body\r\n.. dot\r\n"
    assert mp.join_message(headers, body) == message


def test_apply_modifications_edits_headers_envelope_and_body():
    """Add, insert, change and delete fields; change the sender; add and delete recipients; new body."""
    edited = mp.Edited("a@x.test", ["b@x.test", "c@x.test"], [("Received", "r"), ("Subject", "s"), ("X", "1"), ("X", "2")], b"old")
    mp.apply_modifications(edited, [
        mp.InsertHeader(1, "DKIM-Signature", "v=1"),
        mp.ChangeHeader(2, "X", "two"),
        mp.ChangeHeader(1, "Subject", ""),
        mp.ChangeHeader(1, "New", "added"),
        mp.AddHeader("X-Spam", "yes"),
        mp.ChangeSender("z@x.test"),
        mp.AddRecipient("d@x.test"),
        mp.AddRecipient("B@x.test"),
        mp.DeleteRecipient("c@x.test"),
        mp.ReplaceBody(b"new "),
        mp.ReplaceBody(b"body"),
    ])
    assert edited.headers == [("Received", "r"), ("DKIM-Signature", "v=1"), ("X", "1"), ("X", "two"),
                              ("New", "added"), ("X-Spam", "yes")]
    assert (edited.sender, edited.recipients, edited.body) == ("z@x.test", ["b@x.test", "d@x.test"], b"new body")
