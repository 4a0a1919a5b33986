"""The SMTP server session with no reactor, no sockets and no clock: bytes in, events out."""

from __future__ import annotations

import base64
from typing import Any

import attrs
import pytest

from tlsmta.smtp import server_session
from tlsmta.smtp._reply import Reply
from tlsmta.smtp.server_session import (
    HARD_ERROR_LIMIT,
    CheckCredentials,
    Close,
    CommitMessage,
    LineReceived,
    MailAllowed,
    MessageData,
    MessageRefused,
    OpenMessage,
    Phase,
    RcptTo,
    Send,
    ServerSession,
    ServerSettings,
    StartTLS,
)

SETTINGS = ServerSettings(hostname="mx.test", max_message_size=10_000, max_recipients=3, offers_starttls=True)


class Driver:
    """Feeds a session and answers its questions the way a permissive shell would."""

    def __init__(self, settings: ServerSettings = SETTINGS, answers: dict[type, Any] | None = None):
        self.session = ServerSession(settings, peer="192.0.2.1")
        self.answers = answers or {}
        self.stored: list[bytes] = []
        self.events: list[Any] = []

    def feed(self, data: bytes) -> list[Any]:
        self.session.receive_data(data)
        return self.drain()

    def drain(self) -> list[Any]:
        out = []
        while (event := self.session.next_event()) is not None:
            out.append(event)
            if isinstance(event, MessageData):
                self.stored.append(event.data)
            answer = self.answers.get(type(event), _DEFAULT_ANSWERS.get(type(event)))
            if answer is not None:
                answer(self.session, event)
        out = [e for e in out if not isinstance(e, LineReceived)]
        self.events += out
        return out

    def replies(self, data: bytes) -> list[str]:
        return [str(e.reply) for e in self.feed(data) if isinstance(e, Send)]

    def codes(self, data: bytes) -> list[int]:
        return [e.reply.code for e in self.feed(data) if isinstance(e, Send)]


_DEFAULT_ANSWERS = {
    MailAllowed: lambda s, q: s.accept(),
    RcptTo: lambda s, q: s.accept_recipient(q.address, q.domain.lower()),
    OpenMessage: lambda s, q: s.accept(),
    CommitMessage: lambda s, q: s.finish_message(Reply.of(250, "2.0.0", "Ok: queued as X")),
    CheckCredentials: lambda s, q: s.credentials_accepted(q.user) if q.password == "right" else s.credentials_refused(),
}


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


@pytest.mark.parametrize(
    "script, codes",
    [
        # (what the client sends in one read, the reply codes it gets)
        (b"MAIL FROM:<a@b.test>\r\n", [503]),  # MAIL before HELO/EHLO
        (b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n", [250, 250, 503]),  # nested MAIL
        (b"EHLO c\r\nRCPT TO:<x@y.test>\r\n", [250, 503]),  # RCPT before MAIL
        (b"EHLO c\r\nDATA\r\n", [250, 503]),
        (b"EHLO c\r\nMAIL FROM:<>\r\nDATA\r\n", [250, 250, 554]),  # no recipients
        (b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA now\r\n", [250, 250, 250, 501]),
        (b"HELO c\r\nMAIL FROM:<a@b.test> SIZE=10\r\n", [250, 555]),  # parameters need EHLO
        (b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=20000\r\n", [250, 552]),
        (b"EHLO c\r\nMAIL FROM:<a@b.test> REQUIRETLS\r\n", [250, 530]),  # REQUIRETLS outside TLS
        (b"EHLO c\r\nMAIL FROM:<a@b.test> FOO\r\n", [250, 555]),
        (b"EHLO c\r\nMAIL FROM:a@b.test\r\n", [250, 501]),
        (b"EHLO\r\n", [501]),
        (b"FROB\r\n", [500]),
        (b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nEXPN x\r\n", [250, 250, 252, 214, 502]),
        (b"EHLO c\r\nSTARTTLS now\r\n", [250, 501]),
        (b"EHLO c\r\nAUTH PLAIN\r\n", [250, 502]),  # no users file
        (b"QUIT\r\nNOOP\r\n", [221]),  # nothing after QUIT
        (b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster>\r\n", [250, 250, 250]),
        (b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n" + b"".join(b"RCPT TO:<x%d@y.test>\r\n" % i for i in range(4)),
         [250, 250, 250, 250, 250, 452]),
    ],
)
def test_command_table(script: bytes, codes: list[int]) -> None:
    assert Driver().codes(script) == codes


def test_ehlo_offers_what_is_implemented_and_changes_inside_tls() -> None:
    d = Driver(ServerSettings(hostname="mx.test", offers_starttls=True, auth_available=True))
    lines = d.feed(b"EHLO c\r\n")[0].reply.lines
    assert lines[0] == "mx.test Hello c [192.0.2.1]"
    assert "STARTTLS" in lines and "REQUIRETLS" not in lines and "AUTH PLAIN LOGIN" not in lines
    d.feed(b"STARTTLS\r\n")
    lines = d.feed(b"EHLO c\r\n")[0].reply.lines
    assert "STARTTLS" not in lines and "REQUIRETLS" in lines and "AUTH PLAIN LOGIN" in lines


def test_bytes_pipelined_after_starttls_are_dropped_and_the_session_resets() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\n")
    events = d.feed(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
    assert events == [Send(Reply.of(220, "2.0.0", "Ready to start TLS")), StartTLS()]
    assert d.session.tls_active and d.session.helo is None and d.session.buffered == 0
    assert d.codes(b"MAIL FROM:<a@b.test>\r\n") == [503]  # EHLO again first


def test_a_question_holds_pipelined_input_until_it_is_answered() -> None:
    d = Driver(answers={MailAllowed: lambda s, q: None})  # the shell is still looking something up
    events = d.feed(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n")
    assert [type(e) for e in events] == [Send, MailAllowed]
    assert d.session.buffered == len(b"RCPT TO:<x@y.test>\r\n")
    d.session.accept()
    assert [str(e.reply) for e in d.drain() if isinstance(e, Send)] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]


def test_client_policy_speaks_before_mail_syntax() -> None:
    refuse = Reply.of(530, "5.7.0", "client certificate required")
    d = Driver(answers={MailAllowed: lambda s, q: s.refuse(refuse)})
    assert d.replies(b"EHLO c\r\nMAIL FROM:bad\r\n")[1] == str(refuse)
    assert d.session.errors == 1 and d.session.sender is None


def test_a_repeated_recipient_is_answered_and_kept_once() -> None:
    d = Driver()
    assert d.codes(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<x@Y.TEST>\r\n") == [250] * 4
    assert d.session.recipients == ["x@y.test"]


def test_rcpt_question_carries_the_address_and_postmaster_is_local() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n")
    questions = [e for e in d.feed(b"RCPT TO:<x@Y.test>\r\nRCPT TO:<PostMaster>\r\n") if isinstance(e, RcptTo)]
    assert questions == [RcptTo("x@Y.test", "y.test", local=False), RcptTo("postmaster@mx.test", "mx.test", local=True)]


def test_a_whole_message_in_one_read() -> None:
    d = Driver()
    script = (b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n"
              b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    replies = d.replies(script)
    assert replies[-3:] == ["354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as X", "221 2.0.0 Bye"]
    assert b"".join(d.stored) == b"Subject: hi\r\n\r\n.dot\r\n"
    commit = next(e for e in d.events if isinstance(e, CommitMessage))
    assert commit == CommitMessage(size=len(b"Subject: hi\r\n\r\n..dot\r\n"), tls_required_no=False)
    assert d.events[-1] == Close() and d.session.phase is Phase.CLOSED


def test_tls_required_no_is_found_while_data_streams() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nTLS-Req")
    events = d.feed(b"uired: No\r\n\r\nbody\r\n.\r\n")
    assert next(e for e in events if isinstance(e, CommitMessage)).tls_required_no


@pytest.mark.parametrize(
    "body, code",
    [
        (b"a\nb\r\n.\r\n", 550),  # bare LF
        (b" folded\r\n.\r\n", 554),  # would fold into our Received: header
        (b"x" * 2000 + b"\r\n.\r\n", 550),  # line too long
        (b"Received: x\r\n" * 51 + b"\r\n.\r\n", 554),  # too many hops
    ],
)
def test_a_bad_message_is_refused_at_the_end_of_data_and_the_session_goes_on(body: bytes, code: int) -> None:
    d = Driver()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n")
    events = d.feed(body + b"NOOP\r\n")
    refused = next(e for e in events if isinstance(e, MessageRefused))
    assert refused.reply.code == code and refused.size > 0
    assert [e.reply.code for e in events if isinstance(e, Send)] == [code, 250]
    assert not any(isinstance(e, CommitMessage) for e in events)


def test_storage_failure_is_the_reply_and_not_an_error_count() -> None:
    failed = Reply.of(452, "4.3.1", "Error: insufficient system storage")
    d = Driver(answers={CommitMessage: lambda s, q: s.finish_message(failed)})
    replies = d.replies(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nx\r\n.\r\n")
    assert replies[-1] == str(failed) and d.session.errors == 0


def test_open_message_refused_stays_out_of_data() -> None:
    full = Reply.of(452, "4.3.1", "Error: insufficient system storage")
    d = Driver(answers={OpenMessage: lambda s, q: s.refuse(full)})
    replies = d.replies(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nNOOP\r\n")
    assert replies[-2:] == [str(full), "250 2.0.0 Ok"] and d.session.phase is Phase.COMMAND


def test_over_long_command_line_is_500_once_and_the_session_goes_on() -> None:
    d = Driver()
    assert d.codes(b"NOOP " + b"x" * 3000) == [500]
    assert d.codes(b"x" * 3000) == []  # the same line goes on: answered once
    assert d.codes(b"\r\nNOOP\r\n") == [250]


def test_hard_error_limit_ends_the_session() -> None:
    d = Driver()
    codes = d.codes(b"FROB\r\n" * HARD_ERROR_LIMIT + b"NOOP\r\n")
    assert codes == [500] * (HARD_ERROR_LIMIT - 1) + [421] and d.session.phase is Phase.CLOSED


def test_auth_plain_login_and_abort() -> None:
    settings = ServerSettings(hostname="mx.test", auth_available=True, auth_requires_tls=False)
    d = Driver(settings)
    d.feed(b"EHLO c\r\n")
    assert d.codes(b"AUTH PLAIN\r\n*\r\n") == [334, 501]
    assert d.codes(b"AUTH LOGIN\r\n" + b64("alice") + b"\r\n" + b64("right") + b"\r\n") == [334, 334, 235]
    assert d.session.authenticated_as == "alice"
    assert d.codes(b"AUTH PLAIN " + b64("\0alice\0right") + b"\r\n") == [503]  # already authenticated


def test_auth_needs_tls_when_so_configured() -> None:
    d = Driver(ServerSettings(hostname="mx.test", auth_available=True, auth_requires_tls=True))
    assert d.codes(b"EHLO c\r\nAUTH PLAIN " + b64("\0a\0b") + b"\r\n") == [250, 538]


def test_the_third_failed_auth_ends_the_session() -> None:
    d = Driver(ServerSettings(hostname="mx.test", auth_available=True, auth_requires_tls=False))
    wrong = b"AUTH PLAIN " + b64("\0alice\0wrong") + b"\r\n"
    assert d.codes(b"EHLO c\r\n" + wrong * 2) == [250, 535, 535]
    assert d.codes(wrong + b"NOOP\r\n") == [535, 421] and d.session.phase is Phase.CLOSED
    assert d.session.auth_failures == server_session.AUTH_FAILURE_LIMIT


def test_session_deadline_waits_for_data_to_end() -> None:
    d = Driver()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\npart")
    d.session.deadline_passed()
    assert d.drain() == []  # in DATA: the message is finished first
    events = d.feed(b"\r\n.\r\n")
    assert [str(e.reply)[:3] for e in events if isinstance(e, Send)] == ["250", "421"] and events[-1] == Close()


def test_timeout_and_refused_connection_close() -> None:
    d = Driver()
    d.session.timed_out()
    assert d.drain() == [Send(Reply.of(421, "4.4.2", "mx.test Error: timeout exceeded")), Close()]
    d = Driver()
    d.session.refuse_connection("too many connections")
    assert d.drain() == [Send(Reply.of(421, "4.7.0", "mx.test too many connections, try again later")), Close()]


def test_answers_without_an_open_question_are_refused() -> None:
    d = Driver(answers={MailAllowed: lambda s, q: None})
    d.feed(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n")
    with pytest.raises(RuntimeError, match="no RcptTo question"):
        d.session.accept_recipient("x", "y")
    d.session.connection_lost()
    assert d.session.pending is None and d.session.next_event() is None


def test_fail_answers_451_and_reads_on() -> None:
    d = Driver(answers={RcptTo: lambda s, q: s.fail()})
    assert d.codes(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nNOOP\r\n") == [250, 250, 451, 250]


@pytest.mark.parametrize("split", [1, 2, 3, 7, 64])
def test_replies_do_not_depend_on_how_the_network_split_the_input(split: int) -> None:
    script = (b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n"
              b"Subject: hi\r\n\r\n.\r\n..x\r\n.\r\nBOGUS\r\nQUIT\r\n")
    whole = Driver()
    expected = whole.replies(script)
    pieces = Driver()
    got = []
    for i in range(0, len(script), split):
        got += pieces.replies(script[i : i + split])
    assert got == expected and b"".join(pieces.stored) == b"".join(whole.stored)


REQUIRED = ServerSettings(hostname="mx.test", offers_starttls=True, tls_required=True, auth_available=True,
                          auth_requires_tls=False)
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"


def test_tls_required_refuses_mail_rcpt_and_auth_before_starttls_and_still_offers_it() -> None:
    """Listener ``tls = required``: EHLO offers STARTTLS; MAIL, RCPT and AUTH get 530 5.7.0 until it ran
    (even AUTH that the listener would allow in clear); inside TLS the transaction goes through."""
    d = Driver(REQUIRED)
    assert "STARTTLS" in d.feed(b"EHLO c\r\n")[0].reply.lines
    for command in (b"MAIL FROM:<a@b.test>", b"RCPT TO:<x@y.test>", b"AUTH PLAIN " + b64("\0alice\0right")):
        assert d.replies(command + b"\r\n") == [MUST_STARTTLS]
    assert d.codes(b"NOOP\r\nRSET\r\nSTARTTLS\r\n") == [250, 250, 220]
    assert d.codes(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n") == [250, 250, 250]


def test_without_tls_required_mail_in_clear_is_accepted() -> None:
    """The default (``tls = starttls``) keeps plain-text mail working: the 530 comes only from the setting."""
    assert Driver(attrs.evolve(REQUIRED, tls_required=False)).codes(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n") == [250, 250]
