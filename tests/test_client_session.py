"""The pure client session: server replies in, commands and outcomes out, no reactor."""

from __future__ import annotations

import pytest

from tlsmta.smtp._reply import Reply
from tlsmta.smtp.client_session import (
    BodyWanted,
    ClientSession,
    Closed,
    Event,
    Greeted,
    GreetingRefused,
    HelloRefused,
    Send,
    SessionError,
    StartTLS,
    StartTLSRefused,
    TransactionDone,
    Wait,
)

PLAIN_EHLO = b"250-mx.test\r\n250 SIZE 1000\r\n"
PIPELINING_EHLO = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def sent(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send))


def outcomes(events: list[Event]) -> list[Event]:
    return [e for e in events if not isinstance(e, Send)]


def greeted(ehlo: bytes = PLAIN_EHLO) -> ClientSession:
    session = ClientSession("client.test")
    assert sent(session.receive_data(b"220 mx.test ESMTP\r\n")) == b"EHLO client.test\r\n"
    [event] = session.receive_data(ehlo)
    assert isinstance(event, Greeted)
    return session


def run(session: ClientSession, replies: list[bytes]) -> tuple[bytes, list[Event]]:
    """Feed each reply in its own read (the server answers what it has read); all that came out."""
    events: list[Event] = []
    for reply in replies:
        events += session.receive_data(reply)
    return sent(events), outcomes(events)


# -- greeting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "replies, commands, outcome",
    [
        ([b"220 mx\r\n", PLAIN_EHLO], b"EHLO c\r\n", Greeted(Reply(220, ("mx",)), Reply(250, ("mx.test", "SIZE 1000")), {"SIZE": "1000"})),
        ([b"220 mx\r\n", b"502 no\r\n", b"250 hi\r\n"], b"EHLO c\r\nHELO c\r\n", Greeted(Reply(220, ("mx",)), Reply(250, ("hi",)), {})),
        ([b"220 mx\r\n", b"502 no\r\n", b"550 go away\r\n"], b"EHLO c\r\nHELO c\r\n", HelloRefused(Reply(550, ("go away",)))),
        ([b"554 5.3.2 busy\r\n"], b"", GreetingRefused(Reply(554, ("5.3.2 busy",)))),
        ([b"421-mx\r\n421 4.3.2 shutting down\r\n"], b"", GreetingRefused(Reply(421, ("mx", "4.3.2 shutting down")))),
    ],
    ids=["ehlo", "helo-fallback", "hello-refused", "banner-5xx", "banner-4xx-multiline"],
)
def test_greeting(replies: list[bytes], commands: bytes, outcome: Event) -> None:
    session = ClientSession("c")
    assert session.awaiting is not None and session.awaiting.wait is Wait.GREETING
    assert run(session, replies) == (commands, [outcome])


def test_multiline_reply_split_across_reads() -> None:
    """A multi-line EHLO reply arriving a few bytes at a time is one reply."""
    session = ClientSession("c")
    session.receive_data(b"220 mx\r\n")
    events: list[Event] = []
    for i in range(0, len(PIPELINING_EHLO), 5):
        events += session.receive_data(PIPELINING_EHLO[i : i + 5])
    [event] = events
    assert isinstance(event, Greeted) and event.capabilities == {"PIPELINING": "", "8BITMIME": ""}


# -- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_drops_what_follows_the_220() -> None:
    """Bytes the server sent after its 220 are discarded: never read as an answer inside TLS."""
    session = greeted(b"250-mx\r\n250 STARTTLS\r\n")
    assert sent(session.starttls()) == b"STARTTLS\r\n"
    events = session.receive_data(b"220 2.0.0 go ahead\r\n250-injected\r\n250 PIPELINING\r\n")
    assert events == [StartTLS(b"250-injected\r\n250 PIPELINING\r\n"), Send(b"EHLO client.test\r\n")]
    assert session.awaiting is not None and session.awaiting.wait is Wait.TLS_HELLO
    [event] = session.receive_data(b"250-mx\r\n250 REQUIRETLS\r\n")
    assert isinstance(event, Greeted) and event.tls and event.capabilities == {"REQUIRETLS": ""}
    assert session.capabilities == {"REQUIRETLS": ""}  # nothing kept from before TLS


@pytest.mark.parametrize("reply", [b"454 4.7.0 TLS not available\r\n", b"502 5.5.1 no\r\n"])
def test_starttls_refused_goes_on_in_plain_text(reply: bytes) -> None:
    """Unlike stock ESMTPClient, a refusal does not QUIT: the caller decides, the session is usable."""
    session = greeted(b"250-mx\r\n250 STARTTLS\r\n")
    session.starttls()
    [event] = session.receive_data(reply)
    assert isinstance(event, StartTLSRefused) and event.reply == Reply.parse(reply.decode().strip())
    assert sent(session.mail("a@b", [], ["r@d"])) == b"MAIL FROM:<a@b>\r\n"


def test_hello_refused_inside_tls() -> None:
    session = greeted(b"250-mx\r\n250 STARTTLS\r\n")
    session.starttls()
    session.receive_data(b"220 go\r\n")
    assert run(session, [b"554 no\r\n", b"554 still no\r\n"]) == (b"HELO client.test\r\n", [HelloRefused(Reply(554, ("still no",)), tls=True)])


# -- transactions -----------------------------------------------------------------------------

OK = b"250 2.0.0 ok\r\n"
GO = b"354 go ahead\r\n"


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize(
    "mail, rcpts, data, final, commands_after_data, done",
    [
        # Every step accepted: 354, the body, the final reply.
        (OK, [OK, OK], GO, b"250 2.0.0 queued\r\n", b"", ("250", ["250", "250"], "250")),
        # One recipient refused (5xx), one deferred (4xx): the accepted one gets the message.
        (OK, [b"550 5.1.1 no such user\r\n", OK], GO, OK, b"", ("250", ["550", "250"], "250")),
        (OK, [b"451 4.3.0 later\r\n", OK], GO, b"452 4.3.1 full\r\n", b"", ("250", ["451", "250"], "452")),
        # DATA refused: RSET, and the DATA reply is the final one.
        (OK, [OK], b"554 5.5.1 no valid recipients\r\n", None, b"RSET\r\n", ("250", ["250"], "554")),
        # The final reply 5xx / 4xx.
        (OK, [OK], GO, b"554 5.7.1 spam\r\n", b"", ("250", ["250"], "554")),
    ],
    ids=["all-accepted", "rcpt-5xx", "rcpt-4xx-final-4xx", "data-refused", "final-5xx"],
)
def test_transaction(pipelining: bool, mail: bytes, rcpts: list[bytes], data: bytes, final: bytes | None,
                     commands_after_data: bytes, done: tuple[str, list[str], str]) -> None:
    session = greeted(PIPELINING_EHLO if pipelining else PLAIN_EHLO)
    recipients = [f"r{i}@d" for i in range(len(rcpts))]
    commands = sent(session.mail("a@b", ["SIZE=10"], recipients))
    rcpt_lines = b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
    if pipelining:
        assert commands == b"MAIL FROM:<a@b> SIZE=10\r\n" + rcpt_lines + b"DATA\r\n"
        out, events = run(session, [mail + b"".join(rcpts) + data])
    else:
        assert commands == b"MAIL FROM:<a@b> SIZE=10\r\n"
        out, events = run(session, [mail, *rcpts, data])
        assert out.startswith(rcpt_lines + b"DATA\r\n")
        out = out[len(rcpt_lines + b"DATA\r\n"):]
    if final is None:
        assert out == commands_after_data
        out, more = run(session, [OK])  # the RSET reply
        events += more
    else:
        assert events == [BodyWanted()] and out == b""
        assert session.body(b".hidden\r\nline") == b"..hidden\r\nline"
        end = session.end_body()
        assert sent(end) == b"\r\n.\r\n"
        assert session.awaiting is not None and session.awaiting.wait is Wait.DATA_END
        out, more = run(session, [final])
        events = more
    [event] = events
    assert isinstance(event, TransactionDone)
    assert (str(event.mail.code), [str(r.code) for r in event.recipients], str(event.data.code if event.data else None)) == done
    assert session.awaiting is None
    assert sent(session.mail("a@b", [], ["again@d"])).startswith(b"MAIL FROM:<a@b>")  # ready for the next one


def test_mail_refused_without_pipelining_sends_no_rcpt() -> None:
    session = greeted()
    session.mail("a@b", [], ["r@d", "s@d"])
    out, events = run(session, [b"553 5.1.8 bad sender\r\n", OK])
    assert out == b"RSET\r\n"
    assert events == [TransactionDone(Reply(553, ("5.1.8 bad sender",)), (), None)]


def test_mail_refused_pipelined_waits_for_every_reply() -> None:
    """With pipelining every command was sent: each reply is read before RSET."""
    session = greeted(PIPELINING_EHLO)
    session.mail("a@b", [], ["r@d"])
    out, events = run(session, [b"553 5.1.8 bad sender\r\n503 5.5.1 no MAIL\r\n554 5.5.1 no recipients\r\n", OK])
    assert out == b"RSET\r\n"
    [done] = events
    assert isinstance(done, TransactionDone) and done.mail.code == 553 and [r.code for r in done.recipients] == [503]
    assert done.data is None


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelined"])
def test_no_recipient_accepted(pipelining: bool) -> None:
    """Nobody accepted: no DATA (lockstep), or an empty DATA ended (a pipelined server that said 354 anyway); RSET."""
    session = greeted(PIPELINING_EHLO if pipelining else PLAIN_EHLO)
    session.mail("a@b", [], ["r@d", "s@d"])
    refused = [b"550 5.1.1 no\r\n", b"450 4.2.0 busy\r\n"]
    if pipelining:
        out, events = run(session, [OK + b"".join(refused) + GO, OK, OK])
        assert out == b".\r\nRSET\r\n"
    else:
        out, events = run(session, [OK, *refused, OK])
        assert out == b"RCPT TO:<r@d>\r\nRCPT TO:<s@d>\r\nRSET\r\n"
    [done] = events
    assert isinstance(done, TransactionDone) and [r.code for r in done.recipients] == [550, 450] and done.data is None


def test_quit() -> None:
    session = greeted()
    assert sent(session.quit()) == b"QUIT\r\n"
    assert session.awaiting is not None and session.awaiting.wait is Wait.QUIT
    assert session.quit() == []
    assert session.receive_data(b"221 bye\r\n") == [Closed()]
    assert session.closed


def test_quit_while_replies_are_pending_sends_nothing_more() -> None:
    """QUIT during a transaction: the replies still due are read, but lead to no more commands."""
    session = greeted()
    session.mail("a@b", [], ["r@d"])
    session.quit()
    assert session.receive_data(OK + b"221 bye\r\n") == [Closed()]


# -- a server that breaks the protocol ----------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "not an SMTP reply"),
        (b"220 mx\r\n250 surprise\r\n", "unexpected reply"),  # answered before EHLO was sent
        (b"220-mx\r\n230 other code\r\n", "changed its code"),
        (b"220 " + b"x" * 5000, "too long"),
    ],
    ids=["garbage", "unsolicited", "code-change", "long-line"],
)
def test_protocol_errors_close_the_session(data: bytes, reason: str) -> None:
    session = ClientSession("c")
    events = session.receive_data(data)
    closed = events[-1]
    assert isinstance(closed, Closed) and closed.error is not None and reason in closed.error
    assert session.closed and session.awaiting is None
    assert session.receive_data(b"250 more\r\n") == []


def test_reply_while_nothing_is_awaited() -> None:
    session = greeted()
    [closed] = session.receive_data(b"250 nobody asked\r\n")
    assert isinstance(closed, Closed) and "unexpected reply: 250 nobody asked" in (closed.error or "")


def test_lockstep_reply_sent_before_the_command_is_refused() -> None:
    """Without pipelining, a RCPT reply in the same read as the MAIL reply was sent before RCPT went out."""
    session = greeted()
    session.mail("a@b", [], ["r@d"])
    events = session.receive_data(OK + OK)
    assert isinstance(events[-1], Closed) and "unexpected reply" in (events[-1].error or "")


@pytest.mark.parametrize("step", ["starttls", "mail", "body", "end_body"])
def test_steps_out_of_order_are_refused(step: str) -> None:
    session = ClientSession("c")  # not greeted yet
    call = {"starttls": session.starttls, "mail": lambda: session.mail("a@b", [], ["r@d"]),
            "body": lambda: session.body(b"x"), "end_body": session.end_body}[step]
    with pytest.raises(SessionError):
        call()


# -- LMTP (RFC 2033) ----------------------------------------------------------------------------

LMTP_LHLO = b"250-mailbox.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"


def lmtp_greeted() -> ClientSession:
    session = ClientSession("client.test", lmtp=True)
    assert sent(session.receive_data(b"220 mailbox.test LMTP\r\n")) == b"LHLO client.test\r\n"
    [event] = session.receive_data(LMTP_LHLO)
    assert isinstance(event, Greeted) and "PIPELINING" in event.capabilities
    return session


def test_lmtp_greets_with_lhlo_and_never_falls_back_to_helo() -> None:
    """LMTP has no HELO (RFC 2033 4.1): a refused LHLO ends the greeting, nothing more is sent."""
    session = ClientSession("c", lmtp=True)
    out, events = run(session, [b"220 mailbox\r\n", b"500 5.5.1 unknown command\r\n"])
    assert out == b"LHLO c\r\n"
    assert events == [HelloRefused(Reply(500, ("5.5.1 unknown command",)))]


def test_lmtp_lhlo_again_inside_tls() -> None:
    """After the 220 to STARTTLS the greeting inside TLS is LHLO too."""
    session = lmtp_greeted()
    assert sent(session.starttls()) == b"STARTTLS\r\n"
    events = session.receive_data(b"220 2.0.0 go ahead\r\n")
    assert events == [StartTLS(b""), Send(b"LHLO client.test\r\n")]
    [event] = session.receive_data(LMTP_LHLO)
    assert isinstance(event, Greeted) and event.tls


def test_lmtp_end_of_data_is_answered_once_per_accepted_recipient() -> None:
    """Three recipients, the second refused at RCPT: the end of the message waits for two
    replies (RFC 2033 4.2), and each recipient ends with its own answer."""
    session = lmtp_greeted()
    session.mail("a@b", [], ["r1@d", "r2@d", "r3@d"])
    events = session.receive_data(OK + OK + b"550 5.1.1 <r2@d> User doesn't exist\r\n" + OK + GO)
    assert outcomes(events) == [BodyWanted()]
    session.body(b"Subject: x\r\n\r\nhi\r\n")
    session.end_body()
    pending = session.awaiting
    assert pending is not None and pending.wait is Wait.DATA_END
    # The first recipient's reply alone does not end the transaction.
    assert session.receive_data(b"250 2.0.0 <r1@d> Saved\r\n") == []
    assert session.awaiting is not None and session.awaiting.wait is Wait.DATA_END
    [done] = session.receive_data(b"452 4.2.2 <r3@d> Quota exceeded\r\n")
    assert isinstance(done, TransactionDone)
    assert [r.code for r in done.per_recipient] == [250, 452]
    assert [r.code for r in done.final_replies()] == [250, 550, 452]
    assert session.awaiting is None
    assert sent(session.mail("a@b", [], ["again@d"])).startswith(b"MAIL FROM:<a@b>")  # ready for the next one


def test_lmtp_replies_in_one_read() -> None:
    """Both recipients' replies arriving in one read end the transaction once."""
    session = lmtp_greeted()
    session.mail("a@b", [], ["r1@d", "r2@d"])
    session.receive_data(OK + OK + OK + GO)
    session.end_body()
    [done] = session.receive_data(b"250 2.0.0 ok 1\r\n550 5.2.0 rejected\r\n")
    assert isinstance(done, TransactionDone)
    assert [str(r) for r in done.final_replies()] == ["250 2.0.0 ok 1", "550 5.2.0 rejected"]


def test_lmtp_refused_data_applies_to_every_accepted_recipient() -> None:
    """A DATA answered with something other than 354 is one reply, every accepted recipient's answer."""
    session = lmtp_greeted()
    session.mail("a@b", [], ["r1@d", "r2@d"])
    out, events = run(session, [OK + OK + b"450 4.4.1 rcpt later\r\n" + b"451 4.3.0 try later\r\n", OK])
    assert out == b"RSET\r\n"
    [done] = events
    assert isinstance(done, TransactionDone)
    assert [r.code for r in done.final_replies()] == [451, 450]


def test_lmtp_an_extra_reply_after_the_last_recipient_closes_the_session() -> None:
    """One reply more than there were accepted recipients is a reply to nothing: the session closes."""
    session = lmtp_greeted()
    session.mail("a@b", [], ["r1@d"])
    session.receive_data(OK + OK + GO)
    session.end_body()
    events = session.receive_data(b"250 2.0.0 ok\r\n250 2.0.0 again\r\n")
    assert isinstance(events[0], TransactionDone)
    assert isinstance(events[-1], Closed) and "unexpected reply" in (events[-1].error or "")


def test_final_replies_when_mail_is_refused() -> None:
    """MAIL refused: no recipient has an answer of its own (the caller uses the MAIL reply)."""
    done = TransactionDone(Reply(553, ("5.1.8 bad sender",)), (Reply(503, ("no",)),), None)
    assert done.final_replies() == ()


def test_smtp_final_reply_is_shared_by_the_accepted_recipients() -> None:
    """SMTP: one answer to the message, given to each accepted recipient; a refused one keeps its RCPT reply."""
    ok, refused, final = Reply(250, ("ok",)), Reply(550, ("no",)), Reply(452, ("full",))
    done = TransactionDone(ok, (ok, refused, ok), final)
    assert done.final_replies() == (final, refused, final)


# -- QUIT with the last message ---------------------------------------------------------------

BYE = b"221 2.0.0 bye\r\n"


def in_body(session: ClientSession, recipients: int = 1) -> None:
    session.mail("a@b", [], [f"r{i}@d" for i in range(recipients)])
    assert outcomes(session.receive_data(b"250 ok\r\n" * (1 + recipients) + GO)) == [BodyWanted()]
    session.body(b"Subject: x\r\n\r\nhi\r\n")


def test_quit_goes_with_the_final_dot_when_the_server_pipelines() -> None:
    """The connection's last message: ".", then QUIT in the same write; the message's reply ends the
    transaction, the 221 closes the session, and the session takes no other transaction."""
    session = greeted(PIPELINING_EHLO)
    in_body(session)
    assert sent(session.end_body(quit=True)) == b".\r\nQUIT\r\n"
    [done] = session.receive_data(b"250 2.0.0 queued\r\n")
    assert isinstance(done, TransactionDone) and done.data == Reply(250, ("2.0.0 queued",))
    assert session.ended and session.quit() == []  # nothing more to send
    assert session.awaiting is not None and session.awaiting.wait is Wait.QUIT
    assert session.receive_data(BYE) == [Closed(None)]
    assert session.ended
    with pytest.raises(SessionError):
        session.mail("a@b", [], ["again@d"])


def test_a_refused_message_with_quit_in_its_flight_still_reports_its_reply() -> None:
    """Both replies in one read: the 451 is the transaction's answer, then the session closes."""
    session = greeted(PIPELINING_EHLO)
    in_body(session)
    session.end_body(quit=True)
    done, closed = session.receive_data(b"451 4.3.0 try later\r\n" + BYE)
    assert isinstance(done, TransactionDone) and done.data == Reply(451, ("4.3.0 try later",))
    assert closed == Closed(None) and session.ended


def test_without_pipelining_quit_waits_for_the_messages_reply() -> None:
    """RFC 2920 is the server's to offer: without it the dot goes alone and the session stays ready."""
    session = greeted()
    session.mail("a@b", [], ["r@d"])
    run(session, [b"250 ok\r\n", b"250 ok\r\n", GO])
    assert sent(session.end_body(quit=True)) == b".\r\n"
    [done] = session.receive_data(b"250 ok\r\n")
    assert isinstance(done, TransactionDone) and not session.ended
    assert sent(session.quit()) == b"QUIT\r\n"


def test_lmtp_quit_follows_every_recipients_reply() -> None:
    session = lmtp_greeted()
    in_body(session, recipients=2)
    assert sent(session.end_body(quit=True)) == b".\r\nQUIT\r\n"
    done, closed = session.receive_data(b"250 2.0.0 ok 1\r\n250 2.0.0 ok 2\r\n" + BYE)
    assert isinstance(done, TransactionDone) and [r.code for r in done.final_replies()] == [250, 250]
    assert closed == Closed(None)
