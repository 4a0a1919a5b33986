"""InboundSMTP over a fake transport: each protocol rule, without sockets."""

from __future__ import annotations

import tracemalloc

import pytest
from inbound_harness import HOSTNAME, Session, runtime
from twisted.internet.defer import succeed

from tlsmta.inbound._auth import UserDB, hash_password
from tlsmta.inbound._server import AUTH_FAILURE_DELAY, AUTH_FAILURE_DELAY_CAP, REPLY_BATCH, InboundFactory
from tlsmta.smtp import server_session
from tlsmta.smtp._commands import COMMAND_LINE_LIMIT
from tlsmta.smtp.server_session import HARD_ERROR_LIMIT, Phase
from tlsmta.storage._interfaces import StoreError
from tlsmta.testing import MemorySink

MAX_SIZE = 10_000


def transaction(rcpt: str = "user@example.com", body: str = "Subject: t\r\n\r\nhello\r\n") -> str:
    return f"MAIL FROM:<sender@client.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n{body}.\r\n"


@pytest.fixture
def session() -> Session:
    return Session(runtime(listener={"max_message_size": MAX_SIZE}))


def test_banner_names_host(session: Session) -> None:
    """The greeting is 220 with the configured host name."""
    assert session.new_replies() == [f"220 {HOSTNAME} ESMTP tlsmta"]


def test_mail_before_helo_is_503(session: Session) -> None:
    """MAIL before HELO/EHLO is refused (stock Twisted accepts it)."""
    session.new_replies()
    assert session.codes("MAIL FROM:<a@b.test>\r\n") == [503]


def test_ehlo_advertises_what_is_implemented(session: Session) -> None:
    """EHLO lists PIPELINING, SIZE n, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8; no STARTTLS/AUTH without TLS config."""
    session.new_replies()
    lines = session.ehlo()
    keywords = [line[4:] for line in lines[1:]]
    assert keywords == ["PIPELINING", f"SIZE {MAX_SIZE}", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
    assert all(line.startswith("250") for line in lines)


def test_full_transaction_is_stored_with_received_header(session: Session) -> None:
    """A pipelined transaction is answered per command and stored with a Received: header first."""
    session.new_replies()
    session.ehlo()
    assert session.codes(transaction()) == [250, 250, 354, 250]
    [stored] = session.sink.stored
    assert stored.envelope.sender == "sender@client.test"
    assert [r.address for r in stored.envelope.recipients] == ["user@example.com"]
    assert stored.data.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert f"by {HOSTNAME} (tlsmta) with ESMTP id {stored.envelope.message_id}".encode() in stored.data
    assert stored.data.endswith(b"Subject: t\r\n\r\nhello\r\n")


def test_the_replies_to_a_pipelined_flight_leave_in_one_write(session: Session) -> None:
    """RFC 2920: MAIL, RCPT and DATA sent together are answered with one write, not three."""
    session.new_replies()
    session.ehlo()
    writes: list[bytes] = []
    write = session.transport.write
    session.transport.write = lambda data: (writes.append(data), write(data))  # type: ignore[method-assign]
    session.send("MAIL FROM:<sender@client.test>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n")
    assert len(writes) == 1
    assert [line[:3] for line in writes[0].decode().splitlines()] == ["250", "250", "354"]


def test_a_long_pipelined_flight_is_answered_in_batches_the_transport_can_stop() -> None:
    """Replies held for one write are bounded: 4,000 NOOPs in one read are answered as they pile up,
    and once the transport says its buffer is full the rest of the flight waits."""
    s = Session(runtime())
    s.new_replies()
    writes: list[bytes] = []
    write = s.transport.write

    def writing(data: bytes) -> None:
        writes.append(data)
        write(data)
        if len(writes) == 2:
            s.transport.producer.pauseProducing()  # as a TCP transport does past its buffer size

    s.transport.write = writing  # type: ignore[method-assign]
    s.send(b"NOOP\r\n" * 4000)
    assert len(writes) == 2 and all(len(w) < REPLY_BATCH + 64 for w in writes)
    assert s.proto.session.buffered > 0  # the rest of the flight waits for the transport
    s.transport.producer.resumeProducing()
    assert sum(w.count(b"\r\n") for w in writes) == 4000


def test_250_only_after_commit() -> None:
    """The final 250 waits for the store; pipelined commands after it wait too."""
    sink = MemorySink(hold=True)
    s = Session(runtime(sink))
    s.new_replies()
    s.ehlo()
    assert s.codes(transaction() + "NOOP\r\n") == [250, 250, 354]
    assert s.sink.stored == []
    d, writer = sink.held[0]
    writer.release()
    d.callback(None)
    assert s.codes(b"") == [250, 250]
    assert len(sink.stored) == 1


@pytest.mark.parametrize(
    "error, code, status",
    [(StoreError(451, "4.3.0", "temporary failure"), 451, "4.3.0"), (StoreError(452, "4.3.1", "disk full"), 452, "4.3.1")],
)
def test_store_failure_is_never_250(error: StoreError, code: int, status: str) -> None:
    """A failed commit is answered 451 4.3.0 / 452 4.3.1, never 250."""
    s = Session(runtime(MemorySink(fail_with=error)))
    s.new_replies()
    s.ehlo()
    replies = s.send(transaction())
    assert replies[-1].startswith(f"{code} {status}")
    assert not any(r.startswith("250 2.0.0") for r in replies)


def test_recipients_answered_one_by_one_partial_acceptance() -> None:
    """From outside relay_networks, a local recipient is accepted and a remote one refused; DATA goes on."""
    rt = runtime(listener={"local_domains": ["local.test"], "relay_networks": []})
    s = Session(rt, peer="192.0.2.7")
    s.new_replies()
    s.ehlo()
    replies = s.send(
        "MAIL FROM:<a@client.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<y@local.test>\r\n"
        "DATA\r\nhi\r\n.\r\n"
    )
    assert [r[:9] for r in replies] == ["250 2.1.0", "554 5.7.1", "250 2.1.5", "354 End d", "250 2.0.0"]
    [stored] = s.sink.stored
    assert [r.address for r in stored.envelope.recipients] == ["y@local.test"]


def test_repeated_recipient_is_kept_once(session: Session) -> None:
    """RCPT for an address already given (domain in another case) is answered 250 and
    kept once; another local part, even differing only in case, is another recipient."""
    session.new_replies()
    session.ehlo()
    replies = session.send(
        "MAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<bob@EXAMPLE.com>\r\n"
        "RCPT TO:<Bob@example.com>\r\nDATA\r\nhi\r\n.\r\n"
    )
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354 End d", "250 2.0.0"]
    [stored] = session.sink.stored
    assert [r.address for r in stored.envelope.recipients] == ["bob@example.com", "Bob@example.com"]


def test_data_without_valid_recipient_is_554(session: Session) -> None:
    """DATA with no accepted recipient is refused."""
    session.new_replies()
    session.ehlo()
    assert session.codes("MAIL FROM:<a@client.test>\r\nDATA\r\n") == [250, 554]


def test_postmaster_always_accepted() -> None:
    """RCPT TO:<postmaster> is accepted even from a client that may not relay (RFC 5321 4.5.1)."""
    s = Session(runtime(listener={"relay_networks": []}), peer="192.0.2.7")
    s.new_replies()
    s.ehlo()
    assert s.codes("MAIL FROM:<a@client.test>\r\nRCPT TO:<Postmaster>\r\n") == [250, 250]


@pytest.mark.parametrize(
    "params, code",
    [
        (f"SIZE={MAX_SIZE + 1}", 552),
        ("SIZE=100", 250),
        ("BODY=8BITMIME", 250),
        ("BODY=BINARYMIME", 501),
        ("RET=FULL", 555),
        ("SMTPUTF8", 250),
    ],
)
def test_mail_parameters_enforced(session: Session, params: str, code: int) -> None:
    """SIZE over the limit is 552, BODY is checked, unknown parameters are 555."""
    session.new_replies()
    session.ehlo()
    assert session.codes(f"MAIL FROM:<a@client.test> {params}\r\n") == [code]


def test_mail_parameters_need_ehlo(session: Session) -> None:
    """After HELO (not EHLO) a MAIL parameter is refused."""
    session.new_replies()
    session.send("HELO client.test\r\n")
    assert session.codes("MAIL FROM:<a@client.test> SIZE=10\r\n") == [555]


def test_message_over_size_rejected_at_end_of_data(session: Session) -> None:
    """A message larger than max_message_size is 552 at the end of DATA and not stored."""
    session.new_replies()
    session.ehlo()
    body = ("x" * 70 + "\r\n") * (MAX_SIZE // 70 + 10)
    assert session.codes(transaction(body=body)) == [250, 250, 354, 552]
    assert session.sink.stored == []


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"])
def test_smuggled_end_of_data_never_starts_a_second_message(session: Session, fake_end: bytes) -> None:
    """SMTP smuggling: a fake end-of-data followed by commands stays inside the (rejected) message."""
    session.new_replies()
    session.ehlo()
    smuggled = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nspoofed\r\n"
    payload = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: t\r\n\r\nhi" + fake_end
    replies = session.send(payload + smuggled + b".\r\n")
    assert [r[:3] for r in replies] == ["250", "250", "354", "550"]
    assert replies[-1].startswith("550 5.5.2")
    assert session.sink.stored == []
    assert session.proto.state is Phase.COMMAND


@pytest.mark.parametrize("lead", [b"\t", b" ", b". "])
def test_first_line_cannot_fold_into_our_received_header(session: Session, lead: bytes) -> None:
    """A message whose first line starts with SP/HTAB would continue tlsmta's own Received:
    header (e.g. a forged "with ESMTPSA" or client-certificate claim): 554 5.6.0, not stored,
    and the session goes on."""
    session.new_replies()
    session.ehlo("attacker.test")
    session.send("MAIL FROM:<a@attacker.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
    forged = lead + b"by mx.example.com (tlsmta) with ESMTPSA id FORGED; client certificate: verified (CN=trusted)\r\n"
    replies = session.send(forged + b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert len(replies) == 1 and replies[0].startswith("554 5.6.0 "), replies
    assert session.sink.stored == []
    assert len(session.sink.opened) == 1 and session.sink.opened[0].aborted
    assert session.codes(transaction()) == [250, 250, 354, 250]  # the session goes on
    assert len(session.sink.stored) == 1


def test_long_line_in_data_rejected_without_leaving_data_mode(session: Session) -> None:
    """An over-long DATA line is refused at the end of DATA; what follows it is not read as commands."""
    rt = runtime(listener={"max_line_length": 1000})
    s = Session(rt)
    s.new_replies()
    s.ehlo()
    s.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    replies = s.send(b"x" * 5000 + b"\r\nQUIT\r\nNOOP\r\n")
    assert replies == []  # nothing answered: still in DATA
    assert s.proto.state is Phase.DATA
    assert s.codes(".\r\n") == [550]
    assert not s.closed
    assert s.sink.stored == []


def test_endless_data_line_keeps_memory_flat(session: Session) -> None:
    """A 20 MiB line without CRLF fed in 64 KiB reads grows memory by far less than the line."""
    session.new_replies()
    session.ehlo()
    session.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    chunk = b"y" * 65536
    tracemalloc.start()
    try:
        for _ in range(320):
            session.proto.dataReceived(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert session.codes("\r\n.\r\n") == [550]


def test_long_command_line_is_500_and_session_goes_on(session: Session) -> None:
    """A command line over the limit gets 500; the next command works."""
    session.new_replies()
    session.ehlo()
    assert session.codes(b"NOOP " + b"a" * COMMAND_LINE_LIMIT + b"\r\nNOOP\r\n") == [500, 250]


def test_unterminated_long_command_answered_once_and_discarded(session: Session) -> None:
    """A never-ending command line is answered once, not buffered, and the session recovers at its end."""
    session.new_replies()
    replies = []
    for _ in range(50):
        replies += session.send(b"z" * 4096)
    assert [r[:3] for r in replies] == ["500"]
    assert session.proto.session.buffered == 0
    assert session.codes("rest of line\r\nNOOP\r\n") == [250]


def test_starttls_discards_pipelined_commands(pki) -> None:
    """CVE-2011-0411: commands pipelined after STARTTLS are never executed."""
    s = Session(runtime(listener={"tls": "starttls"}, tls_pair=pki.good))
    s.new_replies()
    s.ehlo()
    replies = s.send("STARTTLS\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\n")
    assert replies == ["220 2.0.0 Ready to start TLS"]
    assert s.transport.tls_started_with is not None
    assert s.proto.tls_active


def test_starttls_resets_session_state(pki) -> None:
    """After STARTTLS the client must EHLO again: MAIL is 503, EHLO no longer offers STARTTLS."""
    s = Session(runtime(listener={"tls": "starttls"}, tls_pair=pki.good))
    s.new_replies()
    assert "250 STARTTLS" in s.ehlo()
    s.send("STARTTLS\r\n")
    assert s.codes("MAIL FROM:<a@client.test>\r\n") == [503]
    lines = s.ehlo()
    assert not any("STARTTLS" in line for line in lines)
    assert s.codes("STARTTLS\r\n") == [503]


def test_starttls_not_offered_without_tls(session: Session) -> None:
    """STARTTLS on a listener without TLS is 502."""
    session.new_replies()
    session.ehlo()
    assert session.codes("STARTTLS\r\n") == [502]


def test_idle_timeout_gives_421() -> None:
    """No command for idle_timeout seconds: 421 4.4.2 and the connection closes."""
    s = Session(runtime(listener={"idle_timeout": 30}))
    s.new_replies()
    s.clock.advance(29)
    assert not s.closed
    s.clock.advance(2)
    assert s.new_replies()[-1].startswith("421 4.4.2")
    assert s.closed


@pytest.mark.parametrize("limit", ["idle_timeout", "session_timeout"])
def test_timeouts_close_a_session_whose_replies_are_held_back(limit: str) -> None:
    """A transport that holds our replies (a client that stopped reading, or a stalled TLS
    handshake, pauses the session) does not keep the session open past its time limits."""
    s = Session(runtime(listener={"idle_timeout": 30, "session_timeout": 20} if limit == "session_timeout"
                        else {"idle_timeout": 30}))
    s.new_replies()
    s.transport.producer.pauseProducing()
    s.clock.advance(31)
    assert s.new_replies()[-1].startswith("421 4.4.2")
    assert s.closed


def test_trickled_bytes_do_not_extend_idle_timeout() -> None:
    """idle_timeout restarts only when a complete command line arrives: a byte every 9 s
    of a line that never ends does not hold the session past 30 s; whole lines do."""
    s = Session(runtime(listener={"idle_timeout": 30}))
    s.new_replies()
    for _ in range(3):
        s.clock.advance(9)
        assert s.codes("NOOP\r\n") == [250]  # complete lines: each restarts the timer
    for byte in b"NOO":
        s.clock.advance(9)
        s.send(bytes([byte]))
    assert not s.closed  # 27 s since the last complete line
    s.clock.advance(3)  # 30 s since it, though a byte came 3 s ago
    assert s.new_replies() == [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"]
    assert s.closed


def test_session_timeout_ends_a_busy_session() -> None:
    """A client sending a command within every idle_timeout is still cut off after
    session_timeout: 421 4.4.2 and the connection closes."""
    s = Session(runtime(listener={"idle_timeout": 30, "session_timeout": 100}))
    s.new_replies()
    s.ehlo()
    for _ in range(4):
        s.clock.advance(20)
        assert s.codes("NOOP\r\n") == [250]
    s.clock.advance(19)
    assert not s.closed
    s.clock.advance(1)
    assert s.new_replies() == [f"421 4.4.2 {HOSTNAME} Error: session time limit exceeded"]
    assert s.closed


def test_session_timeout_lets_a_progressing_data_transfer_finish() -> None:
    """session_timeout is checked between commands: a message still streaming when it passes
    is received, stored and answered 250, and the session ends right after (pipelined
    commands are not run)."""
    s = Session(runtime(listener={"idle_timeout": 30, "data_timeout": 60, "session_timeout": 100}))
    s.new_replies()
    s.ehlo()
    s.clock.advance(25)
    assert s.codes("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n") == [250, 250, 354]
    for n in range(5):  # 25 s .. 125 s: past the session deadline, but each within data_timeout
        s.send(f"line {n}\r\n")
        s.clock.advance(20)
    assert not s.closed
    assert s.send(".\r\nNOOP\r\n") == [
        f"250 2.0.0 Ok: queued as {s.sink.stored[0].envelope.message_id}",
        f"421 4.4.2 {HOSTNAME} Error: session time limit exceeded",
    ]
    assert s.closed
    assert s.sink.stored[0].data.endswith(b"line 0\r\nline 1\r\nline 2\r\nline 3\r\nline 4\r\n")


def test_data_timeout_aborts_message() -> None:
    """A client stalling in DATA is dropped after data_timeout and nothing is stored."""
    s = Session(runtime(listener={"idle_timeout": 5, "data_timeout": 60}))
    s.new_replies()
    s.ehlo()
    s.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\npartial")
    s.clock.advance(30)  # past idle_timeout but within data_timeout
    assert not s.closed
    s.clock.advance(31)
    assert s.closed
    assert s.sink.stored == [] and s.sink.opened[0].aborted


def test_connection_limit_gives_421() -> None:
    """Past max_connections a new session gets 421 4.7.0 and is closed."""
    rt = runtime(listener={"max_connections": 1})
    factory = InboundFactory(rt)
    first = Session(rt, factory=factory)
    second = Session(rt, factory=factory)
    assert first.new_replies()[0].startswith("220")
    assert second.new_replies() == [f"421 4.7.0 {HOSTNAME} too many connections, try again later"]
    assert second.closed
    first.proto.connectionLost(None)
    third = Session(rt, factory=factory)
    assert third.new_replies()[0].startswith("220")


def test_hard_error_limit_ends_session(session: Session) -> None:
    """Too many bad commands end the session with 421 (Postfix's hard error limit)."""
    session.new_replies()
    codes = session.codes(b"BOGUS\r\n" * HARD_ERROR_LIMIT)
    assert codes[-1] == 421 and set(codes[:-1]) == {500}
    assert session.closed


def test_binary_junk_keeps_session_alive(session: Session) -> None:
    """Binary garbage (a TLS ClientHello on the plain port) gets 500s; the session still works."""
    session.new_replies()
    session.send(bytes(range(256)) + b"\r\n")
    assert session.codes("NOOP\r\n") == [250]


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_greeting_with_control_characters_is_refused(session: Session, verb: str) -> None:
    """A HELO/EHLO name with terminal escape sequences is 501 5.5.2 and not taken as the client's name."""
    session.new_replies()
    replies = session.send(f"{verb} evil\x1b]0;OWNED-TITLE\x07\x1b[2J\r\n")
    assert len(replies) == 1 and replies[0].startswith("501 5.5.2 "), replies
    assert session.proto.helo is None
    assert session.codes("MAIL FROM:<a@client.test>\r\n") == [503]
    assert session.codes(f"{verb} client.test\r\n")[-1] == 250


def test_rset_noop_vrfy_quit(session: Session) -> None:
    """RSET clears the transaction, NOOP/VRFY answer, QUIT closes."""
    session.new_replies()
    session.ehlo()
    assert session.codes("MAIL FROM:<a@client.test>\r\nRSET\r\nRCPT TO:<b@example.com>\r\n") == [250, 250, 503]
    assert session.codes("NOOP\r\nVRFY x\r\n") == [250, 252]
    assert session.codes("QUIT\r\n") == [221]
    assert session.closed


def _users() -> UserDB:
    return UserDB({"alice": hash_password("s3cret")})


def _auth_session_in_tls(pki) -> Session:
    """A session with users, past STARTTLS and EHLO; password checks run inline."""
    rt = runtime(listener={"tls": "starttls"}, tls_pair=pki.good, users=_users())
    rt.run_in_thread = lambda fn, *a: succeed(fn(*a))
    s = Session(rt)
    s.new_replies()
    s.send("STARTTLS\r\n")
    s.ehlo()
    return s


def test_auth_only_inside_tls_and_allows_relay(pki) -> None:
    """AUTH is not offered in clear text; inside TLS, PLAIN works and lets the client relay."""
    rt = runtime(listener={"tls": "starttls", "relay_networks": []}, tls_pair=pki.good, users=_users())
    rt.run_in_thread = lambda fn, *a: succeed(fn(*a))
    s = Session(rt, peer="192.0.2.7")
    s.new_replies()
    assert not any("AUTH" in line for line in s.ehlo())
    assert s.codes("AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n") == [538]
    s.send("STARTTLS\r\n")
    assert s.ehlo()[-1] == "250 AUTH PLAIN LOGIN"
    assert s.codes("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nRSET\r\n") == [250, 554, 250]
    assert s.codes("AUTH PLAIN AGFsaWNlAHdyb25n\r\n") == []  # alice / wrong: answered after a delay
    s.clock.advance(AUTH_FAILURE_DELAY)
    assert [int(line[:3]) for line in s.new_replies()] == [535]
    assert s.codes("AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n") == [235]  # alice / s3cret
    assert s.codes("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\n") == [250, 250]


def test_failed_auth_is_slowed_and_limited(pki) -> None:
    """AUTH brute force: each 535 comes only after a delay that grows per failure on the
    connection (1, 2, 4 s), input waits meanwhile, and the third failure ends the session
    with 421 4.7.0: a pipelined fourth attempt (here the right password) is never checked.
    The checks go through run_in_thread (the service's thread pool), not the reactor."""
    rt = runtime(listener={"tls": "starttls"}, tls_pair=pki.good, users=_users())
    checked = []

    def in_thread(fn, *args):
        checked.append(args[0])
        return succeed(fn(*args))

    rt.run_in_thread = in_thread
    s = Session(rt)
    s.new_replies()
    s.send("STARTTLS\r\n")
    s.ehlo()
    wrong, right = "AUTH PLAIN AGFsaWNlAHdyb25n\r\n", "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n"
    for delay in (1, 2):
        assert s.send(wrong + "NOOP\r\n") == []
        s.clock.advance(delay - 0.01)
        assert s.new_replies() == []
        s.clock.advance(0.01)
        assert [int(line[:3]) for line in s.new_replies()] == [535, 250]
    assert s.send(wrong + right) == []
    s.clock.advance(3.99)
    assert s.new_replies() == [] and not s.closed
    s.clock.advance(0.01)
    assert s.new_replies() == [
        "535 5.7.8 Error: authentication failed",
        f"421 4.7.0 {HOSTNAME} Error: too many authentication failures",
    ]
    assert s.closed
    assert checked == ["alice"] * 3 and s.proto.authenticated_as is None


def test_auth_failure_delay_is_capped(pki, monkeypatch) -> None:
    """The delay doubles per failure up to AUTH_FAILURE_DELAY_CAP."""
    monkeypatch.setattr(server_session, "AUTH_FAILURE_LIMIT", 10)
    s = _auth_session_in_tls(pki)
    for delay in (1, 2, 4, 8, 8, 8):
        assert s.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n") == []
        s.clock.advance(delay - 0.01)
        assert s.new_replies() == []
        s.clock.advance(0.01)
        assert [int(line[:3]) for line in s.new_replies()] == [535]
    assert AUTH_FAILURE_DELAY_CAP == 8


def test_auth_delay_cancelled_when_client_leaves(pki) -> None:
    """A client that hangs up during the delay leaves no timer behind."""
    s = _auth_session_in_tls(pki)
    s.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
    s.proto.connectionLost(None)
    assert s.clock.getDelayedCalls() == []


def test_auth_login_two_steps(pki) -> None:
    """AUTH LOGIN asks for user and password in turn."""
    s = _auth_session_in_tls(pki)
    assert s.send("AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert s.send("YWxpY2U=\r\n") == ["334 UGFzc3dvcmQ6"]
    assert s.codes("czNjcmV0\r\n") == [235]


def test_client_certificate_required_without_tls_is_530(pki) -> None:
    """With listener tls_verify = ca, MAIL in clear text is 530 5.7.0."""
    rt = runtime(listener={"tls": "starttls", "tls_verify": "ca", "tls_client_ca": pki.ca_pem}, tls_pair=pki.good)
    s = Session(rt)
    s.new_replies()
    s.ehlo()
    assert s.send("MAIL FROM:<a@client.test>\r\n") == ["530 5.7.0 Must issue a STARTTLS command first"]


@pytest.mark.timeout(10)
def test_partial_command_line_waits_for_the_rest(session: Session) -> None:
    """A command split across reads (no CRLF yet) is held, not spun on: the rest completes it."""
    session.new_replies()
    assert session.send(b"NO") == []
    assert session.send(b"OP\r\nEHLO client.te") == ["250 2.0.0 Ok"]
    assert session.codes(b"st\r\n") == [250]


def test_connection_limit_per_client_address() -> None:
    """max_connections_per_ip refuses a client's extra sessions with 421; relay_networks are exempt."""
    rt = runtime(listener={"max_connections_per_ip": 2, "relay_networks": ["10.9.0.0/16"]})
    factory = InboundFactory(rt)
    sessions = [Session(rt, peer="192.0.2.7", factory=factory) for _ in range(3)]
    assert [s.new_replies()[0][:3] for s in sessions] == ["220", "220", "421"]
    assert "too many connections from your address" in sessions[2].transport.value().decode()
    other = Session(rt, peer="192.0.2.8", factory=factory)
    assert other.new_replies()[0].startswith("220")
    trusted = [Session(rt, peer="10.9.0.1", factory=factory) for _ in range(3)]
    assert all(s.new_replies()[0].startswith("220") for s in trusted)
    sessions[0].proto.connectionLost(None)
    again = Session(rt, peer="192.0.2.7", factory=factory)
    assert again.new_replies()[0].startswith("220")


def test_replies_not_read_stop_command_processing() -> None:
    """When the transport says its reply buffer is full, pipelined commands wait (bounded) until it drains."""
    s = Session(runtime())
    s.new_replies()
    producer = s.transport.producer
    assert producer is not None  # registered at connect
    producer.pauseProducing()
    assert s.send(b"NOOP\r\n" * 100) == []
    assert s.proto.session.buffered == 600
    producer.resumeProducing()
    assert s.codes(b"") == [250] * 100


def test_recipient_domain_that_fails_idna_is_501(session: Session) -> None:
    """A domain that passes the address syntax but not IDNA is refused 501 5.1.3; the session goes on."""
    session.new_replies()
    session.ehlo()
    assert session.codes("MAIL FROM:<a@client.test>\r\nRCPT TO:<u@ab--cd.example>\r\nNOOP\r\n") == [250, 501, 250]
