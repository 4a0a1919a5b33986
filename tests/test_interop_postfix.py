"""tlsmta against real Postfix: delivering into it, into smtp-sink, and receiving from it.

Each Postfix runs privately (own config, queue and log directory) on a
loopback port; mounting queues and running postfix(1) needs root, as CI has.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
from typing import Any

import pytest
import pytest_twisted
from e2e import eventually, in_thread, maildir_messages, send_smtplib
from outbound_lab import DOMAIN, deliveries, start_receiver, start_sender, submit_and_settle
from postfix_lab import PrivatePostfix, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root (CI runs as root)")


@pytest.fixture
def postfix_receiver(pki: Any):
    """A Postfix offering STARTTLS with the good certificate; it holds what it accepts."""
    pf = PrivatePostfix(
        {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": "$queue_directory/../cert.pem",
            "smtpd_tls_key_file": "$queue_directory/../key.pem",
            "smtpd_tls_loglevel": "1",
            "smtpd_client_restrictions": "check_client_access static:HOLD",
            "smtpd_tls_received_header": "yes",
        },
        files={"cert.pem": pki.good.cert, "key.pem": pki.good.key},
    )
    pf.start()
    yield pf
    pf.remove()


@pytest.mark.parametrize("verify", ["no", "ca", "host", "optional"])
@pytest_twisted.ensureDeferred
async def test_tlsmta_delivers_into_postfix_with_verification(tmp_path: Any, pki: Any, events: list, postfix_receiver: PrivatePostfix, verify: str) -> None:
    """tls = required with each tls_verify mode against real Postfix: delivered over TLS, verified as the mode says."""
    sender = await start_sender(tmp_path, postfix_receiver.port, pki.ca_pem, tls="required", tls_verify=verify)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
    [event] = deliveries(events)
    assert event["result"] == "delivered", event
    assert event["tls"] == "tls" and event["verified"] == ("no" if verify == "no" else "yes")
    # smtpd logs the handshake, then the transaction; each line reaches the file on its own.
    await in_thread(postfix_receiver.wait_for_log, "TLS connection established from")
    log = await in_thread(postfix_receiver.wait_for_log, "from=<app@client.test>")
    assert "TLS connection established from" in log and "from=<app@client.test>" in log
    assert len(postfix_receiver.queue_files()) == 1


@pytest_twisted.ensureDeferred
async def test_dot_lines_reach_smtp_sink_intact(tmp_path: Any, pki: Any, events: list) -> None:
    """Postfix's smtp-sink receives a body full of dot lines exactly as sent (dot-stuffing both ways)."""
    port = free_port()
    sink_dir = tempfile.mkdtemp(prefix="tlsmta-sink-")  # smtp-sink writes as the postfix user
    os.chmod(sink_dir, 0o755)
    shutil.chown(sink_dir, "postfix", "postfix")
    dump = pathlib.Path(sink_dir) / "dump"
    sink = subprocess.Popen(
        ["/usr/sbin/smtp-sink", "-u", "postfix", "-D", str(dump), f"127.0.0.1:{port}", "10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: _listening(port))
        sender = await start_sender(tmp_path, port, None, tls="no")
        body = "Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n"
        try:
            await submit_and_settle(sender, body=body)
        finally:
            await sender.stop()
        await eventually(lambda: dump.exists() and b"end" in dump.read_bytes())
        content = dump.read_bytes()
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)
        shutil.rmtree(sink_dir, ignore_errors=True)
    assert deliveries(events)[0]["result"] == "delivered"
    assert b"\n.\n..\n.leading dot\nend\n" in content.replace(b"\r\n", b"\n")


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest_twisted.ensureDeferred
async def test_postfix_relays_into_tlsmta_with_verified_tls(tmp_path: Any, pki: Any) -> None:
    """Real Postfix relays to tlsmta with smtp_tls_security_level = secure against tlsmta's certificate."""
    receiver = await start_receiver(tmp_path, pki.good)
    pf = PrivatePostfix(
        {
            "relayhost": f"[localhost]:{receiver.port}",
            "smtp_tls_security_level": "secure",
            "smtp_tls_secure_cert_match": "nexthop",
            "smtp_tls_CAfile": "$queue_directory/../ca.pem",
            "smtp_tls_loglevel": "1",
        },
        files={"ca.pem": pki.ca_pem},
    )
    await in_thread(pf.start)
    try:
        await in_thread(send_smtplib, pf.port, rcpts=(f"someone@{DOMAIN}",))
        await eventually(lambda: len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1, timeout=60)
        # Postfix logs status=sent only after our 250 reaches it, which can be after the Maildir write.
        log = await in_thread(pf.wait_for_log, "status=sent", 30)
    finally:
        await in_thread(pf.remove)
        await receiver.stop()
    assert "Verified TLS connection established to localhost" in log
    assert "status=sent" in log
    [msg] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert "with ESMTPS" in " ".join(msg["Received"].split())


@pytest_twisted.ensureDeferred
async def test_postfix_relays_only_for_tlsmtas_client_certificate(tmp_path: Any, pki: Any, events: list) -> None:
    """Postfix asks for client certificates and relays only for trusted ones (permit_tls_all_clientcerts):
    tlsmta with tls_certificate relays; without one it is refused 554 and bounces."""
    pf = PrivatePostfix(
        {
            "mynetworks": "192.0.2.0/24",  # not 127.0.0.1: only a certificate may relay
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": "$queue_directory/../cert.pem",
            "smtpd_tls_key_file": "$queue_directory/../key.pem",
            "smtpd_tls_CAfile": "$queue_directory/../ca.pem",
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_loglevel": "1",
            "smtpd_relay_restrictions": "permit_mynetworks, permit_tls_all_clientcerts, reject_unauth_destination",
            "smtpd_client_restrictions": "check_client_access static:HOLD",
        },
        files={"cert.pem": pki.good.cert, "key.pem": pki.good.key, "ca.pem": pki.ca_pem},
    )
    await in_thread(pf.start)
    try:
        with_cert = await start_sender(
            tmp_path / "a", pf.port, pki.ca_pem, tls="required", tls_verify="host",
            tls_certificate=pki.client.cert, tls_key=pki.client.key,
        )
        try:
            await submit_and_settle(with_cert)
        finally:
            await with_cert.stop()
        without = await start_sender(tmp_path / "b", pf.port, pki.ca_pem, tls="required", tls_verify="host")
        try:
            await submit_and_settle(without, sender="")
        finally:
            await without.stop()
        # postlogd may not have written the handshake lines yet: wait (bounded) for both sessions'.
        log = await in_thread(pf.wait_for_log, "TLS connection established from", 60, 2)
        held = len(pf.queue_files())
    finally:
        await in_thread(pf.remove)
    relayed, refused = deliveries(events)
    assert relayed["result"] == "delivered", relayed
    assert refused["result"] == "bounced" and "Relay access denied" in refused["text"]
    assert held == 1
    assert "Trusted TLS connection established from" in log or "client certificate" in log.lower()


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"]


@pytest_twisted.ensureDeferred
async def test_quit_with_the_final_dot_and_kept_connections_suit_postfix(tmp_path: Any, pki: Any, events: list,
                                                                        postfix_receiver: PrivatePostfix) -> None:
    """Against real smtpd over verified TLS: with one message per connection, QUIT goes with each final
    dot and every session ends with a QUIT Postfix counted, no pipelining complaint; then with the
    connection kept for more mail, two messages submitted one after the other share one session."""
    one_each = await start_sender(tmp_path / "one", postfix_receiver.port, pki.ca_pem, tls="required",
                                  tls_verify="host", max_messages_per_connection=1)
    try:
        for _ in range(3):
            await submit_and_settle(one_each)
    finally:
        await one_each.stop()
    log = await in_thread(postfix_receiver.wait_for_log, " quit=1 ", 60, 3)
    assert log.count("mail=1 rcpt=1 data=1 quit=1") == 3, log
    kept = await start_sender(tmp_path / "kept", postfix_receiver.port, pki.ca_pem, tls="required",
                              tls_verify="host", connection_cache_time=30)
    try:
        await submit_and_settle(kept)
        await submit_and_settle(kept)
    finally:
        await kept.stop()  # the waiting connection QUITs at shutdown
    log = await in_thread(postfix_receiver.wait_for_log, "mail=2 rcpt=2 data=2 quit=1", 60)
    assert "pipelining" not in log, log
    assert [e["result"] for e in deliveries(events)] == ["delivered"] * 5
    assert len(postfix_receiver.queue_files()) == 5


@pytest_twisted.ensureDeferred
async def test_smuggling_bodies_reach_postfix_as_one_message_each(tmp_path: Any, pki: Any, events: list, postfix_receiver: PrivatePostfix) -> None:
    """Bodies holding every fake end-of-data variant followed by a smuggled transaction (as a local
    injection could produce) each arrive at Postfix as exactly one message: no second message appears."""
    import time

    from tlsmta.config._routes import parse_route
    from tlsmta.storage._ids import new_message_id
    from tlsmta.storage._spool import QueuedMessage, RecipientState

    sender = await start_sender(tmp_path, postfix_receiver.port, pki.ca_pem, tls="required", tls_verify="host")
    smuggled = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nspoofed\r\n.\r\n"
    try:
        for fake_end in SMUGGLING:
            message = QueuedMessage(
                id=new_message_id(), sender="app@client.test",
                recipients=[RecipientState(f"user@{DOMAIN}", parse_route("mx"))], received_at=time.time(),
            )
            body = b"Subject: smuggling\r\n\r\nbefore" + fake_end + smuggled + b"after\r\n"
            await sender.service.disk.run(sender.service.spool.store_blocking, message, body)
            sender.service.queue.add(message)
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
    assert [e["result"] for e in deliveries(events)] == ["delivered"] * len(SMUGGLING)
    files = postfix_receiver.queue_files()
    assert len(files) == len(SMUGGLING)  # one message per body, nothing smuggled
    for path in files:  # the would-be transaction arrived as text inside the one message
        with open(path, "rb") as f:
            content = f.read()
        assert b"MAIL FROM:<evil@attacker.test>" in content and b"after" in content
    # Only once Postfix has logged every transaction does the absence of the smuggled one mean anything.
    log = await in_thread(postfix_receiver.wait_for_log, "from=<app@client.test>", 60, len(SMUGGLING))
    assert "from=<evil@attacker.test>" not in log
