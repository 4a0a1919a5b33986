"""Real clients against tlsmta's listeners: swaks (implicit TLS, AUTH, pipelining), posttls-finger,
openssl s_client's protocol floor; and open-relay attempts that must all fail."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, maildir_messages, read_reply, run_process, start_relay

from tlsmta.inbound._auth import hash_password
from tlsmta.testing import dev_listener


def tls_listener(pki: Any, **overrides: Any) -> dict[str, Any]:
    return dev_listener(**{"tls": "starttls", "tls_certificate": pki.good.cert, "tls_key": pki.good.key, **overrides})


def swaks(port: int, *extra: str) -> list[str]:
    return ["swaks", "--server", f"127.0.0.1:{port}", "--from", "s@client.test", "--helo", "client.test", *extra]


@pytest_twisted.ensureDeferred
async def test_swaks_implicit_tls_auth_and_pipelining(tmp_path: Any, pki: Any) -> None:
    """swaks over implicit TLS with AUTH PLAIN relays; with --pipeline it pipelines; wrong password is 535."""
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret')}\n")
    implicit = dev_listener(
        name="smtps", tls="implicit", tls_certificate=pki.good.cert, tls_key=pki.good.key,
        auth_users_file=str(users), relay_networks=[],
    )
    relay = await start_relay(tmp_path, [implicit])
    try:
        ok = await run_process(*swaks(relay.port, "--to", "far@remote.test", "--tlsc", "--auth", "PLAIN",
                                      "--auth-user", "alice", "--auth-password", "s3cret", "--pipeline"))
        wrong = await run_process(*swaks(relay.port, "--to", "far@remote.test", "--tlsc", "--auth", "PLAIN",
                                         "--auth-user", "alice", "--auth-password", "nope"))
        anonymous = await run_process(*swaks(relay.port, "--to", "far@remote.test", "--tlsc"))
    finally:
        await relay.stop()
    assert ok[0] == 0, ok[1] + ok[2]
    transcript = ok[1] + ok[2]
    assert "235 2.7.0 Authentication successful" in transcript and "PIPELINING" in transcript
    assert "535 5.7.8" in wrong[1] + wrong[2]
    assert "554 5.7.1 relay access denied" in anonymous[1] + anonymous[2]
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert "with ESMTPSA" in " ".join(msg["Received"].split())


@pytest_twisted.ensureDeferred
async def test_posttls_finger_verifies_tlsmta(tmp_path: Any, pki: Any) -> None:
    """Postfix's posttls-finger at security level "secure" trusts tlsmta's chain for its name."""
    # Its own main.cf, never the host's /etc/postfix (which a new machine does not have).
    config_dir = tmp_path / "postfix-etc"
    config_dir.mkdir()
    (config_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    relay = await start_relay(tmp_path, [tls_listener(pki)])
    try:
        code, out, err = await run_process(
            "posttls-finger", "-c", "-l", "secure", "-F", pki.ca_pem, "-P", "/nonexistent",
            f"[127.0.0.1]:{relay.port}", "mx.example.test", env={"MAIL_CONFIG": str(config_dir)},
        )
    finally:
        await relay.stop()
    text = out + err
    assert "Trusted TLS connection established" in text or "Verified TLS connection established" in text, text


@pytest.mark.parametrize("client, refused", [("-tls1_2", True), ("-tls1_3", False)])
@pytest_twisted.ensureDeferred
async def test_protocol_floor_with_openssl_s_client(tmp_path: Any, pki: Any, client: str, refused: bool) -> None:
    """With tls_protocols = "+TLSv1.3" a TLS 1.2 client is refused; a TLS 1.3 one is served."""
    relay = await start_relay(tmp_path, [tls_listener(pki, tls_protocols="+TLSv1.3")])
    try:
        code, out, err = await run_process(
            "openssl", "s_client", "-starttls", "smtp", client, "-connect", f"127.0.0.1:{relay.port}", "-brief", stdin=b"QUIT\r\n"
        )
    finally:
        await relay.stop()
    text = out + err
    if refused:
        assert code != 0 and "Protocol version: TLSv1.2" not in text
    else:
        assert "Protocol version: TLSv1.3" in text


def _smtp(port: int, lines: list[bytes]) -> list[bytes]:
    """Send lines one by one, collecting each final reply line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    replies = [f.readline()]
    for line in lines:
        sock.sendall(line)
        reply = read_reply(f)
        replies.append(reply)
    sock.close()
    return replies


@pytest_twisted.ensureDeferred
async def test_open_relay_attempts_all_fail(tmp_path: Any, pki: Any) -> None:
    """From outside relay_networks: plain RCPT, AUTH in clear text, a forged PROXY header claiming a
    relay_networks address (PROXY not enabled) and a client certificate from an untrusted CA all fail."""
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret')}\n")
    listener = tls_listener(
        pki, relay_networks=["192.0.2.0/24"], local_domains=["local.test"], auth_users_file=str(users),
        tls_verify="optional", tls_client_ca=pki.ca_pem, tls_verified_peer_can_relay=True,
    )
    relay = await start_relay(tmp_path, [listener])
    try:
        plain = await in_thread(_smtp, relay.port, [b"EHLO c.test\r\n", b"MAIL FROM:<a@c.test>\r\n", b"RCPT TO:<x@far.test>\r\n"])
        clear_auth = await in_thread(_smtp, relay.port, [b"EHLO c.test\r\n", b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n"])
        proxied = await in_thread(
            _smtp, relay.port,
            [b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n", b"EHLO c.test\r\n", b"MAIL FROM:<a@c.test>\r\n", b"RCPT TO:<x@far.test>\r\n"],
        )
        import smtplib

        from e2e import client_context, send_smtplib

        with pytest.raises(smtplib.SMTPRecipientsRefused) as untrusted:
            await in_thread(send_smtplib, relay.port, rcpts=("x@far.test",), starttls=client_context(pki.ca_pem, pki.client_untrusted))
        local = await in_thread(_smtp, relay.port, [b"EHLO c.test\r\n", b"MAIL FROM:<a@c.test>\r\n", b"RCPT TO:<u@local.test>\r\n"])
    finally:
        await relay.stop()
    # 127.0.0.1 is not in relay_networks here, so every path must end in 554 5.7.1 (or no AUTH at all).
    assert plain[-1].startswith(b"554 5.7.1")
    assert clear_auth[-1].startswith(b"538 5.7.11")
    assert proxied[1].startswith(b"500") and proxied[-1].startswith(b"554 5.7.1")
    assert next(iter(untrusted.value.recipients.values()))[0] == 554
    assert local[-1].startswith(b"250")  # local domains are still accepted
