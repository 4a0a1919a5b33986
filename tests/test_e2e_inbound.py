"""The inbound server over real loopback sockets, with real TLS and real clients."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
from typing import Any

import pytest
import pytest_twisted
import verify_hooks
from conftest import CLIENT_NAME
from e2e import (
    client_context,
    eventually,
    in_thread,
    maildir_messages,
    open_names_under,
    read_reply,
    run_process,
    send_smtplib,
    start_relay,
)

from tlsmta.testing import dev_listener


def tls_listener(pki: Any, **overrides: Any) -> dict[str, Any]:
    return dev_listener(**{"tls": "starttls", "tls_certificate": pki.good.cert, "tls_key": pki.good.key, **overrides})


@pytest_twisted.ensureDeferred
async def test_smtplib_plain_stores_readable_maildir_message(tmp_path: Any) -> None:
    """smtplib without TLS: the message lands in Maildir new/ and mailbox.Maildir reads it."""
    relay = await start_relay(tmp_path)
    try:
        refused = await in_thread(send_smtplib, relay.port, rcpts=("a@example.com", "b@example.org"))
    finally:
        await relay.stop()
    assert refused == {}
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert msg["Subject"] == "hello"
    assert msg["Return-Path"] == "<app@client.test>"
    assert msg.get_all("Delivered-To") == ["a@example.com", "b@example.org"]
    assert "with ESMTP id" in msg["Received"]
    assert msg.get_payload() == "Hello from smtplib.\n"
    assert os.listdir(tmp_path / "maildir" / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_smtplib_starttls_verifies_and_records_tls(tmp_path: Any, pki: Any) -> None:
    """smtplib with STARTTLS, verifying the server against the test CA; Received: names the protocol."""
    relay = await start_relay(tmp_path, [tls_listener(pki)])
    try:
        await in_thread(send_smtplib, relay.port, starttls=client_context(pki.ca_pem))
    finally:
        await relay.stop()
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    received = " ".join(msg["Received"].split())
    assert "using TLSv1.3 with cipher" in received
    assert "with ESMTPS id" in received
    assert "client certificate: not requested" in received


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener(tmp_path: Any, pki: Any) -> None:
    """A tls = implicit listener (port 465 style) speaks TLS from the first byte."""
    listener = dev_listener(tls="implicit", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    relay = await start_relay(tmp_path, [listener])
    try:
        await in_thread(send_smtplib, relay.port, implicit=client_context(pki.ca_pem))
    finally:
        await relay.stop()
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert "with ESMTPS" in msg["Received"]


@pytest_twisted.ensureDeferred
async def test_swaks_plain_and_starttls(tmp_path: Any, pki: Any) -> None:
    """swaks (a client no one here wrote) delivers with and without STARTTLS."""
    relay = await start_relay(tmp_path, [tls_listener(pki)])
    try:
        base = ["swaks", "--server", f"127.0.0.1:{relay.port}", "--from", "s@client.test", "--helo", "client.test"]
        plain = await run_process(*base, "--to", "plain@example.com")
        tls = await run_process(*base, "--to", "tls@example.com", "--tls", "--tls-verify", "--tls-ca-path", pki.ca_pem)
    finally:
        await relay.stop()
    assert plain[0] == 0, plain[1] + plain[2]
    assert tls[0] == 0, tls[1] + tls[2]
    assert "TLS started with cipher TLSv1.3" in tls[1] + tls[2]
    recipients = sorted(m["Delivered-To"] for m in maildir_messages(str(tmp_path / "maildir")))
    assert recipients == ["plain@example.com", "tls@example.com"]


@pytest_twisted.ensureDeferred
async def test_openssl_s_client_sees_the_served_chain(tmp_path: Any, pki: Any) -> None:
    """openssl s_client -starttls smtp verifies the served certificate against the CA."""
    relay = await start_relay(tmp_path, [tls_listener(pki)])
    try:
        code, out, err = await run_process(
            "openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{relay.port}",
            "-CAfile", pki.ca_pem, "-verify_hostname", "mx.example.test", "-brief",
            stdin=b"QUIT\r\n",
        )
    finally:
        await relay.stop()
    text = out + err
    assert "Verification: OK" in text, text
    assert "Protocol version: TLSv1.3" in text


@pytest_twisted.ensureDeferred
async def test_protocol_floor_refuses_old_tls(tmp_path: Any, pki: Any) -> None:
    """With tls_protocols excluding TLS 1.2, a TLS 1.2-only client's handshake fails."""
    relay = await start_relay(tmp_path, [tls_listener(pki, tls_protocols="+ALL:-TLSv1.0:-TLSv1.1:-TLSv1.2")])
    ctx = client_context(pki.ca_pem)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with pytest.raises(ssl.SSLError):
            await in_thread(send_smtplib, relay.port, starttls=ctx)
        await in_thread(send_smtplib, relay.port, starttls=client_context(pki.ca_pem))
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 1


def _raw_starttls_injection(port: int, ca: str) -> list[str]:
    """Pipeline MAIL/RCPT after STARTTLS in the same packet, then talk inside TLS."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO client.test\r\n")
    read_reply(f)
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<x@example.com>\r\n")
    assert f.readline().startswith(b"220")
    tls = client_context(ca).wrap_socket(sock, server_hostname="mx.example.test")
    tf = tls.makefile("rb")
    tls.sendall(b"RCPT TO:<x@example.com>\r\nNOOP\r\nQUIT\r\n")
    replies = [tf.readline().decode().strip() for _ in range(3)]
    tls.close()
    return replies


@pytest_twisted.ensureDeferred
async def test_starttls_injection_over_real_tls(tmp_path: Any, pki: Any) -> None:
    """Commands pipelined before the handshake are not executed inside TLS (no MAIL in effect)."""
    relay = await start_relay(tmp_path, [tls_listener(pki)])
    try:
        replies = await in_thread(_raw_starttls_injection, relay.port, pki.ca_pem)
    finally:
        await relay.stop()
    assert replies[0].startswith("503 5.5.1")  # RCPT: no MAIL, the injected one was discarded
    assert replies[1].startswith("250") and replies[2].startswith("221")


# -- client certificates (listener tls_verify) ---------------------------------------


def _verify_listener(pki: Any, mode: str, **extra: Any) -> dict[str, Any]:
    return tls_listener(pki, tls_verify=mode, tls_client_ca=pki.ca_pem, relay_networks=[], **extra)


async def _try_mail(port: int, pki: Any, cert: Any, ehlo: str = CLIENT_NAME, rcpt: str = "u@local.test") -> Any:
    try:
        return await in_thread(
            send_smtplib, port, rcpts=(rcpt,), starttls=client_context(pki.ca_pem, cert), ehlo=ehlo
        )
    except smtplib.SMTPSenderRefused as e:
        return e.smtp_code, e.smtp_error.decode()
    except smtplib.SMTPRecipientsRefused as e:
        return next(iter(e.recipients.values()))[0], "rcpt"


CLIENT_CASES = [
    # mode, which client certificate, EHLO name, expected: "ok" or the MAIL reply code
    ("ca", "client", CLIENT_NAME, "ok"),
    ("ca", "client", "wrong.example.test", "ok"),  # ca does not check names
    ("ca", "client_untrusted", CLIENT_NAME, 530),
    ("ca", "client_expired", CLIENT_NAME, 530),
    ("ca", None, CLIENT_NAME, 530),
    ("host", "client", CLIENT_NAME, "ok"),
    ("host", "client", "wrong.example.test", 530),
    ("host", "client_untrusted", CLIENT_NAME, 530),
    ("optional", "client_untrusted", CLIENT_NAME, "ok"),
    ("optional", None, CLIENT_NAME, "ok"),
    ("no", "client_untrusted", CLIENT_NAME, "ok"),
]


@pytest.mark.parametrize("mode, which, ehlo, expected", CLIENT_CASES)
@pytest_twisted.ensureDeferred
async def test_client_certificate_modes(tmp_path: Any, pki: Any, mode: str, which: str | None, ehlo: str, expected: Any) -> None:
    """Listener tls_verify: ca/host refuse MAIL with 530 unless the client certificate verifies."""
    listener = _verify_listener(pki, mode, local_domains=["local.test"])
    if mode == "no":
        listener.pop("tls_client_ca")
    relay = await start_relay(tmp_path, [listener])
    try:
        result = await _try_mail(relay.port, pki, getattr(pki, which) if which else None, ehlo)
    finally:
        await relay.stop()
    if expected == "ok":
        assert result == {}
        [msg] = maildir_messages(str(tmp_path / "maildir"))
        words = " ".join(msg["Received"].split())
        if mode == "optional":
            assert "client certificate: softfail" in words or "client certificate: none" in words
    else:
        code, text = result
        assert code == expected and "5.7.0" in text


@pytest_twisted.ensureDeferred
async def test_verified_client_certificate_may_relay(tmp_path: Any, pki: Any) -> None:
    """With tls_verified_peer_can_relay, a verified client certificate relays; otherwise 554 5.7.1."""
    allowed = await start_relay(tmp_path / "a", [_verify_listener(pki, "optional", tls_verified_peer_can_relay=True)])
    try:
        ok = await _try_mail(allowed.port, pki, pki.client, rcpt="far@remote.test")
        refused = await _try_mail(allowed.port, pki, pki.client_untrusted, rcpt="far@remote.test")
    finally:
        await allowed.stop()
    denied = await start_relay(tmp_path / "b", [_verify_listener(pki, "optional")])
    try:
        not_enabled = await _try_mail(denied.port, pki, pki.client, rcpt="far@remote.test")
    finally:
        await denied.stop()
    assert ok == {}
    assert refused == (554, "rcpt")
    assert not_enabled == (554, "rcpt")


def _spki_and_cert_sha256(pair: Any) -> tuple[str, str]:
    from cryptography import x509

    from tlsmta.tls import certificate_sha256, spki_sha256

    with open(pair.cert, "rb") as f:
        leaf = x509.load_pem_x509_certificates(f.read())[0]
    return spki_sha256(leaf), certificate_sha256(leaf)


@pytest.mark.parametrize("by", ["spki", "certificate"])
@pytest_twisted.ensureDeferred
async def test_pinned_client_certificate_may_relay(tmp_path: Any, pki: Any, by: str) -> None:
    """relay_client_pins (Postfix relay_clientcerts): a client certificate whose SPKI or certificate SHA-256 is
    listed relays although no CA vouches for it and tls_verify = no; another certificate, even a CA-valid one,
    and no certificate get 554 5.7.1."""
    spki, cert = _spki_and_cert_sha256(pki.client_untrusted)
    pin = f"sha256:{spki if by == 'spki' else cert}"
    relay = await start_relay(tmp_path, [tls_listener(pki, relay_networks=[], relay_client_pins=[pin])])
    try:
        pinned = await _try_mail(relay.port, pki, pki.client_untrusted, rcpt="far@remote.test")
        other = await _try_mail(relay.port, pki, pki.client, rcpt="far@remote.test")
        none = await _try_mail(relay.port, pki, None, rcpt="far@remote.test")
    finally:
        await relay.stop()
    assert pinned == {}
    assert other == none == (554, "rcpt")


@pytest.mark.parametrize("hook, expected", [("record_and_accept", "ok"), ("reject", 530), ("explode", 530)])
@pytest_twisted.ensureDeferred
async def test_inbound_verify_hook_decides(tmp_path: Any, pki: Any, hook: str, expected: Any) -> None:
    """inbound_tls_verify_callback's answer decides; a hook that raises counts as failure."""
    verify_hooks.calls.clear()
    listener = _verify_listener(pki, "ca", local_domains=["local.test"])
    relay = await start_relay(tmp_path, [listener], hooks={"inbound_tls_verify_callback": f"verify_hooks:{hook}"})
    try:
        # An untrusted certificate: the hook is shown ok=False at depth 0 and its answer decides.
        result = await _try_mail(relay.port, pki, pki.client_untrusted)
    finally:
        await relay.stop()
    if expected == "ok":
        assert result == {}
        assert any(depth == 0 and not ok for depth, _, ok, _ in verify_hooks.calls)
        assert verify_hooks.calls[0][3].direction == "inbound"
    else:
        assert result[0] == expected


@pytest.mark.parametrize("mode", ["host", "optional"])
@pytest_twisted.ensureDeferred
async def test_passthrough_inbound_hook_keeps_the_name_check(tmp_path: Any, pki: Any, mode: str) -> None:
    """A pass-through inbound hook (returns ok) does not switch off the client-certificate name
    check: it was shown the chain result only, so a trusted certificate for another name is
    still refused (host: 530) or unverified (optional: no relay by certificate)."""
    verify_hooks.calls.clear()
    listener = _verify_listener(pki, mode, local_domains=["local.test"], tls_verified_peer_can_relay=True)
    relay = await start_relay(tmp_path, [listener], hooks={"inbound_tls_verify_callback": "verify_hooks:passthrough"})
    try:
        wrong_name = await _try_mail(relay.port, pki, pki.client, ehlo="claimed-relay-client.test", rcpt="far@remote.test")
        right_name = await _try_mail(relay.port, pki, pki.client, ehlo=CLIENT_NAME, rcpt="far@remote.test")
    finally:
        await relay.stop()
    assert any(depth == 0 and ok for depth, _, ok, _ in verify_hooks.calls)  # the hook was called and passed
    if mode == "host":
        assert wrong_name != {}, "MAIL accepted: the hook switched the name check off"
        assert wrong_name[0] == 530 and "certificate name does not match" in wrong_name[1], wrong_name
    else:
        assert wrong_name == (554, "rcpt")  # not verified, so no relay
    assert right_name == {}


@pytest_twisted.ensureDeferred
async def test_hook_called_even_when_listener_verify_is_no(tmp_path: Any, pki: Any) -> None:
    """With tls_verify = no and a hook, the client certificate is requested and the hook called."""
    verify_hooks.calls.clear()
    hooks = {"inbound_tls_verify_callback": "verify_hooks:record_and_accept"}
    relay = await start_relay(tmp_path, [tls_listener(pki)], hooks=hooks)
    try:
        result = await _try_mail(relay.port, pki, pki.client, rcpt="u@example.com")
    finally:
        await relay.stop()
    assert result == {}
    assert [c[0] for c in verify_hooks.calls][-1] == 0


# -- storage -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_sessions_share_directory_fsyncs(tmp_path: Any) -> None:
    """30 clients at once: every message stored, with fewer directory fsyncs than messages."""
    relay = await start_relay(tmp_path)
    try:
        from twisted.internet.defer import gatherResults

        sends = [in_thread(send_smtplib, relay.port, rcpts=(f"r{i}@example.com",)) for i in range(30)]
        await gatherResults(sends)
        syncer = relay.service.disk._dir_syncs[str(tmp_path / "maildir" / "new")]
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 30
    assert 1 <= syncer.flushes <= 30


def _send_then_vanish(port: int, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"HELO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(4):
        f.readline()
    line = b"x" * 998 + b"\r\n"
    sock.sendall(line * (size // len(line)))
    sock.close()


@pytest_twisted.ensureDeferred
async def test_client_vanishing_mid_data_leaves_nothing(tmp_path: Any) -> None:
    """A client that disconnects in the middle of a 2 MB DATA leaves no file in new/ or tmp/, named or not."""
    relay = await start_relay(tmp_path)
    try:
        await in_thread(_send_then_vanish, relay.port, 2 * 1024 * 1024)
        tmp_dir = tmp_path / "maildir" / "tmp"
        await eventually(lambda: not relay.service.listeners["test"].inbound.sessions)
        await eventually(lambda: os.listdir(tmp_dir) == [])
        # and no unnamed file of its left open (the spares made ahead are the only ones)
        spares = relay.service.disk.spares
        await eventually(lambda: len(open_names_under(tmp_dir)) == spares.ready(str(tmp_dir)))
        # The server still serves others.
        await in_thread(send_smtplib, relay.port)
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 1


@pytest_twisted.ensureDeferred
async def test_unwritable_maildir_gives_451(tmp_path: Any) -> None:
    """A Maildir that cannot be created answers 451 4.3.0, never 250."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    relay = await start_relay(tmp_path, route=f"maildir:{blocker / 'maildir'}")
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            await in_thread(send_smtplib, relay.port)
    finally:
        await relay.stop()
    assert e.value.smtp_code == 451
    assert b"4.3.0" in e.value.smtp_error


@pytest_twisted.ensureDeferred
async def test_full_disk_gives_452_and_keeps_nothing_half_written(tmp_path: Any, small_tmpfs: Any) -> None:
    """A message larger than the free space is 452 4.3.1; nothing stays in new/ or tmp/; small mail still works."""
    maildir = small_tmpfs / "maildir"
    relay = await start_relay(tmp_path, route=f"maildir:{maildir}")
    big = "Subject: big\r\n\r\n" + ("y" * 998 + "\r\n") * 1100  # ~1.1 MB > 512 KiB
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            await in_thread(send_smtplib, relay.port, body=big)
        await eventually(lambda: os.listdir(maildir / "tmp") == [])
        await in_thread(send_smtplib, relay.port)
    finally:
        await relay.stop()
    assert e.value.smtp_code == 452 and b"4.3.1" in e.value.smtp_error
    assert len(os.listdir(maildir / "new")) == 1


def _up_to_starttls(sock: socket.socket, ehlo: bytes = b"c.test") -> None:
    """Banner, EHLO and STARTTLS in clear text; the next bytes on ``sock`` are TLS."""
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO " + ehlo + b"\r\n")
    read_reply(f)
    sock.sendall(b"STARTTLS\r\n")
    f.readline()


def _garbage_after_starttls(port: int) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    _up_to_starttls(sock)
    sock.sendall(b"this is not a TLS ClientHello\r\n" * 10)
    rest = sock.recv(4096)  # an alert or nothing, then EOF
    sock.close()
    return rest


def _plaintext_to_implicit_tls(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n")
    sock.recv(4096)
    sock.close()


@pytest_twisted.ensureDeferred
async def test_tls_garbage_drops_only_that_client(tmp_path: Any, pki: Any) -> None:
    """Garbage instead of a handshake (STARTTLS or implicit) closes that session; others are served."""
    implicit = dev_listener(name="smtps", tls="implicit", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    relay = await start_relay(tmp_path, [tls_listener(pki), implicit])
    try:
        await in_thread(_garbage_after_starttls, relay.ports["test"])
        await in_thread(_plaintext_to_implicit_tls, relay.ports["smtps"])
        await in_thread(send_smtplib, relay.ports["test"], starttls=client_context(pki.ca_pem))
        await in_thread(send_smtplib, relay.ports["smtps"], implicit=client_context(pki.ca_pem))
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 2


@pytest.mark.parametrize("forward, expected", [("127.0.0.1", "ok"), ("127.0.0.9", 530)])
@pytest_twisted.ensureDeferred
async def test_client_name_checked_against_reverse_dns(tmp_path: Any, pki: Any, forward: str, expected: Any) -> None:
    """host: a client whose EHLO name does not match passes if its forward-confirmed PTR name does."""
    dns = {"ptr": {"127.0.0.1": [CLIENT_NAME]}, "hosts": {CLIENT_NAME: [forward]}}
    listener = _verify_listener(pki, "host", local_domains=["local.test"])
    relay = await start_relay(tmp_path, [listener], dns=dns)
    try:
        result = await _try_mail(relay.port, pki, pki.client, ehlo="unrelated.example.test")
    finally:
        await relay.stop()
    if expected == "ok":
        assert result == {}
    else:
        assert result[0] == 530 and "certificate name does not match unrelated.example.test" in result[1]


def _flood_without_reading(port: int, seconds: float) -> int:
    """Pipeline NOOPs and never read the replies; return how much the server took before it stopped reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(seconds)
    sent = 0
    chunk = b"NOOP\r\n" * 1000
    try:
        while sent < 64 * 1024 * 1024:
            sent += sock.send(chunk)
    except (socket.timeout, OSError):
        pass
    sock.close()
    return sent


@pytest_twisted.ensureDeferred
async def test_client_that_never_reads_cannot_grow_server_memory(tmp_path: Any) -> None:
    """A client pipelining commands without reading replies is throttled: the server stops reading it."""
    relay = await start_relay(tmp_path)
    try:
        sent = await in_thread(_flood_without_reading, relay.port, 3.0)
        [session] = list(relay.service.listeners["test"].inbound.sessions) or [None]
        buffered = session.session.buffered if session else 0
        unsent = len(session.transport.dataBuffer) + session.transport._tempDataLen if session else 0
    finally:
        await relay.stop()
    assert sent < 8 * 1024 * 1024  # the client was blocked long before 64 MiB
    assert buffered <= 2 * 64 * 1024 and unsent < 2 * 1024 * 1024


def _stall_handshake(port: int, implicit: bool, seconds: float) -> bool:
    """Start a handshake and go silent; True when the server closed the connection within ``seconds``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    if not implicit:
        _up_to_starttls(sock)
    sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True  # aborted by the server: closed too
    except socket.timeout:
        return False
    finally:
        sock.close()


@pytest.mark.parametrize("implicit", [False, True])
@pytest_twisted.ensureDeferred
async def test_stalled_handshake_is_cut_off(tmp_path: Any, pki: Any, monkeypatch: Any, implicit: bool) -> None:
    """A client that stalls the TLS handshake is disconnected after idle_timeout (plus the close grace)."""
    import tlsmta.inbound._server

    monkeypatch.setattr(tlsmta.inbound._server, "CLOSE_GRACE", 0.5)
    # idle_timeout also bounds each step of the client's way to the handshake (banner, EHLO,
    # STARTTLS): with 1 s, a loaded machine could cut the client off before it stalls anything.
    # 3 s (+ the grace) is still well inside the client's 10 s.
    listener = tls_listener(pki, idle_timeout=3, tls="implicit" if implicit else "starttls")
    relay = await start_relay(tmp_path, [listener])
    try:
        closed = await in_thread(_stall_handshake, relay.port, implicit, 10)
    finally:
        await relay.stop()
    assert closed


def _two_sessions(port: int, ca: str, cert: Any, version: ssl.TLSVersion) -> list[tuple[bool, str]]:
    """Two STARTTLS sessions, the second offering the first's TLS session; (resumed, MAIL reply) each."""
    ctx = client_context(ca, cert)
    ctx.maximum_version = version
    out, session = [], None
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        _up_to_starttls(sock, b"client.example.test")
        tls = ctx.wrap_socket(sock, server_hostname="mx.example.test", session=session)
        tf = tls.makefile("rb")
        tls.sendall(b"EHLO client.example.test\r\nMAIL FROM:<a@client.test>\r\nQUIT\r\n")
        read_reply(tf)
        mail = tf.readline().decode().strip()
        out.append((tls.session_reused, mail))
        session = tls.session
        tls.close()
    return out


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest_twisted.ensureDeferred
async def test_listener_checking_client_certificates_does_not_resume_sessions(tmp_path: Any, pki: Any, version: Any) -> None:
    """A client that caches TLS sessions gets a full handshake (and its certificate checked) every time, not a 530."""
    relay = await start_relay(tmp_path, [_verify_listener(pki, "ca", local_domains=["local.test"])])
    try:
        sessions = await in_thread(_two_sessions, relay.port, pki.ca_pem, pki.client, version)
    finally:
        await relay.stop()
    assert [resumed for resumed, _ in sessions] == [False, False]
    assert all(reply.startswith("250") for _, reply in sessions)


def _smuggle(port: int, fake_end: bytes, pipelined: bool) -> list[bytes]:
    """A transaction whose body holds a fake end of data and a second transaction; every reply line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    body = b"Subject: s\r\n\r\nhi" + fake_end + b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nspoofed\r\n.\r\n"
    head = [b"EHLO c.test\r\n", b"MAIL FROM:<a@c.test>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n"]
    replies = []
    if pipelined:
        sock.sendall(b"".join(head) + body + b"QUIT\r\n")
    else:
        for line in head:
            sock.sendall(line)
            reply = read_reply(f)
            replies.append(reply)
        for piece in (body[:7], body[7:20], body[20:], b"QUIT\r\n"):
            sock.sendall(piece)
    while True:
        reply = f.readline()
        if not reply:
            break
        if reply[3:4] != b"-":
            replies.append(reply)
    sock.close()
    return replies


@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n\x00.\r\n"])
@pytest_twisted.ensureDeferred
async def test_smuggling_over_real_sockets(tmp_path: Any, fake_end: bytes, pipelined: bool) -> None:
    """Every fake end-of-data variant, pipelined or not: one 550 for the whole thing, no second message."""
    relay = await start_relay(tmp_path)
    try:
        replies = await in_thread(_smuggle, relay.port, fake_end, pipelined)
    finally:
        await relay.stop()
    codes = [r[:3] for r in replies]
    assert codes == [b"250", b"250", b"250", b"354", b"550", b"221"], replies
    assert maildir_messages(str(tmp_path / "maildir")) == []


@pytest_twisted.ensureDeferred
async def test_password_checks_run_off_the_reactor_thread(tmp_path: Any, monkeypatch: Any) -> None:
    """scrypt is slow on purpose: the service checks AUTH passwords in its thread pool,
    never on the reactor thread (which would stall every other session meanwhile);
    a wrong password is answered 535 after AUTH_FAILURE_DELAY, on the real reactor too."""
    import threading
    import time

    from tlsmta.inbound import _server as inbound
    from tlsmta.inbound._auth import UserDB, hash_password

    monkeypatch.setattr(inbound, "AUTH_FAILURE_DELAY", 0.2)  # smtplib tries PLAIN, then LOGIN: two delays

    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret')}\n")
    threads: list[threading.Thread] = []
    check = UserDB.check

    def recording(self: UserDB, user: str, password: str) -> bool:
        threads.append(threading.current_thread())
        return check(self, user, password)

    monkeypatch.setattr(UserDB, "check", recording)
    listener = dev_listener(auth_users_file=str(users), require_tls_for_auth=False, relay_networks=[])
    relay = await start_relay(tmp_path, [listener])
    try:
        await in_thread(send_smtplib, relay.port, rcpts=("far@remote.test",), login=("alice", "s3cret"))
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            await in_thread(send_smtplib, relay.port, rcpts=("far@remote.test",), login=("alice", "guess"))
        elapsed = time.monotonic() - started
    finally:
        await relay.stop()
    assert len(threads) >= 2 and all(t is not threading.main_thread() for t in threads)
    assert e.value.smtp_code == 535 and elapsed >= 0.2  # the delay, on the real reactor
