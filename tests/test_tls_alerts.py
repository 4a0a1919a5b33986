"""When tlsmta refuses a server's certificate in the handshake, the server hears why.

The receiver is Python's ``ssl`` (the system OpenSSL, not the one pyOpenSSL
runs on) behind a few lines of SMTP: it answers STARTTLS, runs the server
handshake and keeps the error OpenSSL raises for the alert tlsmta sent.
Before, a certificate that failed only tlsmta's own checks (the name under
``host``, a verify hook) was refused with ``internal_error(80)``.

Inbound, tlsmta never aborts a handshake for a client certificate: it
completes it and answers 530 at MAIL (tests/test_tls_verify.py).
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest
import pytest_twisted
from outbound_lab import deliveries, start_sender, submit_and_settle

ACCEPT_TIMEOUT = 30


class AlertRecorder:
    """A one-connection-at-a-time STARTTLS server on loopback that records each handshake's end.

    ``outcomes`` gets OpenSSL's reason for each failed server handshake
    (``SSLV3_ALERT_BAD_CERTIFICATE``, ``TLSV1_ALERT_UNKNOWN_CA``, ...), or
    ``"completed"``.
    """

    def __init__(self, pair: Any):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pair.cert, pair.key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(ACCEPT_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed by stop(), or nobody came
                return
            with conn:
                conn.settimeout(ACCEPT_TIMEOUT)
                self._session(conn)

    @staticmethod
    def _line(conn: socket.socket) -> bytes:
        """One command line, read a byte at a time: nothing after it may be taken from the socket."""
        line = b""
        while not line.endswith(b"\r\n"):
            byte = conn.recv(1)
            if not byte:
                return b""
            line += byte
        return line

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(b"220 alerts.test ESMTP\r\n")
        while line := self._line(conn).upper():
            if line.startswith(b"EHLO"):
                conn.sendall(b"250-alerts.test\r\n250 STARTTLS\r\n")
            elif line.startswith(b"STARTTLS"):
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                try:
                    with self.ctx.wrap_socket(conn, server_side=True):
                        self.outcomes.append("completed")
                except (ssl.SSLError, OSError) as e:
                    self.outcomes.append(getattr(e, "reason", None) or str(e))
                return
            else:
                conn.sendall(b"221 2.0.0 bye\r\n")
                return

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone would not)
        self.listener.close()
        self.thread.join(ACCEPT_TIMEOUT)
        assert not self.thread.is_alive()


async def refused_by(tmp_path: Any, pair: Any, ca: str, events: list, **sender: Any) -> list[str]:
    """One delivery with ``sender`` options to an AlertRecorder serving ``pair``: the server's outcomes."""
    server = AlertRecorder(pair)
    try:
        relay = await start_sender(tmp_path, server.port, ca, tls="required", **sender)
        try:
            await submit_and_settle(relay)
        finally:
            await relay.stop()
    finally:
        server.stop()
    [line] = deliveries(events)
    assert (line["result"], line["status"]) == ("deferred", "4.7.5"), line
    return server.outcomes


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest_twisted.ensureDeferred
async def test_name_mismatch_under_host_sends_bad_certificate(tmp_path: Any, pki: Any, events: list, version: str) -> None:
    """tls_verify = host and a trusted certificate for another name: bad_certificate(42), not internal_error(80)."""
    outcomes = await refused_by(tmp_path, pki.wrong_name, pki.ca_pem, events, tls_verify="host",
                                tls_protocols=f"-ALL:+{version}")
    assert outcomes == ["SSLV3_ALERT_BAD_CERTIFICATE"]


@pytest_twisted.ensureDeferred
async def test_a_refusing_verify_hook_sends_bad_certificate(tmp_path: Any, pki: Any, events: list) -> None:
    """A verify hook that answers False for a certificate OpenSSL accepted: bad_certificate, not internal_error."""
    outcomes = await refused_by(tmp_path, pki.good, pki.ca_pem, events, tls_verify="ca",
                                hooks={"outbound_tls_verify_callback": "verify_hooks:reject"})
    assert outcomes == ["SSLV3_ALERT_BAD_CERTIFICATE"]


@pytest.mark.parametrize(
    ("pair", "alert"),
    [("untrusted", "TLSV1_ALERT_UNKNOWN_CA"), ("self_signed", "TLSV1_ALERT_UNKNOWN_CA"),
     ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED")],
)
@pytest_twisted.ensureDeferred
async def test_chain_failures_under_ca_send_their_own_alert(tmp_path: Any, pki: Any, events: list, pair: str, alert: str) -> None:
    """tls_verify = ca: an unknown issuer is unknown_ca(48), an expired certificate certificate_expired(45)."""
    outcomes = await refused_by(tmp_path, getattr(pki, pair), pki.ca_pem, events, tls_verify="ca")
    assert outcomes == [alert]
