"""REQUIRETLS (RFC 8689) outbound: verified TLS or a bounce, never a fallback; TLS-Required: No."""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

import pytest
import pytest_twisted
from e2e import AIOSMTPD_READY_TIMEOUT, client_context, in_thread, maildir_messages
from outbound_lab import DOMAIN, deliveries, start_receiver, start_sender
from postfix_lab import free_port
from sts_lab import policy_text, start_policy_server, sts_dns

BODY = "Subject: secret\r\n\r\nfor your eyes only\r\n"


def send_requiretls(port: int, ca: str, body: str = BODY) -> None:
    """Submit over verified STARTTLS with MAIL FROM ... REQUIRETLS."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
    try:
        client.ehlo()
        client.starttls(context=client_context(ca))
        client.ehlo()
        assert client.has_extn("requiretls")
        client.sendmail("app@client.test", [f"user@{DOMAIN}"], body.encode(), mail_options=["REQUIRETLS"])
    finally:
        client.quit()


async def through(tmp_path: Any, pki: Any, port: int, body: str = BODY, requiretls: bool = True, **opts: Any) -> Any:
    """A sender with a STARTTLS submission listener; one message in, queue settled."""
    listener = {"tls": "starttls", "tls_certificate": pki.good.cert, "tls_key": pki.good.key}
    sender = await start_sender(tmp_path, port, pki.ca_pem, listener=listener, **opts)
    try:
        if requiretls:
            await in_thread(send_requiretls, sender.port, pki.ca_pem, body)
        else:
            from e2e import send_smtplib

            await in_thread(send_smtplib, sender.port, rcpts=(f"user@{DOMAIN}",), body=body)
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
    return sender


def outbound(events: list) -> dict[str, Any]:
    [event] = [e for e in deliveries(events) if e["domain"] == DOMAIN]
    return event


@pytest_twisted.ensureDeferred
async def test_requiretls_to_a_receiver_that_offers_it(tmp_path: Any, pki: Any, events: list) -> None:
    """Verified TLS to a next hop advertising REQUIRETLS: delivered, MAIL FROM carried REQUIRETLS,
    although the local policy is tls = no."""
    rx = await start_receiver(tmp_path, pki.good)
    try:
        await through(tmp_path, pki, rx.port, tls="no")
    finally:
        await rx.stop()
    event = outbound(events)
    assert (event["result"], event["tls"], event["verified"], event["tls_policy"], event["requiretls"]) == (
        "delivered", "tls", "yes", "requiretls", "yes")
    [received] = [e for e in events if e["tlsmta_event"] == "received" and e["listener"] == "receiver"]
    assert received["requiretls"] is True  # the next hop got MAIL FROM ... REQUIRETLS
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1


@pytest.fixture
def aiosmtpd_tls(pki: Any):
    """aiosmtpd with STARTTLS and a valid certificate: it does not offer REQUIRETLS."""
    from aiosmtpd.controller import Controller

    class Collect:
        received: list[Any] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.received.append(envelope)
            return "250 2.0.0 stored"

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.good.cert, pki.good.key)
    handler = Collect()
    handler.received = []
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=context, server_hostname="mx.example.test",
        ready_timeout=AIOSMTPD_READY_TIMEOUT)
    controller.start()
    yield controller, handler
    controller.stop()


@pytest_twisted.ensureDeferred
async def test_requiretls_to_a_receiver_without_it_bounces(tmp_path: Any, pki: Any, events: list, aiosmtpd_tls: Any) -> None:
    """The next hop does not offer REQUIRETLS: bounced 5.7.30 with a DSN, nothing sent."""
    controller, handler = aiosmtpd_tls
    await through(tmp_path, pki, controller.port, tls="required", tls_verify="host")
    event = outbound(events)
    assert (event["result"], event["code"], event["text"][:6]) == ("bounced", 550, "5.7.30")
    assert handler.received == []
    assert [e["rcpts"] for e in events if e["tlsmta_event"] == "bounce"] == [1]


@pytest.mark.parametrize("cert", ["wrong_name", "untrusted", None])
@pytest_twisted.ensureDeferred
async def test_requiretls_without_verified_tls_bounces(tmp_path: Any, pki: Any, events: list, cert: str | None) -> None:
    """A certificate that does not verify, or no STARTTLS at all: bounced 5.7.10, never a
    plain-text fallback, even with tls = ifavailable, tls_verify = optional and fallback on."""
    rx = await start_receiver(tmp_path, getattr(pki, cert) if cert else None)
    try:
        await through(tmp_path, pki, rx.port, tls="ifavailable", tls_verify="optional", tls_ifavailable_fallback=True)
    finally:
        await rx.stop()
    event = outbound(events)
    assert (event["result"], event["code"], event["text"][:6]) == ("bounced", 550, "5.7.10")
    assert "REQUIRETLS" in event["text"]
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []
    assert rx.service.listeners["receiver"].inbound.connections_total == 1


@pytest_twisted.ensureDeferred
async def test_tls_required_no_relaxes_mta_sts(tmp_path: Any, pki: Any, events: list) -> None:
    """TLS-Required: No: an MTA-STS enforce policy that excludes the MX is ignored, the mail goes
    under the local options (here: plain text to a receiver without STARTTLS)."""
    server = start_policy_server(pki.ca, policy_text("enforce", mx=("other.example.test",)))
    rx = await start_receiver(tmp_path, None)
    body = "Subject: not secret\r\nTLS-Required: No\r\n\r\nhello\r\n"
    try:
        await through(tmp_path, pki, rx.port, body=body, requiretls=False, tls="ifavailable",
                      dns=sts_dns(), mta_sts_https_port=server.port)
    finally:
        await rx.stop()
        await server.stop()
    event = outbound(events)
    assert (event["result"], event["tls"], event["tls_policy"], event["tls_required_no"]) == (
        "delivered", "none", "local", "ignored mta-sts")
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1


@pytest_twisted.ensureDeferred
async def test_same_message_without_the_header_is_held_by_mta_sts(tmp_path: Any, pki: Any, events: list) -> None:
    """The control case: without TLS-Required: No the enforce policy keeps the message back."""
    server = start_policy_server(pki.ca, policy_text("enforce", mx=("other.example.test",)))
    rx = await start_receiver(tmp_path, None)
    try:
        await through(tmp_path, pki, rx.port, requiretls=False, tls="ifavailable", dns=sts_dns(), mta_sts_https_port=server.port)
    finally:
        await rx.stop()
        await server.stop()
    event = outbound(events)
    assert (event["result"], event["tls_policy"]) == ("deferred", "mta-sts-enforce")
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest_twisted.ensureDeferred
async def test_requiretls_through_a_smarthost(tmp_path: Any, pki: Any, events: list) -> None:
    """A smarthost named in the configuration is a validated next hop: REQUIRETLS goes through it
    over TLS verified for the smarthost's name."""
    rx = await start_receiver(tmp_path, pki.good)
    try:
        await through(tmp_path, pki, rx.port, route=f"smtp:mx.example.test:{rx.port}")
    finally:
        await rx.stop()
    event = outbound(events)
    assert (event["result"], event["verified"], event["tls_policy"]) == ("delivered", "yes", "requiretls")
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1


@pytest_twisted.ensureDeferred
async def test_requiretls_tries_the_next_mx(tmp_path: Any, pki: Any, events: list) -> None:
    """RFC 8689 4.2.1: a host that fails the requirements is left for the next MX. Here both MX
    names lead to one receiver whose certificate names only the second: delivered via mx2."""
    from conftest import Pair

    leaf = pki.ca.issue_cert("mx2.example.test")
    cert, key = tmp_path / "mx2.pem", tmp_path / "mx2.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    rx = await start_receiver(tmp_path, Pair(str(cert), str(key)))
    dns = {"mx": {DOMAIN: ["mx1.example.test", "mx2.example.test"]},
           "hosts": {"mx1.example.test": ["127.0.0.1"], "mx2.example.test": ["127.0.0.1"]}}
    try:
        await through(tmp_path, pki, rx.port, dns=dns)
    finally:
        await rx.stop()
    event = outbound(events)
    assert (event["result"], event["mx"], event["verified"]) == ("delivered", "mx2.example.test", "yes")
    assert rx.service.listeners["receiver"].inbound.connections_total == 2


def test_requiretls_mail_never_shares_a_destination_with_other_mail() -> None:
    """Jobs for one domain split by what the message asks of TLS: a REQUIRETLS message, a
    TLS-Required: No message and an ordinary one get three destinations (so three sessions)."""
    from twisted.internet.task import Clock

    from tlsmta.config import _loader as configuration
    from tlsmta.config._routes import parse_route
    from tlsmta.delivery._pool import DeliveryJob, MessageTLS, OutboundPool
    from tlsmta.discovery._resolver import OfflineBackend, Resolver
    from tlsmta.storage._spool import QueuedMessage, RecipientState
    from tlsmta.tls._hooks import load_hooks

    pool = OutboundPool(Clock(), Resolver({}, OfflineBackend()), None, None, "sender.test", load_hooks({}), max_connections=0)
    options = configuration.resolve(configuration.from_dict({}), DOMAIN)
    flags = [(True, False), (False, True), (False, False), (True, False)]
    for i, (requiretls, no) in enumerate(flags):
        rcpt = RecipientState(f"user@{DOMAIN}", parse_route("mx"))
        message = QueuedMessage(f"m{i}", "a@client.test", [rcpt], 0.0, requiretls=requiretls, tls_required_no=no)
        pool.submit(DeliveryJob(message, (rcpt,), parse_route("mx"), DOMAIN, "default"), options)
    kinds = sorted((d.message_tls.requiretls, d.message_tls.tls_required_no, len(d.jobs)) for d in pool.destinations.values())
    assert kinds == [(False, False, 1), (False, True, 1), (True, False, 2)]
    assert MessageTLS.of(QueuedMessage("x", "", [], 0.0, requiretls=True)) == MessageTLS(True, False)
