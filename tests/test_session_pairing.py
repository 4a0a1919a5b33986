"""tlsmta's client session talking to tlsmta's server session, in memory: no sockets, no reactor.

Each side only ever sees the other's bytes, so this checks that what the client
session writes is what the server session reads, and back, through a whole
conversation: banner, EHLO, STARTTLS, pipelined transactions, dot-stuffing,
refused recipients, storage failures and QUIT.
"""

from __future__ import annotations

from typing import Any

import pytest

from tlsmta.smtp import client_session as client
from tlsmta.smtp import server_session as server
from tlsmta.smtp._reply import Reply


class Wire:
    """The two sessions and a server-side "shell" that answers questions by a script."""

    def __init__(self, refuse_rcpt: set[str] = frozenset(), commit_reply: Reply | None = None, starttls: bool = True):
        self.server = server.ServerSession(server.ServerSettings(hostname="mx.test", offers_starttls=starttls), "192.0.2.7")
        self.client = client.ClientSession("client.test")
        self.refuse_rcpt = refuse_rcpt
        self.commit_reply = commit_reply or Reply.of(250, "2.0.0", "Ok: queued as M1")
        self.stored: list[bytes] = []
        self.messages: list[bytes] = []
        self.outcomes: list[Any] = []
        self.tls = {"client": False, "server": False}
        self._to_server(b"")  # nothing yet: the banner comes first
        self._to_client(self.server.greeting().wire())

    # -- carrying bytes ------------------------------------------------------------------

    def _to_client(self, data: bytes) -> None:
        self._client_events(self.client.receive_data(data))

    def _client_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, client.Send):
                self._to_server(event.data)
            elif isinstance(event, client.StartTLS):
                self.tls["client"] = True
            else:
                self.outcomes.append(event)

    def _to_server(self, data: bytes) -> None:
        self.server.receive_data(data)
        replies = b""
        while (event := self.server.next_event()) is not None:
            if isinstance(event, server.Send):
                replies += event.reply.wire()
            elif isinstance(event, server.StartTLS):
                self.tls["server"] = True
                self._flush(replies)
                replies = b""
            elif isinstance(event, server.MessageData):
                self.stored.append(event.data)
            elif isinstance(event, server.MailAllowed | server.OpenMessage):
                self.server.accept()
            elif isinstance(event, server.RcptTo):
                if event.address in self.refuse_rcpt:
                    self.server.refuse(Reply.of(550, "5.1.1", "no such user"))
                else:
                    self.server.accept_recipient(event.address, event.domain)
            elif isinstance(event, server.CommitMessage):
                self.messages.append(b"".join(self.stored))
                self.stored = []
                self.server.finish_message(self.commit_reply)
        self._flush(replies)

    def _flush(self, replies: bytes) -> None:
        if replies:
            self._to_client(replies)  # one read per batch of replies, as a socket would give them

    # -- the client's steps ------------------------------------------------------------------

    def step(self, events: list[Any]) -> None:
        self._client_events(events)

    def last(self, kind: type) -> Any:
        return next(o for o in reversed(self.outcomes) if isinstance(o, kind))

    def send_message(self, recipients: list[str], body: bytes) -> client.TransactionDone:
        self.step(self.client.mail("app@client.test", [], recipients))
        if isinstance(self.outcomes[-1], client.BodyWanted):
            self._to_server(self.client.body(body))
            self.step(self.client.end_body())
        return self.last(client.TransactionDone)


def test_greeting_and_capabilities_cross_over() -> None:
    wire = Wire()
    greeted = wire.last(client.Greeted)
    assert greeted.banner == Reply(220, ("mx.test ESMTP tlsmta",))
    assert {"PIPELINING", "STARTTLS", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} <= set(greeted.capabilities)
    assert greeted.capabilities["SIZE"] == str(server.ServerSettings(hostname="x").max_message_size)
    assert wire.server.helo == "client.test" and wire.server.esmtp


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: plain\r\n\r\nhello\r\n",
        b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\n",
        b"no final newline",
        b"Subject: lf only\n\nbare\nlines\n",
    ],
)
def test_the_message_the_client_sends_is_the_message_the_server_stores(body: bytes) -> None:
    wire = Wire()
    done = wire.send_message(["rcpt@example.test"], body)
    assert done.mail.code == 250 and [r.code for r in done.recipients] == [250]
    assert str(done.data) == "250 2.0.0 Ok: queued as M1"
    # The client writes CRLF line endings and stuffs dots; the server unstuffs them.
    expected = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert wire.messages == [expected if expected.endswith(b"\r\n") else expected + b"\r\n"]


def test_a_refused_recipient_gets_its_own_answer_and_the_rest_get_the_message() -> None:
    wire = Wire(refuse_rcpt={"nobody@example.test"})
    done = wire.send_message(["a@example.test", "nobody@example.test", "b@example.test"], b"x\r\n")
    assert [str(r) for r in done.recipients] == ["250 2.1.5 Ok", "550 5.1.1 no such user", "250 2.1.5 Ok"]
    assert done.data is not None and done.data.code == 250 and len(wire.messages) == 1


def test_no_recipient_accepted_sends_no_message_and_the_session_goes_on() -> None:
    wire = Wire(refuse_rcpt={"nobody@example.test"})
    done = wire.send_message(["nobody@example.test"], b"x\r\n")
    assert [r.code for r in done.recipients] == [550] and wire.messages == []
    done = wire.send_message(["a@example.test"], b"second\r\n")  # RSET left the session usable
    assert done.data is not None and done.data.code == 250 and wire.messages == [b"second\r\n"]


def test_a_storage_failure_reaches_the_client_as_the_final_reply() -> None:
    wire = Wire(commit_reply=Reply.of(452, "4.3.1", "Error: insufficient system storage"))
    done = wire.send_message(["a@example.test"], b"x\r\n")
    assert done.data == Reply.of(452, "4.3.1", "Error: insufficient system storage")


def test_starttls_restarts_both_sides_and_ehlo_comes_again() -> None:
    wire = Wire()
    wire.step(wire.client.starttls())
    assert wire.tls == {"client": True, "server": True}
    greeted = wire.last(client.Greeted)
    assert greeted.tls and "STARTTLS" not in greeted.capabilities and "REQUIRETLS" in greeted.capabilities
    assert wire.server.tls_active and wire.server.helo == "client.test"
    done = wire.send_message(["a@example.test"], b"inside\r\n")
    assert done.data is not None and done.data.code == 250


def test_starttls_refused_when_not_offered_leaves_a_usable_plain_session() -> None:
    wire = Wire(starttls=False)
    wire.step(wire.client.starttls())
    assert wire.last(client.StartTLSRefused).reply.code == 502
    assert wire.send_message(["a@example.test"], b"x\r\n").data.code == 250


def test_several_transactions_then_quit() -> None:
    wire = Wire()
    for n in range(3):
        wire.send_message([f"r{n}@example.test"], f"message {n}\r\n".encode())
    wire.step(wire.client.quit())
    assert wire.outcomes[-1] == client.Closed(None)
    assert wire.client.closed and wire.server.phase is server.Phase.CLOSED
    assert wire.messages == [b"message 0\r\n", b"message 1\r\n", b"message 2\r\n"]
