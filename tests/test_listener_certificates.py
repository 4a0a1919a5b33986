"""A listener's certificates and TLS requirement over real loopback sockets and real clients:
``tls = required``, certificates chosen by SNI, RSA and ECDSA chains side by side, reload, expiry."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
import pytest_twisted
from e2e import client_context, in_thread, maildir_messages, start_relay

from tlsmta.testing import dev_listener

MUST_STARTTLS = b"5.7.0 Must issue a STARTTLS command first"


def _mail_in_clear_then_inside_tls(port: int, ca: str) -> tuple[tuple[int, bytes], bool, dict[str, Any]]:
    """MAIL before STARTTLS (the answer), whether EHLO offered STARTTLS, then a message inside TLS."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        offered = client.has_extn("starttls")
        refused = client.mail("a@client.test")
        client.rset()
        client.starttls(context=client_context(ca))
        client.ehlo()
        result = client.sendmail("a@client.test", ["u@example.com"], b"Subject: tls\r\n\r\nhi\r\n")
    return refused, offered, result


@pytest_twisted.ensureDeferred
async def test_tls_required_listener_refuses_mail_in_clear_and_takes_it_inside_tls(tmp_path: Any, pki: Any) -> None:
    """``tls = required``: smtplib's MAIL in clear gets 530 5.7.0, EHLO still offers STARTTLS,
    and the same client's message after STARTTLS is stored."""
    listener = dev_listener(tls="required", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    relay = await start_relay(tmp_path, [listener])
    try:
        refused, offered, result = await in_thread(_mail_in_clear_then_inside_tls, relay.port, pki.ca_pem)
    finally:
        await relay.stop()
    assert refused == (530, MUST_STARTTLS)
    assert offered
    assert result == {}
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert "with ESMTPS id" in " ".join(msg["Received"].split())
