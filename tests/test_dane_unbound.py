"""DANE with real DNSSEC: unbound validates a signed zone, tlsmta trusts its AD bit (no pins at all)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import trustme
from conftest import Pair
from cryptography import x509
from e2e import maildir_messages
from outbound_lab import DOMAIN, MX, deliveries, start_receiver, submit_and_settle
from unbound_lab import SignedZone

from tlsmta.discovery import _dane as dane
from tlsmta.testing import RunningRelay, build_config, dev_listener


async def deliver_via_unbound(tmp_path: Any, pair: Pair, tlsa: str, trusted: bool = True, **opts: Any) -> None:
    rx = await start_receiver(tmp_path, pair)
    zone = SignedZone(str(tmp_path / "zone"), DOMAIN, [
        f"@ IN MX 10 {MX}.", f"{MX}. IN A 127.0.0.1", f"_{rx.port}._tcp.{MX}. IN TLSA {tlsa}",
    ], trusted=trusted).start()
    config = build_config({
        "global": {"hostname": "sender.test", "state_dir": str(tmp_path / "sender-state"), "smtp_port": rx.port, **opts},
        "spool": {"path": str(tmp_path / "sender-spool")},
        "queue": {"retry_schedule": [3600]},
        "listener": [dev_listener(name="submit")],
    })
    sender = RunningRelay(config, dns_backend=zone.twisted_backend())
    sender.service.resolver.nameservers = tuple(zone.nameservers)  # the validating resolver
    await sender.start()
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
        zone.stop()


def spki_record(pair: Pair) -> str:
    with open(pair.cert, "rb") as f:
        return str(dane.record_for(x509.load_pem_x509_certificates(f.read())[0]))


@pytest_twisted.ensureDeferred
async def test_signed_zone_dane_ee_delivers(tmp_path: Any, events: list) -> None:
    """MX, A and TLSA from a signed zone (AD bit): DANE-EE applies and verifies a certificate
    from an unknown CA, with local tls = no."""
    leaf = trustme.CA().issue_cert("elsewhere.example")
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    pair = Pair(str(cert), str(key))
    await deliver_via_unbound(tmp_path, pair, spki_record(pair), tls="no")
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"], event["dane"], event["verified"]) == ("delivered", "dane", "usable", "yes")
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1


@pytest_twisted.ensureDeferred
async def test_signed_zone_dane_mismatch_defers(tmp_path: Any, pki: Any, events: list) -> None:
    """A validated TLSA record that does not match: deferred 4.7.5, nothing delivered."""
    await deliver_via_unbound(tmp_path, pki.good, "3 1 1 " + "ab" * 32, tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5], event["tls_policy"]) == ("deferred", "4.7.5", "dane")
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest_twisted.ensureDeferred
async def test_unvalidated_answers_do_not_count(tmp_path: Any, pki: Any, events: list) -> None:
    """The same zone without a trust anchor (no AD bit): the TLSA record is ignored, local rules apply."""
    await deliver_via_unbound(tmp_path, pki.good, "3 1 1 " + "ab" * 32, trusted=False, tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"], event["tls"]) == ("delivered", "local", "tls")
    assert "dane" not in event


@pytest_twisted.ensureDeferred
async def test_insecure_mx_address_means_no_dane(tmp_path: Any, pki: Any, events: list) -> None:
    """RFC 7672 2.2.2: the MX host's address comes through a CNAME into an unsigned zone, so it
    does not validate: its (validated) TLSA record is not used and local rules apply."""
    rx = await start_receiver(tmp_path, pki.good)
    zone = SignedZone(str(tmp_path / "zone"), DOMAIN, [
        f"@ IN MX 10 {MX}.", f"{MX}. IN CNAME mx.unsigned.test.", f"_{rx.port}._tcp.{MX}. IN TLSA 3 1 1 {'ab' * 32}",
    ], unsigned={"unsigned.test": ["mx IN A 127.0.0.1"]}).start()
    config = build_config({
        "global": {"hostname": "sender.test", "state_dir": str(tmp_path / "sender-state"), "smtp_port": rx.port, "tls": "ifavailable"},
        "spool": {"path": str(tmp_path / "sender-spool")},
        "queue": {"retry_schedule": [3600]},
        "listener": [dev_listener(name="submit")],
    })
    sender = RunningRelay(config, dns_backend=zone.twisted_backend())
    sender.service.resolver.nameservers = tuple(zone.nameservers)
    await sender.start()
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
        zone.stop()
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"], event["tls"]) == ("delivered", "local", "tls")
    assert "dane" not in event
