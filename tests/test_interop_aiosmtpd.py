"""tlsmta delivering to aiosmtpd (the Python SMTP server), plain and with verified STARTTLS."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import pytest_twisted
from e2e import AIOSMTPD_READY_TIMEOUT
from outbound_lab import DOMAIN, deliveries, start_sender, submit_and_settle
from postfix_lab import free_port


class Collect:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 stored by aiosmtpd"


@pytest.fixture
def aiosmtpd_server(pki: Any, request: Any):
    from aiosmtpd.controller import Controller

    handler = Collect()
    context = None
    if request.param == "starttls":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.good.cert, pki.good.key)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=context, server_hostname="mx.example.test",
        ready_timeout=AIOSMTPD_READY_TIMEOUT)
    controller.start()
    yield controller, handler, context is not None
    controller.stop()


@pytest.mark.parametrize("aiosmtpd_server", ["plain", "starttls"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_delivery_to_aiosmtpd(tmp_path: Any, pki: Any, events: list, aiosmtpd_server: Any) -> None:
    """aiosmtpd gets the envelope and the body with dot lines intact; with STARTTLS the delivery is host-verified."""
    controller, handler, starttls = aiosmtpd_server
    tls = {"tls": "required", "tls_verify": "host"} if starttls else {"tls": "ifavailable"}
    sender = await start_sender(tmp_path, controller.port, pki.ca_pem, **tls)
    body = "Subject: to aiosmtpd\r\n\r\n.one dot\r\n..two dots\r\n.\r\nend\r\n"
    try:
        await submit_and_settle(sender, rcpts=(f"a@{DOMAIN}", f"b@{DOMAIN}"), body=body)
    finally:
        await sender.stop()
    event, second = deliveries(events)  # a line per recipient
    assert event["result"] == second["result"] == "delivered", event
    [(mail_from, rcpts, content)] = handler.received
    assert (mail_from, rcpts) == ("app@client.test", [f"a@{DOMAIN}", f"b@{DOMAIN}"])
    assert content.endswith(b"\r\n\r\n.one dot\r\n..two dots\r\n.\r\nend\r\n")
    if starttls:
        assert event["tls"] == "tls" and event["verified"] == "yes"
