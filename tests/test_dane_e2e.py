"""DANE (RFC 7672) end to end: pinned TLSA records built from trustme keys, real SMTP receivers."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import trustme
from conftest import Pair
from cryptography import x509
from e2e import maildir_messages
from outbound_lab import MX, deliveries, start_receiver, start_sender, submit_and_settle

from tlsmta.discovery import _dane as dane


def leaf_of(pair: Pair, index: int = 0) -> x509.Certificate:
    with open(pair.cert, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[index]


def write_pair(tmp_path: Any, name: str, leaf: trustme.LeafCert, extra: bytes = b"") -> Pair:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems) + extra)
    key.write_bytes(leaf.private_key_pem.bytes())
    return Pair(str(cert), str(key))


async def run(tmp_path: Any, pair: Pair | None, tlsa: list[str], **opts: Any) -> Any:
    """One message to a receiver with ``pair``; the MX host's TLSA RRset is pinned to ``tlsa``."""
    rx = await start_receiver(tmp_path, pair)
    dns = {"tlsa": {dane.tlsa_name(MX, rx.port): tlsa}}
    sender = await start_sender(tmp_path, rx.port, None, dns=dns, **opts)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
    return rx


def stored(tmp_path: Any) -> list[Any]:
    return maildir_messages(str(tmp_path / "receiver-maildir"))


@pytest_twisted.ensureDeferred
async def test_dane_ee_match_delivers_despite_untrusted_ca_and_wrong_name(tmp_path: Any, events: list) -> None:
    """3 1 1 matching the server key: delivered over verified TLS although the certificate comes
    from a CA nobody trusts and names another host, and the local policy is tls = no."""
    pair = write_pair(tmp_path, "stranger", trustme.CA().issue_cert("elsewhere.example"))
    await run(tmp_path, pair, [str(dane.record_for(leaf_of(pair)))], tls="no")
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["verified"]) == ("delivered", "tls", "yes")
    assert (event["tls_policy"], event["tls_verify"], event["dane"]) == ("dane", "dane", "usable")
    assert event["reason"].startswith("dane: DANE-EE(3) 3 1 1 matched")
    assert len(stored(tmp_path)) == 1


@pytest_twisted.ensureDeferred
async def test_dane_mismatch_defers_and_never_falls_back(tmp_path: Any, pki: Any, events: list) -> None:
    """A TLSA record for another key: deferred 4.7.5, never sent in plain text, although the local
    policy is ifavailable with fallback and the certificate is CA-valid for the MX."""
    other = trustme.CA().issue_cert("mx.example.test")
    record = dane.record_for(x509.load_pem_x509_certificate(other.cert_chain_pems[0].bytes()))
    rx = await run(tmp_path, pki.good, [str(record)], tls="ifavailable", tls_ifavailable_fallback=True, tls_ca=pki.ca_pem)
    [event] = deliveries(events)
    assert (event["result"], event["code"], event["tls_policy"]) == ("deferred", 451, "dane")
    assert event["text"].startswith("4.7.5 dane: no TLSA record matched")
    assert rx.service.listeners["receiver"].inbound.connections_total == 1  # no plain-text retry
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_dane_ta_match(tmp_path: Any, events: list) -> None:
    """2 1 1 for the issuing CA (sent in the chain): delivered when the leaf names the MX host."""
    ca = trustme.CA()
    pair = write_pair(tmp_path, "ta", ca.issue_cert(MX), extra=ca.cert_pem.bytes())
    anchor = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    await run(tmp_path, pair, [str(dane.record_for(anchor, usage=dane.Usage.DANE_TA))], tls="no")
    [event] = deliveries(events)
    assert (event["result"], event["verified"], event["tls_policy"]) == ("delivered", "yes", "dane")
    assert "DANE-TA(2)" in event["reason"]


@pytest_twisted.ensureDeferred
async def test_dane_ta_wrong_name_defers(tmp_path: Any, events: list) -> None:
    """2 x x: the trust anchor matches but the leaf does not name the MX host: deferred 4.7.5."""
    ca = trustme.CA()
    pair = write_pair(tmp_path, "ta", ca.issue_cert("elsewhere.example"), extra=ca.cert_pem.bytes())
    anchor = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    await run(tmp_path, pair, [str(dane.record_for(anchor, usage=dane.Usage.DANE_TA))], tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5]) == ("deferred", "4.7.5")
    assert "name does not match" in event["text"]
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_dane_requires_starttls(tmp_path: Any, pki: Any, events: list) -> None:
    """Usable TLSA records and a receiver without STARTTLS: 4.7.6, no plain text even with tls = ifavailable."""
    await run(tmp_path, None, [str(dane.record_for(leaf_of(pki.good)))], tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5], event["tls_policy"]) == ("deferred", "4.7.6", "dane")
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_tlsa_lookup_failure_makes_the_mx_unusable(tmp_path: Any, pki: Any, events: list) -> None:
    """A TLSA RRset that cannot be had (here: a malformed pinned answer): that MX is not used (4.7.5)."""
    rx = await run(tmp_path, pki.good, ["3 1 1 zz"], tls="no")
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5], event["dane"]) == ("deferred", "4.7.5", "failed")
    assert rx.service.listeners["receiver"].inbound.connections_total == 0


@pytest_twisted.ensureDeferred
async def test_unusable_tlsa_records_mean_mandatory_tls(tmp_path: Any, pki: Any, events: list) -> None:
    """Only PKIX-EE(1) records (unusable for SMTP): TLS is still mandatory, the certificate not DANE-checked."""
    record = dane.record_for(leaf_of(pki.good), usage=dane.Usage.PKIX_EE)
    await run(tmp_path, None, [str(record)], tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5], event["dane"]) == ("deferred", "4.7.6", "unusable")
    await run(tmp_path, pki.wrong_name, [str(record)], tls="ifavailable")
    event = deliveries(events)[-1]
    assert (event["result"], event["tls"], event["tls_policy"]) == ("delivered", "tls", "dane")


@pytest_twisted.ensureDeferred
async def test_dane_opt_out(tmp_path: Any, pki: Any, events: list) -> None:
    """dane = false: the TLSA records are not used."""
    other = trustme.CA().issue_cert("mx.example.test")
    record = dane.record_for(x509.load_pem_x509_certificate(other.cert_chain_pems[0].bytes()))
    await run(tmp_path, pki.good, [str(record)], tls="ifavailable", dane=False)
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"]) == ("delivered", "local")


@pytest_twisted.ensureDeferred
async def test_dane_sends_sni_for_the_mx_host(tmp_path: Any, pki: Any, events: list) -> None:
    """RFC 7672 8.1: with DANE the client sends SNI naming the TLSA base domain (the MX host);
    aiosmtpd's TLS context records what it got."""
    import ssl

    from aiosmtpd.controller import Controller
    from e2e import AIOSMTPD_READY_TIMEOUT
    from postfix_lab import free_port

    seen: list[str | None] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 stored"

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.good.cert, pki.good.key)
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port(), tls_context=context, server_hostname=MX,
        ready_timeout=AIOSMTPD_READY_TIMEOUT)
    controller.start()
    try:
        dns = {"tlsa": {dane.tlsa_name(MX, controller.port): [str(dane.record_for(leaf_of(pki.good)))]}}
        sender = await start_sender(tmp_path, controller.port, None, dns=dns, tls="no")
        try:
            await submit_and_settle(sender)
        finally:
            await sender.stop()
    finally:
        controller.stop()
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"]) == ("delivered", "dane")
    assert seen == [MX]


@pytest_twisted.ensureDeferred
async def test_dane_required_without_tlsa_records_defers_and_never_connects(tmp_path: Any, pki: Any, events: list) -> None:
    """dane = "required" for the domain and no TLSA records for its MX: deferred 4.7.5 with the reason, the MX is
    not even connected to, although its certificate is CA-valid and tls = ifavailable would allow plain text."""
    rx = await run(tmp_path, pki.good, [], domains={"example.test": {"dane": "required"}},
                   tls="ifavailable", tls_verify="host", tls_ca=pki.ca_pem)
    [event] = deliveries(events)
    assert (event["result"], event["code"], event["tls_policy"]) == ("deferred", 451, "dane-required")
    assert event["text"] == "4.7.5 dane: DANE required (dane = required) but no DNSSEC-validated TLSA records; MX not used"
    assert rx.service.listeners["receiver"].inbound.connections_total == 0
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_dane_required_with_unusable_records_defers(tmp_path: Any, pki: Any, events: list) -> None:
    """Only PKIX-EE records (unusable for SMTP) under dane = "required": deferred, where dane = true would deliver."""
    record = dane.record_for(leaf_of(pki.good), usage=dane.Usage.PKIX_EE)
    await run(tmp_path, pki.good, [str(record)], tls="ifavailable", dane="required")
    [event] = deliveries(events)
    assert (event["result"], event["dane"]) == ("deferred", "unusable")
    assert event["text"].startswith("4.7.5 dane: DANE required (dane = required) but no usable TLSA records")


@pytest_twisted.ensureDeferred
async def test_dane_required_with_a_matching_record_delivers(tmp_path: Any, pki: Any, events: list) -> None:
    """dane = "required" and a matching DANE-EE record: delivered over DANE-verified TLS."""
    await run(tmp_path, pki.good, [str(dane.record_for(leaf_of(pki.good)))], tls="no", dane="required")
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"], event["verified"]) == ("delivered", "dane", "yes")
