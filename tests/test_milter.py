"""Milters over loopback: a scripted milter that modifies, refuses, crashes, stalls or sends
garbage; the SMTP session gets the milter's answer or the default action, and carries on."""

from __future__ import annotations

import json
import os
import smtplib
import struct
from typing import Any

import pytest
import pytest_twisted
from e2e import HOSTNAME, client_context, eventually, in_thread, maildir_messages, send_smtplib, start_relay
from milter_lab import Script, frame, listen
from twisted.internet import reactor

from tlsmta.inbound import hash_password
from tlsmta.testing import dev_listener

MESSAGE = "From: app@client.test\r\nSubject: hello\r\n\r\nHello from smtplib.\r\n"


async def relay_with_milter(tmp_path: Any, script: Script, **listener: Any) -> tuple[Any, Any, Any, list[dict[str, Any]]]:
    port, milter = listen(reactor, script)
    relay = await start_relay(tmp_path, [dev_listener(milters=[f"inet:127.0.0.1:{port.getHost().port}"], **listener)])
    lines: list[dict[str, Any]] = []
    relay.service.events.add_sink(lambda event, fields: lines.append(fields) if event == "milter" else None)
    return relay, port, milter, lines


async def one_message(tmp_path: Any, script: Script) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Send one message through a relay asking ``script``'s milter: smtplib's answer, the milter, the log lines."""
    relay, port, milter, lines = await relay_with_milter(tmp_path, script)
    try:
        result = await in_thread(send, relay.port)
        await eventually(lambda: milter.seen[-1][0] == b"Q")  # the SMTP session's end is the milter's
    finally:
        await relay.stop()
        await port.stopListening()
    return result, milter, lines


def send(port: int, rcpts: tuple[str, ...] = ("someone@example.com",)) -> Any:
    """smtplib's answer: the refused dict, or the exception it raised."""
    try:
        return send_smtplib(port, rcpts=rcpts, body=MESSAGE)
    except smtplib.SMTPException as e:
        return e


@pytest_twisted.ensureDeferred
async def test_modifications_are_applied_before_the_message_is_stored(tmp_path: Any) -> None:
    """Header added, inserted, changed and deleted, sender changed, a recipient added and one
    removed, body replaced: the stored message and envelope are what the milter left."""
    script = Script(end_of_message=[
        frame(b"h", b"X-Scanned\0yes\0"),
        frame(b"i", struct.pack(">L", 1) + b"X-First\0one\0"),
        frame(b"m", struct.pack(">L", 1) + b"Subject\0[tagged] hello\0"),
        frame(b"e", b"<bounces@client.test>\0"),
        frame(b"+", b"<added@example.com>\0"),
        frame(b"-", b"<someone@example.com>\0"),
        frame(b"b", b"Replaced body.\r\n"),
    ])
    result, milter, _ = await one_message(tmp_path, script)
    assert result == {}
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert msg["Subject"] == "[tagged] hello"
    assert msg["X-Scanned"] == "yes"
    assert list(msg.keys())[:2] == ["Return-Path", "Delivered-To"] and list(msg.keys())[3] == "X-First"
    assert msg["Return-Path"] == "<bounces@client.test>"
    assert msg.get_all("Delivered-To") == ["added@example.com"]
    assert msg.get_payload() == "Replaced body.\n"
    macros = milter.macros()
    assert macros["j"] == HOSTNAME and macros["{client_addr}"] == "127.0.0.1"
    assert macros["{mail_addr}"] == "app@client.test" and macros["{rcpt_addr}"] == "someone@example.com"
    assert macros["{daemon_name}"] and macros["i"]
    commands = [c for c, _ in milter.seen if c != b"D"]
    assert commands == [b"O", b"C", b"H", b"M", b"R", b"T", b"L", b"L", b"L", b"N", b"B", b"E", b"Q"]


@pytest_twisted.ensureDeferred
async def test_reject_at_rcpt_and_at_end_of_message_use_the_milters_reply(tmp_path: Any) -> None:
    """SMFIR_REPLYCODE at RCPT refuses that recipient with the milter's text; SMFIR_REJECT at the
    end of the message is 550 5.7.1, and nothing is stored."""
    script = Script(replies={b"R": frame(b"y", b"550 5.1.1 no such user here\0")})
    relay, port, _, lines = await relay_with_milter(tmp_path, script)
    try:
        refused = await in_thread(send, relay.port)
        script.replies.clear()
        script.final = frame(b"r")
        rejected = await in_thread(send, relay.port)
    finally:
        await relay.stop()
        await port.stopListening()
    assert isinstance(refused, smtplib.SMTPRecipientsRefused)
    assert refused.recipients["someone@example.com"] == (550, b"5.1.1 no such user here")
    assert isinstance(rejected, smtplib.SMTPDataError) and rejected.smtp_code == 550
    assert maildir_messages(str(tmp_path / "maildir")) == []
    assert [line["stage"] for line in lines] == ["rcpt", "end-of-message"]


@pytest_twisted.ensureDeferred
async def test_discard_answers_250_and_stores_nothing(tmp_path: Any) -> None:
    """SMFIR_DISCARD: the client hears 250, the message is dropped, a log line says so."""
    result, _, lines = await one_message(tmp_path, Script(final=frame(b"d")))
    assert result == {}
    assert maildir_messages(str(tmp_path / "maildir")) == []
    assert [line["result"] for line in lines] == ["discarded"]


@pytest.mark.parametrize("misbehave, at, stage", [
    ("crash", b"R", "rcpt"), ("garbage", b"M", "mail"), ("stall", b"E", "end-of-message"), ("crash", b"O", "connect"),
])
@pytest_twisted.ensureDeferred
async def test_broken_milter_gets_tempfail_and_the_session_carries_on(tmp_path: Any, misbehave: str, at: bytes,
                                                                      stage: str) -> None:
    """Under the default action tempfail, a milter that crashes, sends garbage or stalls past its
    timeout makes that stage 451 4.7.1 with a log line; the session answers the next command, and
    once the milter behaves the next message (on a new milter connection) goes through."""
    script = Script(misbehave=misbehave, at=at)
    relay, port, milter, lines = await relay_with_milter(
        tmp_path, script, milter_command_timeout=0.5, milter_content_timeout=0.5, milter_connect_timeout=0.5)

    def two_messages() -> tuple[Any, Any]:
        client = smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30)
        try:
            client.ehlo()
            try:
                first: Any = client.sendmail("app@client.test", ["someone@example.com"], MESSAGE)
            except smtplib.SMTPException as e:
                first = e
                client.rset()
            script.misbehave = None
            return first, client.sendmail("app@client.test", ["someone@example.com"], MESSAGE)
        finally:
            client.quit()

    try:
        first, second = await in_thread(two_messages)
    finally:
        await relay.stop()
        await port.stopListening()
    code = first.smtp_code if hasattr(first, "smtp_code") else first.recipients["someone@example.com"][0]
    assert code == 451
    assert second == {}
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 1
    [line] = [line for line in lines if line["result"] == "failed"]
    assert (line["stage"], line["action"]) == (stage, "tempfail") and line["reason"]
    expected = {"rcpt": smtplib.SMTPRecipientsRefused, "end-of-message": smtplib.SMTPDataError}
    assert isinstance(first, expected.get(stage, smtplib.SMTPSenderRefused))
    assert milter.connections == 2


@pytest_twisted.ensureDeferred
async def test_milter_down_with_default_accept_lets_mail_through(tmp_path: Any) -> None:
    """milter_default_action = accept: a milter nobody listens for is logged and skipped."""
    port, _ = listen(reactor, Script())
    address = f"inet:127.0.0.1:{port.getHost().port}"
    await port.stopListening()  # nothing listens there now
    relay = await start_relay(tmp_path, [dev_listener(milters=[address], milter_default_action="accept")])
    lines: list[dict[str, Any]] = []
    relay.service.events.add_sink(lambda event, fields: lines.append(fields) if event == "milter" else None)
    try:
        assert await in_thread(send, relay.port) == {}
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 1
    assert [(line["stage"], line["action"]) for line in lines] == [("connect", "accept")]


@pytest_twisted.ensureDeferred
async def test_quarantine_spools_the_message_held(tmp_path: Any) -> None:
    """SMFIR_QUARANTINE: 250, and the message waits in the spool, held (as `tlsmta queue hold`
    leaves it, durably), not delivered to its Maildir."""
    result, _, lines = await one_message(tmp_path, Script(end_of_message=[frame(b"q", b"suspicious\0")]))
    assert result == {}
    assert maildir_messages(str(tmp_path / "maildir")) == []
    [state] = [name for name in os.listdir(tmp_path / "spool" / "q") if name.endswith(".state")]
    assert json.loads((tmp_path / "spool" / "q" / state).read_text())["held"] is True
    assert [(line["result"], line["reason"]) for line in lines] == [("quarantined", "suspicious")]


@pytest_twisted.ensureDeferred
async def test_tls_and_auth_macros_reach_the_milter(tmp_path: Any, pki: Any) -> None:
    """After STARTTLS and AUTH, the milter is told {tls_version}, {cipher} and {auth_authen}: CONNECT
    and HELO go at MAIL, when these are known."""
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret')}\n")
    relay, port, milter, _ = await relay_with_milter(
        tmp_path, Script(), tls="starttls", tls_certificate=pki.good.cert, tls_key=pki.good.key, auth_users_file=str(users))
    try:
        await in_thread(send_smtplib, relay.port, starttls=client_context(pki.ca_pem), login=("alice", "s3cret"), body=MESSAGE)
    finally:
        await relay.stop()
        await port.stopListening()
    macros = milter.macros()
    assert macros["{tls_version}"].startswith("TLSv1.") and macros["{cipher}"]
    assert macros["{auth_authen}"] == "alice"
