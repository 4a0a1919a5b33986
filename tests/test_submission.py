"""Submission listeners: AUTH before MAIL, the sender-login check, Date:/Message-ID: when missing.

Pure tests first (the session, the sender-login policy, the header completion, no reactor), then
swaks and smtplib submitting with AUTH over TLS to tlsmta on loopback.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e import client_context, in_thread, maildir_messages, run_process, send_smtplib, start_relay
from test_server_session import Driver

from tlsmta.config._address_maps import load_address_maps, login_value
from tlsmta.inbound._acceptance import Refusal
from tlsmta.inbound._auth import hash_password
from tlsmta.inbound._sender_login import check_sender_login
from tlsmta.inbound._submission import LONGEST_HEADER_LINE, HeaderCompletion
from tlsmta.smtp.server_session import MailAllowed, ServerSettings
from tlsmta.testing import dev_listener

SUBMISSION = ServerSettings(hostname="mx.test", auth_available=True, auth_requires_tls=False, auth_required=True)
DATE, MESSAGE_ID = "Thu, 03 Dec 2026 14:00:00 +0000", "<id1@mx.test>"
ADDED = f"Date: {DATE}\r\nMessage-ID: {MESSAGE_ID}\r\n".encode()
LOGINS = "alice@example.test  alice\n@example.test  admin\nshared@example.test  alice, bob\n"


# -- AUTH before MAIL --------------------------------------------------------------------------------


def test_mail_before_auth_is_530_and_after_auth_goes_on() -> None:
    """role = submission: MAIL without AUTH is 530 5.7.0 Authentication required; after AUTH it is asked about."""
    d = Driver(SUBMISSION)
    d.feed(b"EHLO c\r\n")
    assert d.replies(b"MAIL FROM:<alice@example.test>\r\n") == ["530 5.7.0 Authentication required"]
    assert d.codes(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0right") + b"\r\n") == [235]
    assert d.codes(b"MAIL FROM:<alice@example.test> SIZE=10\r\n") == [250]
    assert MailAllowed(10, "alice@example.test") in d.events


def test_an_mx_listener_takes_mail_without_auth() -> None:
    """Without auth_required (role = mx) MAIL needs no AUTH."""
    d = Driver(ServerSettings(hostname="mx.test"))
    assert d.codes(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n") == [250, 250]


# -- the sender-login check --------------------------------------------------------------------------


@pytest.fixture
def logins(tmp_path: Path) -> Any:
    path = tmp_path / "sender-logins"
    path.write_text(LOGINS)
    return load_address_maps((str(path),), login_value)


@pytest.mark.parametrize(
    ("login", "sender"),
    [("alice", "alice@example.test"), ("alice", "Shared@Example.TEST"), ("bob", "shared@example.test"),
     ("admin", "anyone@example.test"), ("alice", ""), ("mallory", "")],
)
def test_listed_logins_may_send(logins: Any, login: str, sender: str) -> None:
    """The login listed for the address (or, for unlisted addresses, the domain) may use it; <> is anyone's."""
    check_sender_login(logins, login, sender)


@pytest.mark.parametrize(
    ("login", "sender", "reason"),
    [("alice", "bob@example.test", "listed for admin"), ("admin", "alice@example.test", "listed for alice"),
     ("alice", "ceo@elsewhere.test", "not in sender_login_maps")],
)
def test_others_get_553_5_7_1(logins: Any, login: str, sender: str, reason: str) -> None:
    """Anyone else: 553 5.7.1, the log reason saying whose the address is."""
    with pytest.raises(Refusal) as info:
        check_sender_login(logins, login, sender)
    assert (info.value.code, info.value.text) == (553, f"5.7.1 <{sender}>: Sender address rejected: not owned by user {login}")
    assert info.value.reason == reason


def test_no_maps_or_no_auth_checks_nothing(logins: Any) -> None:
    """Without sender_login_maps, or for a client that did not AUTH (an MX), the sender is not checked here."""
    check_sender_login(None, "alice", "ceo@example.test")
    check_sender_login(logins, None, "ceo@example.test")


# -- Date: and Message-ID: -------------------------------------------------------------------------


def completed(*chunks: bytes) -> bytes:
    completion = HeaderCompletion(DATE, MESSAGE_ID)
    return b"".join(completion.feed(chunk) for chunk in chunks) + completion.finish()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ((b"Subject: hi\r\n\r\nbody\r\n",), b"Subject: hi\r\n" + ADDED + b"\r\nbody\r\n"),
        ((b"Subj", b"ect: hi\r\n", b"\r", b"\nbody\r\n"), b"Subject: hi\r\n" + ADDED + b"\r\nbody\r\n"),
        ((b"Subject: hi\r\n",), b"Subject: hi\r\n" + ADDED),  # all header section
        ((b"just a body\r\n",), ADDED + b"\r\njust a body\r\n"),  # no header section: a blank line keeps it the body
        ((b"DATE: x\r\nSubject: a\r\n  folded\r\n\r\nMessage-ID: <in-body>\r\n",),
         b"DATE: x\r\nSubject: a\r\n  folded\r\nMessage-ID: " + MESSAGE_ID.encode() + b"\r\n\r\nMessage-ID: <in-body>\r\n"),
        ((b"Date: x\r\nmessage-id : <a@b>\r\n\r\nb\r\n",), b"Date: x\r\nmessage-id : <a@b>\r\n\r\nb\r\n"),
    ],
)
def test_missing_fields_are_added_at_the_end_of_the_header_section(chunks: tuple[bytes, ...], expected: bytes) -> None:
    """Whatever the chunking: Date:/Message-ID: that the header section lacks go before its blank line;
    fields present (any case) are kept, and the body is never looked at."""
    assert completed(*chunks) == expected


def test_a_header_line_without_end_is_not_held_forever() -> None:
    """A header line longer than LONGEST_HEADER_LINE ends the header section (held bytes stay bounded)."""
    long_line = b"X-Long: " + b"a" * LONGEST_HEADER_LINE
    assert completed(long_line, b"\r\n\r\nbody\r\n") == ADDED + long_line + b"\r\n\r\nbody\r\n"


# -- over loopback, with real clients ----------------------------------------------------------------


def submission_listener(tmp_path: Path, pki: Any, **overrides: Any) -> dict[str, Any]:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret')}\nbob:{hash_password('b0b')}\n")
    logins = tmp_path / "sender-logins"
    logins.write_text(LOGINS)
    return dev_listener(
        name="submission", tls="starttls", tls_certificate=pki.good.cert, tls_key=pki.good.key, relay_networks=[],
        auth_users_file=str(users), role="submission", sender_login_maps=str(logins), **overrides,
    )


def swaks(port: int, sender: str, *extra: str) -> list[str]:
    return ["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--from", sender,
            "--to", "far@remote.test", "--tls", *extra]


@pytest_twisted.ensureDeferred
async def test_swaks_submits_with_auth_as_itself_only(tmp_path: Path, pki: Any, events: list) -> None:
    """swaks over STARTTLS: no AUTH is 530 5.7.0 at MAIL; alice as alice@ is accepted; alice as bob@ is
    553 5.7.1, logged with why, and nothing more is stored."""
    relay = await start_relay(tmp_path, [submission_listener(tmp_path, pki)])
    alice = ("--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret")
    try:
        anonymous = await run_process(*swaks(relay.port, "alice@example.test"))
        own = await run_process(*swaks(relay.port, "alice@example.test", *alice))
        forged = await run_process(*swaks(relay.port, "bob@example.test", *alice))
    finally:
        await relay.stop()
    assert "<~* 530 5.7.0 Authentication required" in anonymous[1], anonymous[1] + anonymous[2]
    assert own[0] == 0, own[1] + own[2]
    assert "<~* 553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice" in forged[1]
    [message] = maildir_messages(str(tmp_path / "maildir"))
    assert message["From"] == "alice@example.test"  # swaks's own headers, Date and Message-ID included
    assert len(message.get_all("Date")) == 1 and len(message.get_all("Message-ID")) == 1
    [refused] = [e for e in events if e["tlsmta_event"] == "mail_refused"]
    assert (refused["sender"], refused["auth"], refused["code"], refused["reason"]) == (
        "bob@example.test", "alice", 553, "listed for admin")


@pytest_twisted.ensureDeferred
async def test_submission_adds_date_and_message_id_an_mx_does_not(tmp_path: Path, pki: Any) -> None:
    """smtplib submits a message with neither field: the stored copy has one of each (ours, on our host name);
    the same message through an MX listener is stored without them."""
    bare = "From: alice@example.test\r\nSubject: bare\r\n\r\nno date, no id\r\n"
    mx = dev_listener(name="mx", local_domains=["remote.test"], relay_networks=[])
    relay = await start_relay(tmp_path, [submission_listener(tmp_path, pki), mx])
    try:
        await in_thread(send_smtplib, relay.ports["submission"], sender="alice@example.test", rcpts=("far@remote.test",),
                        body=bare, starttls=client_context(pki.ca_pem), login=("alice", "s3cret"))
        await in_thread(send_smtplib, relay.ports["mx"], sender="alice@example.test", rcpts=("far@remote.test",),
                        body=bare)
    finally:
        await relay.stop()
    submitted, relayed = sorted(maildir_messages(str(tmp_path / "maildir")), key=lambda m: "Message-ID" in m, reverse=True)
    assert submitted["Message-ID"].startswith("<") and submitted["Message-ID"].endswith("@mx.example.test>")
    assert submitted["Date"] is not None and submitted.get_payload() == "no date, no id\n"
    assert (relayed["Message-ID"], relayed["Date"]) == (None, None)
