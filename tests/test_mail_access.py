"""POP3 and IMAP over the dev relay's captured mail ([dev] pop3, imap): real clients (poplib,
imaplib) over TLS trusting the dev CA, on loopback, after real SMTP."""

from __future__ import annotations

import http.client
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_twisted
from e2e import CLIENT_TIMEOUT, in_thread

from tlsmta.app._reload_plan import keeping_fixed, plan, running_of
from tlsmta.config import ConfigError
from tlsmta.devrelay import CapturedMail
from tlsmta.devrelay._devcert import dev_ca_path
from tlsmta.inbound import hash_password
from tlsmta.reporting import EventBus
from tlsmta.testing import RunningRelay, build_config, dev_listener

LOOPBACK = "tcp:0:interface=127.0.0.1"


def dev_config(tmp_path: Any, **dev: Any) -> dict[str, Any]:
    return {
        "global": {"hostname": "localhost", "state_dir": str(tmp_path / "state"), "route": f"maildir:{tmp_path / 'maildir'}"},
        "listener": [dev_listener(name="dev")],
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"maildir": str(tmp_path / "maildir")},
        "dev": {"pop3": LOOPBACK, "imap": LOOPBACK, **dev},
    }


async def access_relay(tmp_path: Any, **dev: Any) -> RunningRelay:
    return await RunningRelay(build_config(dev_config(tmp_path, **dev))).start()


def message_bytes(subject: str) -> bytes:
    """A multipart message with an attachment, as the client sends it (CRLF)."""
    m = EmailMessage()
    m["From"] = "shop@example.com"
    m["To"] = "bob@example.org"
    m["Subject"] = subject
    m.set_content("Hello Bob,\n.leading dot and trailing space \nbye\n")
    m.add_attachment(bytes(range(256)), maintype="application", subtype="octet-stream", filename="all-bytes.bin")
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT) as client:
        client.sendmail("shop@example.com", ["bob@example.org"], data)


def trusting(tmp_path: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=dev_ca_path(str(tmp_path / "state")))


def captured_ids(tmp_path: Any) -> list[str]:
    return [entry["id"] for entry in CapturedMail(str(tmp_path / "maildir")).summaries()]


# -- POP3 --------------------------------------------------------------------------------------


def pop3_session(port: int, context: ssl.SSLContext, delete_first: bool) -> tuple[int, list[bytes], list[bytes], str]:
    """STLS, USER/PASS with invented credentials, STAT, RETR 1, UIDL, maybe DELE 1, QUIT."""
    client = poplib.POP3("localhost", port, timeout=CLIENT_TIMEOUT)
    try:
        capabilities = client.capa()
        assert "STLS" in capabilities, capabilities
        client.stls(context)
        client.user("anyone")
        client.pass_("any password")
        count, _ = client.stat()
        _, lines, _ = client.retr(1)
        _, uidl, _ = client.uidl()
        if delete_first:
            client.dele(1)
        version = client.sock.version()
        return count, lines, uidl, str(version)
    finally:
        client.quit()


@pytest_twisted.ensureDeferred
async def test_pop3_over_stls_reads_and_deletes_captured_mail(tmp_path: Any) -> None:
    """poplib: STLS verifies against the dev CA; any login works; RETR gives the message as captured
    (what the client sent, after our trace lines); UIDL is the capture's id; DELE+QUIT deletes it."""
    relay = await access_relay(tmp_path)
    try:
        sent = message_bytes("pop3 check")
        await in_thread(send, relay.port, sent)
        await in_thread(send, relay.port, message_bytes("second"))
        count, lines, uidl, version = await in_thread(pop3_session, relay.mail_access_ports["pop3"], trusting(tmp_path), True)
        assert count == 2 and version.startswith("TLSv1.")
        retrieved = b"\r\n".join(lines) + b"\r\n"
        assert retrieved.endswith(sent) and retrieved.startswith(b"Return-Path: <shop@example.com>\r\n")
        first_id = uidl[0].split()[1].decode()
        remaining = captured_ids(tmp_path)
        assert len(remaining) == 1 and first_id not in remaining
    finally:
        await relay.stop()


def removed_on_the_page(http_port: int, pop3_port: int, context: ssl.SSLContext) -> list[str]:
    """With the page's event stream open, DELE 1 + QUIT over POP3; the ids the next ``changes``
    event that removes anything names (the arrival's own ``changes`` may come first)."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", "/api/events")
        response = conn.getresponse()
        while response.fp.readline().strip() != b"event: hello":
            pass
        pop3_session(pop3_port, context, True)
        deadline = time.monotonic() + CLIENT_TIMEOUT  # the stream's heartbeat keeps the socket timeout from firing
        while time.monotonic() < deadline:
            if response.fp.readline().strip() == b"event: changes":
                removed = json.loads(response.fp.readline().decode().removeprefix("data: "))["removed"]
                if removed:
                    return list(removed)
        return []
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_pop3_delete_reaches_the_open_page_at_once(tmp_path: Any) -> None:
    """The page's event stream tells of a message a POP3 client deleted (a ``changes`` event with its
    id removed), so the list drops it without a reload."""
    config = dev_config(tmp_path)
    config["http"]["endpoint"] = LOOPBACK
    relay = await RunningRelay(build_config(config)).start()
    try:
        await in_thread(send, relay.port, message_bytes("read over pop3"))
        [stored_id] = captured_ids(tmp_path)
        assert relay.http_port is not None
        removed = await in_thread(removed_on_the_page, relay.http_port, relay.mail_access_ports["pop3"], trusting(tmp_path))
    finally:
        await relay.stop()
    assert removed == [stored_id] and captured_ids(tmp_path) == []


def pipelined_behind_starttls(port: int, context: ssl.SSLContext, in_clear: bytes, inside: bytes) -> bytes:
    """Send ``in_clear`` (STARTTLS and a command behind it) in one write, then ``inside`` within
    TLS: the first answer inside TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as raw:
        reader = raw.makefile("rb")
        reader.readline()  # greeting
        raw.sendall(in_clear)
        assert b"OK Begin TLS" in reader.readline(), "STARTTLS refused"
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(inside)
            return tls.makefile("rb").readline()


@pytest.mark.parametrize(
    "service, in_clear, inside, answer",
    [
        ("pop3", b"STLS\r\nUSER injected\r\n", b"PASS whatever\r\n", b"-ERR USER required before PASS"),
        ("imap", b"a STARTTLS\r\nb LOGIN injected secret\r\n", b"c NOOP\r\n", b"c OK"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_commands_pipelined_behind_starttls_are_dropped(tmp_path: Any, service: str, in_clear: bytes,
                                                               inside: bytes, answer: bytes) -> None:
    """A command sent in clear behind STLS/STARTTLS is not acted on inside TLS (CVE-2011-0411 class):
    POP3's PASS finds no USER, IMAP's first answer inside TLS is our NOOP's."""
    relay = await access_relay(tmp_path)
    try:
        got = await in_thread(pipelined_behind_starttls, relay.mail_access_ports[service], trusting(tmp_path),
                              in_clear, inside)
        assert got.startswith(answer), got
    finally:
        await relay.stop()


def pop3_login(port: int, context: ssl.SSLContext, user: str, password: str) -> int:
    client = poplib.POP3_SSL("localhost", port, timeout=CLIENT_TIMEOUT, context=context)
    try:
        client.user(user)
        client.pass_(password)
        return int(client.stat()[0])
    finally:
        client.quit()


@pytest_twisted.ensureDeferred
async def test_pop3_implicit_tls_with_real_credentials(tmp_path: Any) -> None:
    """pop3_tls = implicit: TLS from the first byte; [dev] auth_users_file: the right password logs in,
    a wrong one is refused."""
    users = tmp_path / "users"
    users.write_text(f"bob:{hash_password('s3cret')}\n")
    relay = await access_relay(tmp_path, pop3_tls="implicit", auth_users_file=str(users))
    try:
        port, context = relay.mail_access_ports["pop3"], trusting(tmp_path)
        assert await in_thread(pop3_login, port, context, "bob", "s3cret") == 0
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            await in_thread(pop3_login, port, context, "bob", "wrong")
    finally:
        await relay.stop()


# -- IMAP ------------------------------------------------------------------------------------------


def imap_session(port: int, context: ssl.SSLContext) -> dict[str, Any]:
    """LOGIN refused in clear; STARTTLS; LOGIN; SELECT; FETCH BODY.PEEK[] and UID; STORE \\Deleted; EXPUNGE."""
    out: dict[str, Any] = {}
    client = imaplib.IMAP4("localhost", port, timeout=CLIENT_TIMEOUT)
    try:
        out["clear_caps"] = client.capabilities
        client.starttls(context)
        client.login("anyone", "any password")
        out["count"] = int(client.select("INBOX")[1][0])
        _, data = client.fetch("1", "(UID BODY.PEEK[])")
        out["fetched"] = data[0]
        _, flags = client.fetch("1", "(FLAGS)")
        out["flags_before"] = flags[0]
        client.store("1", "+FLAGS", "(\\Deleted)")
        _, expunged = client.expunge()
        out["expunged"] = expunged
        out["count_after"] = int(client.select("INBOX")[1][0])
    finally:
        client.logout()
    return out


@pytest_twisted.ensureDeferred
async def test_imap_over_starttls_reads_a_message_intact_and_expunges_it(tmp_path: Any) -> None:
    """imaplib: LOGIN is disabled before STARTTLS; after it any login works; BODY[] is the captured
    message byte for byte (what the client sent, after our trace lines); \\Deleted + EXPUNGE deletes it."""
    relay = await access_relay(tmp_path)
    try:
        sent = message_bytes("imap check")
        await in_thread(send, relay.port, sent)
        (stored_id,) = captured_ids(tmp_path)
        stored, _ = CapturedMail(str(tmp_path / "maildir")).raw(stored_id)
        result = await in_thread(imap_session, relay.mail_access_ports["imap"], trusting(tmp_path))
        assert "STARTTLS" in result["clear_caps"] and "LOGINDISABLED" in result["clear_caps"]
        assert result["count"] == 1
        header, body = result["fetched"]
        assert b"UID 1" in header
        assert body.endswith(sent) and body == stored.replace(b"\n", b"\r\n")
        assert b"\\Seen" not in result["flags_before"]  # PEEK leaves it unread
        assert result["expunged"] == [b"1"] and result["count_after"] == 0
        assert captured_ids(tmp_path) == []
    finally:
        await relay.stop()


def imap_ssl_subjects(port: int, context: ssl.SSLContext) -> list[bytes]:
    client = imaplib.IMAP4_SSL("localhost", port, ssl_context=context, timeout=CLIENT_TIMEOUT)
    try:
        client.login("x", "y")
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [item[1].strip() for item in data if isinstance(item, tuple)]
    finally:
        client.logout()


@pytest_twisted.ensureDeferred
async def test_imap_implicit_tls_lists_new_mail_at_select(tmp_path: Any) -> None:
    """imap_tls = implicit: IMAP4_SSL; each SELECT reads the capture again, oldest first."""
    relay = await access_relay(tmp_path, imap_tls="implicit")
    try:
        port, context = relay.mail_access_ports["imap"], trusting(tmp_path)
        await in_thread(send, relay.port, message_bytes("one"))
        assert await in_thread(imap_ssl_subjects, port, context) == [b"Subject: one"]
        await in_thread(send, relay.port, message_bytes("two"))
        assert await in_thread(imap_ssl_subjects, port, context) == [b"Subject: one", b"Subject: two"]
    finally:
        await relay.stop()


# -- configuration ---------------------------------------------------------------------------------


def test_pop3_needs_a_maildir_to_serve(tmp_path: Any) -> None:
    """[dev] pop3 without [http] maildir or a maildir: route is refused, naming table and key."""
    raw = dev_config(tmp_path)
    raw["global"]["route"] = "discard"
    del raw["http"]
    with pytest.raises(ConfigError) as caught:
        build_config(raw, "dev.toml")
    assert "dev.toml: [dev] pop3: serves the captured mail: needs [http] maildir" in str(caught.value)
    assert "[dev] imap" in str(caught.value)


def test_bad_dev_options_name_their_key(tmp_path: Any) -> None:
    """A wrong TLS word and a wrong type are named by key."""
    with pytest.raises(ConfigError) as caught:
        build_config(dev_config(tmp_path, pop3_tls="stls", auth="yes"), "dev.toml")
    text = str(caught.value)
    assert "[dev] pop3_tls: must be one of starttls, implicit" in text and "[dev] auth: must be true or false" in text


def test_a_reload_keeps_the_running_dev_table_and_says_so(tmp_path: Any) -> None:
    """[dev] is read at start: a reload that moves pop3 or turns auth off reports "restart required"
    and keeps the running values (so SMTP AUTH and the POP3/IMAP logins stay alike)."""
    running = build_config(dev_config(tmp_path, auth=True))
    wanted = build_config(dev_config(tmp_path, pop3="tcp:1110:interface=127.0.0.1"))
    changes = plan(running_of(running), running_of(wanted))
    assert changes.restarts(running_of(running), running_of(wanted)) == [
        "restart required: [dev] auth (true -> false)",
        "restart required: [dev] pop3 (tcp:0:interface=127.0.0.1 -> tcp:1110:interface=127.0.0.1)",
    ]
    assert keeping_fixed(wanted, running).dev == running.dev


@pytest.mark.parametrize("user", [b"mallory\r2026-12-03T12:00:00+0000 [tlsmta#info] forged", b"mallory\x1b[2J", "mall\u202eory"])
def test_a_login_name_cannot_write_its_own_log_line(user: bytes | str) -> None:
    """A POP3/IMAP user name is the peer's: CR, escape sequences and bidi controls are escaped in the log."""
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet.defer import succeed
    from twisted.logger import capturedLogs, formatEventAsClassicLogText

    from tlsmta.devrelay._mailaccess import Access, LoginChecker

    class AnyLogin:
        def check(self, user: str, password: str) -> bool:
            return True

    access = Access(CapturedMail("/nonexistent"), AnyLogin(), succeed, lambda fn, *args: succeed(fn(*args)), EventBus())
    with capturedLogs() as events:
        LoginChecker(access).requestAvatarId(UsernamePassword(user, b"pw"))
    lines = [formatEventAsClassicLogText(e) or "" for e in events if "login" in (e.get("log_format") or "")]
    assert len(lines) == 1
    assert lines[0].rstrip("\n").isprintable(), repr(lines[0])
    assert "mall" in lines[0]


@pytest_twisted.ensureDeferred
async def test_pop3_or_imap_off_loopback_is_warned_about(tmp_path: Any) -> None:
    """Any login reads the whole capture: a listener on every interface says so in the log, one on loopback does not."""
    from twisted.logger import LogLevel, capturedLogs

    with capturedLogs() as events:
        relay = await access_relay(tmp_path, pop3="tcp:0:interface=0.0.0.0")
        await relay.stop()
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "not loopback" in (e.get("log_format") or "")]
    assert [(e["name"], e["host"]) for e in warnings] == [("POP3", "0.0.0.0")]
