"""LMTP delivery (RFC 2033) into a real Dovecot (dovecot-lmtpd), over a unix socket and over TCP with STARTTLS.

Each Dovecot runs privately (tests/dovecot_lab.py: own config, base and state
directories, a passwd-file of users, Maildirs in a temporary directory) and
is stopped by its PID; the tests read the Maildirs it delivered into.  The
recipients' replies after DATA are Dovecot's own: 550 5.1.1 at RCPT for an
unknown user, 452 4.2.2 after DATA for a user over quota.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import pytest_twisted
from dovecot_lab import PrivateDovecot
from e2e import in_thread, maildir_messages, send_smtplib
from outbound_lab import DOMAIN, deliveries, start_sender, submit_and_settle
from twisted.internet.defer import gatherResults

from tlsmta.storage import PENDING

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private Dovecot switches to the mail user: needs root (CI runs as root)")

LMTP_HOST = "lmtp.example.test"
ALICE, BOB, FULL, NOBODY = (f"{user}@{DOMAIN}" for user in ("alice", "bob", "full", "nosuch"))
USERS = {ALICE: None, BOB: None, FULL: "10B", f"user@{DOMAIN}": None}  # full@: a 10-byte quota, always over it


@pytest.fixture
def leaf(pki: Any, tmp_path: Any) -> Any:
    """A certificate for the LMTP host's name, from the test CA."""
    from conftest import _write_leaf

    return _write_leaf(tmp_path, "lmtp", pki.ca.issue_cert(LMTP_HOST))


@pytest.fixture
def dovecot(leaf: Any):
    server = PrivateDovecot(USERS, leaf.cert, leaf.key).start()
    yield server
    server.remove()


def bounce_route(tmp_path: Any) -> dict[str, Any]:
    """DSNs to the sender's domain land in a Maildir the test reads."""
    return {"client.test": {"route": f"maildir:{tmp_path / 'bounces'}"}}


def by_recipient(events: list) -> dict[str, dict[str, Any]]:
    return {e["to"].strip("<>"): e for e in deliveries(events)}


@pytest_twisted.ensureDeferred
async def test_two_recipients_delivered_over_the_unix_socket(tmp_path: Any, events: list, dovecot: PrivateDovecot) -> None:
    """Two users get the message in their own Maildirs, one delivery line each; tls = required does
    not apply to a unix socket (no STARTTLS there), so the mail goes in plain text over it."""
    sender = await start_sender(tmp_path, 25, None, route=f"lmtp:unix:{dovecot.socket_path}", tls="required", tls_verify="host")
    try:
        await submit_and_settle(sender, rcpts=(ALICE, BOB), body="Subject: to the mailboxes\r\n\r\nHello Dovecot.\r\n")
    finally:
        await sender.stop()
    for user in (ALICE, BOB):
        [message] = dovecot.mailbox(user)
        assert message["Subject"] == "to the mailboxes"
        assert message["Return-Path"] == "<app@client.test>"
        assert "by sender.test (tlsmta)" in message.get_all("Received")[1]  # the one hop: tlsmta, then LMTP
        assert "with LMTP" in message["Received"]
    lines = by_recipient(events)
    assert sorted(lines) == [ALICE, BOB]
    for line in lines.values():
        assert line["result"] == "delivered" and line["code"] == 250 and "Saved" in line["text"]
        assert line["route"] == f"lmtp:unix:{dovecot.socket_path}"
        assert line["relay"] == f"unix:{dovecot.socket_path}"
        assert line["tls"] == "none" and "tls_fallback" not in line
    assert sender.service.queue.messages == {}


@pytest_twisted.ensureDeferred
async def test_unknown_user_bounces_and_the_other_is_delivered(tmp_path: Any, events: list, dovecot: PrivateDovecot) -> None:
    """Dovecot answers 550 5.1.1 to RCPT for an unknown user: only that recipient bounces (a DSN naming
    it alone); the known one is delivered in the same transaction."""
    sender = await start_sender(tmp_path, 25, None, route=f"lmtp:unix:{dovecot.socket_path}", domains=bounce_route(tmp_path))
    try:
        await submit_and_settle(sender, rcpts=(ALICE, NOBODY))
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
    assert len(dovecot.mailbox(ALICE)) == 1
    lines = by_recipient(events)
    assert lines[ALICE]["result"] == "delivered"
    assert lines[NOBODY]["result"] == "bounced" and lines[NOBODY]["code"] == 550
    assert lines[NOBODY]["status"] == "5.1.1" and "User doesn't exist" in lines[NOBODY]["text"]
    [dsn] = maildir_messages(str(tmp_path / "bounces"))
    status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0].as_string()
    assert f"Final-Recipient: rfc822; {NOBODY}" in status and "Status: 5.1.1" in status
    assert ALICE not in status
    assert sender.service.queue.messages == {}


@pytest_twisted.ensureDeferred
async def test_over_quota_after_data_leaves_only_that_recipient_queued(tmp_path: Any, events: list,
                                                                       dovecot: PrivateDovecot) -> None:
    """Dovecot accepts both RCPTs, then answers the message twice (RFC 2033 4.2): 250 for alice,
    452 4.2.2 for the user over quota.  Alice is delivered once; only the full mailbox stays queued."""
    sender = await start_sender(tmp_path, 25, None, route=f"lmtp:unix:{dovecot.socket_path}", domains=bounce_route(tmp_path))
    try:
        await submit_and_settle(sender, rcpts=(ALICE, FULL))
        [queued] = sender.service.queue.messages.values()
        assert [(r.address, r.status) for r in queued.recipients if r.status == PENDING] == [(FULL, PENDING)]
    finally:
        await sender.stop()
    assert len(dovecot.mailbox(ALICE)) == 1 and dovecot.mailbox(FULL) == []
    lines = by_recipient(events)
    assert lines[ALICE]["result"] == "delivered" and lines[ALICE]["code"] == 250
    assert lines[FULL]["result"] == "deferred" and (lines[FULL]["code"], lines[FULL]["status"]) == (452, "4.2.2")
    assert "Quota exceeded" in lines[FULL]["text"]
    assert not (tmp_path / "bounces").exists()  # a deferral is no bounce


@pytest_twisted.ensureDeferred
async def test_starttls_over_tcp_with_tls_verify_host(tmp_path: Any, pki: Any, events: list, dovecot: PrivateDovecot) -> None:
    """lmtp:HOST:PORT with tls = required and tls_verify = host: STARTTLS to Dovecot, the certificate
    verified against the CA and the LMTP host's name, both recipients delivered over TLS."""
    sender = await start_sender(
        tmp_path, 25, pki.ca_pem, route=f"lmtp:{LMTP_HOST}:{dovecot.port}", tls="required", tls_verify="host",
        dns={"hosts": {LMTP_HOST: ["127.0.0.1"]}},
    )
    try:
        await submit_and_settle(sender, rcpts=(ALICE, BOB))
    finally:
        await sender.stop()
    assert len(dovecot.mailbox(ALICE)) == 1 and len(dovecot.mailbox(BOB)) == 1
    for line in by_recipient(events).values():
        assert line["result"] == "delivered"
        assert line["relay"] == f"{LMTP_HOST}[127.0.0.1]:{dovecot.port}"
        assert line["tls"] == "tls" and line["tls_verify"] == "host" and line["verified"] == "yes"
    log = await in_thread(dovecot.wait_for_log, "saved mail to INBOX", count=2)
    assert "Connect from 127.0.0.1" in log


@pytest_twisted.ensureDeferred
async def test_a_certificate_that_does_not_name_the_lmtp_host_defers(tmp_path: Any, pki: Any, events: list) -> None:
    """The same tls_verify = host against a Dovecot whose certificate names another host: 4.7.5,
    nothing delivered, never retried in plain text."""
    server = PrivateDovecot(USERS, pki.wrong_name.cert, pki.wrong_name.key).start()
    try:
        sender = await start_sender(
            tmp_path, 25, pki.ca_pem, route=f"lmtp:{LMTP_HOST}:{server.port}", tls="ifavailable", tls_verify="host",
            dns={"hosts": {LMTP_HOST: ["127.0.0.1"]}},
        )
        try:
            await submit_and_settle(sender, rcpts=(ALICE,))
        finally:
            await sender.stop()
        assert server.mailbox(ALICE) == []
    finally:
        server.remove()
    [line] = deliveries(events)
    assert line["result"] == "deferred" and line["code"] == 451 and "4.7.5" in line["text"]
    assert "tls_fallback" not in line


@pytest_twisted.ensureDeferred
async def test_messages_queued_together_share_one_lmtp_connection(tmp_path: Any, events: list,
                                                                  dovecot: PrivateDovecot) -> None:
    """Connection reuse as for SMTP: five messages queued together go over one LMTP session
    (max_connections = 1), each with its own transaction."""
    sender = await start_sender(tmp_path, 25, None, route=f"lmtp:unix:{dovecot.socket_path}", max_connections=1)
    try:
        sender.service.queue.stop()  # hold delivery while the batch arrives
        await gatherResults([in_thread(send_smtplib, sender.port, rcpts=(ALICE,)) for _ in range(5)])
        sender.service.queue._running = True
        sender.service.queue.flush()
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
    assert [e["result"] for e in deliveries(events)] == ["delivered"] * 5
    assert len(dovecot.mailbox(ALICE)) == 5
    # A session's connect line is logged before its deliveries: once all five are in, so is every connect.
    log = await in_thread(dovecot.wait_for_log, "saved mail to INBOX", count=5)
    assert log.count("Connect from local") == 1


def lmtp_config(tmp_path: Any, pki: Any, route: str) -> str:
    path = tmp_path / "lmtp.toml"
    path.write_text(
        f'[global]\nroute = "{route}"\ntls = "required"\ntls_verify = "host"\ntls_ca = "{pki.ca_pem}"\n'
        f'[dns.hosts]\n"{LMTP_HOST}" = ["127.0.0.1"]\n'
    )
    return str(path)


async def tlsmta(*args: str) -> tuple[int, str]:
    from e2e import run_process

    code, out, err = await run_process(os.path.join(os.path.dirname(sys.executable), "tlsmta"), *args)
    return code, out + err


@pytest_twisted.ensureDeferred
async def test_policy_and_probe_over_the_unix_socket(tmp_path: Any, pki: Any, dovecot: PrivateDovecot) -> None:
    """`tlsmta policy` says an lmtp:unix: route has no TLS whatever the tls options; `tlsmta probe`
    connects to the socket, shows Dovecot's banner and judges plain text over it deliverable."""
    config = lmtp_config(tmp_path, pki, f"lmtp:unix:{dovecot.socket_path}")
    code, policy = await tlsmta("policy", config, DOMAIN)
    assert code == 0
    assert f"Delivered over LMTP (RFC 2033) to the unix socket {dovecot.socket_path}; no TLS on a local socket" in policy
    assert "STARTTLS required" not in policy
    code, probe = await tlsmta("probe", DOMAIN, "--config", config)
    assert code == 0, probe
    assert f"LMTP server on unix:{dovecot.socket_path} (a local socket: no STARTTLS)" in probe
    assert "banner:   220 " in probe and "Dovecot" in probe
    assert f"verdict for {DOMAIN} (tls=no, tls_verify=host, policy local): deliver in plain text (tls = no)" in probe


@pytest_twisted.ensureDeferred
async def test_policy_and_probe_over_tcp(tmp_path: Any, pki: Any, dovecot: PrivateDovecot) -> None:
    """For lmtp:HOST:PORT `tlsmta policy` describes STARTTLS and the name check against the LMTP host;
    `tlsmta probe` greets Dovecot with LHLO, does STARTTLS and verifies the certificate under host."""
    route = f"lmtp:{LMTP_HOST}:{dovecot.port}"
    config = lmtp_config(tmp_path, pki, route)
    code, policy = await tlsmta("policy", config, DOMAIN)
    assert code == 0
    assert f"Sent over LMTP (RFC 2033) to {LMTP_HOST}, port {dovecot.port}" in policy
    assert f"name {DOMAIN} or {LMTP_HOST}" in policy
    code, probe = await tlsmta("probe", DOMAIN, "--config", config)
    assert code == 0, probe
    assert f"MX {LMTP_HOST} [127.0.0.1]:{dovecot.port}" in probe and "STARTTLS: offered" in probe
    assert f"SANs:    {LMTP_HOST}" in probe and "    host      pass" in probe
    assert f"verdict for {DOMAIN} (tls=required, tls_verify=host, policy local): deliver over TLS, certificate verified" in probe
    # The probe spoke LMTP: Dovecot would have refused EHLO (it logs no failed greeting).
    assert "state=GREETING" not in await in_thread(dovecot.wait_for_log, "Disconnect from 127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_requiretls_message_is_delivered_over_the_unix_socket(tmp_path: Any, pki: Any, events: list,
                                                                   dovecot: PrivateDovecot) -> None:
    """A unix socket is local delivery, as a Maildir is: a REQUIRETLS message has no further TLS hop
    to insist on and is delivered (over TCP it would need verified TLS and the extension, as any hop)."""
    from test_requiretls_outbound import send_requiretls

    listener = {"tls": "starttls", "tls_certificate": pki.good.cert, "tls_key": pki.good.key}
    sender = await start_sender(tmp_path, 25, pki.ca_pem, route=f"lmtp:unix:{dovecot.socket_path}", listener=listener)
    try:
        await in_thread(send_requiretls, sender.port, pki.ca_pem)
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
    [line] = deliveries(events)
    assert line["result"] == "delivered" and line["to"] == f"<user@{DOMAIN}>"
    assert "requiretls" not in line
    assert dovecot.mailbox(f"user@{DOMAIN}")[0]["Subject"] == "secret"
