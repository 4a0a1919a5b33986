"""MTA-STS end to end: a local HTTPS policy server (trustme), pinned DNS, real SMTP receivers."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import trustme
from e2e import maildir_messages
from outbound_lab import deliveries, start_receiver, start_sender, submit_and_settle
from sts_lab import policy_text, start_policy_server, sts_dns

from tlsmta.discovery import _mtasts as mtasts


async def run(tmp_path: Any, pki: Any, pair: Any, body: str, ca: Any = None, policy_id: str = "1", server: Any = None, **opts: Any) -> tuple[Any, Any]:
    """One message through a sender whose recipient domain publishes ``body`` as its MTA-STS policy."""
    server = server or start_policy_server(ca or pki.ca, body)
    rx = await start_receiver(tmp_path, pair)
    sender = await start_sender(tmp_path, rx.port, pki.ca_pem, dns=sts_dns(policy_id), mta_sts_https_port=server.port, **opts)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
        await server.stop()
    return rx, server


def stored(tmp_path: Any) -> list[Any]:
    return maildir_messages(str(tmp_path / "receiver-maildir"))


@pytest_twisted.ensureDeferred
async def test_enforce_matching_mx_delivers_verified(tmp_path: Any, pki: Any, events: list) -> None:
    """enforce + listed MX: STARTTLS and a host-verified certificate even though the local policy is tls = no."""
    _, server = await run(tmp_path, pki, pki.good, policy_text("enforce"), tls="no")
    [event] = deliveries(events)
    assert event["result"] == "delivered" and event["tls"] == "tls" and event["verified"] == "yes"
    assert (event["tls_policy"], event["tls_verify"], event["mta_sts"]) == ("mta-sts-enforce", "host", "enforce/fetched")
    assert server.resource.requests == [b"/.well-known/mta-sts.txt"]
    assert len(stored(tmp_path)) == 1
    cached = mtasts.STSCache(str(tmp_path / "sender-state" / "mta-sts")).read_blocking("example.test")
    assert cached is not None and cached.policy.mode == "enforce" and cached.policy.id == "1"


@pytest_twisted.ensureDeferred
async def test_enforce_unlisted_mx_is_not_used(tmp_path: Any, pki: Any, events: list) -> None:
    """enforce + an MX outside the policy: deferred 4.7.5, no connection at all."""
    rx, _ = await run(tmp_path, pki, pki.good, policy_text("enforce", mx=("other.example.test",)), tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["code"]) == ("deferred", 451)
    assert event["text"].startswith("4.7.5 MX host not listed in the MTA-STS policy")
    assert rx.service.listeners["receiver"].inbound.connections_total == 0
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_enforce_wildcard_mx(tmp_path: Any, pki: Any, events: list) -> None:
    """enforce with mx: *.example.test covers mx.example.test."""
    await run(tmp_path, pki, pki.good, policy_text("enforce", mx=("*.example.test",)))
    [event] = deliveries(events)
    assert event["result"] == "delivered" and event["verified"] == "yes"


@pytest_twisted.ensureDeferred
async def test_enforce_bad_certificate_never_plain(tmp_path: Any, pki: Any, events: list) -> None:
    """enforce + a certificate for another name: deferred 4.7.5, never retried in plain text,
    although the local policy is ifavailable with fallback and tls_verify = optional."""
    rx, _ = await run(tmp_path, pki, pki.wrong_name, policy_text("enforce"), tls="ifavailable", tls_verify="optional")
    [event] = deliveries(events)
    assert (event["result"], event["code"], event["tls_policy"]) == ("deferred", 451, "mta-sts-enforce")
    assert "4.7.5 certificate name does not match mx.example.test" in event["text"]
    assert rx.service.listeners["receiver"].inbound.connections_total == 1
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_enforce_without_starttls_defers(tmp_path: Any, pki: Any, events: list) -> None:
    """enforce + a receiver without STARTTLS: 4.7.6, nothing sent in plain text."""
    await run(tmp_path, pki, None, policy_text("enforce"), tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5]) == ("deferred", "4.7.6")
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_testing_mode_delivers_and_reports(tmp_path: Any, pki: Any, events: list) -> None:
    """testing: delivered as before (here: TLS, not verified locally) and the enforce verdict is logged."""
    await run(tmp_path, pki, pki.wrong_name, policy_text("testing"), tls="ifavailable", tls_verify="no")
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"], event["tls_verify"], event["mta_sts"]) == (
        "delivered", "mta-sts-testing", "no", "testing/fetched")
    assert event["mta_sts_testing"].startswith("fail: certificate name does not match mx.example.test")
    assert len(stored(tmp_path)) == 1


@pytest_twisted.ensureDeferred
async def test_testing_mode_plain_text_receiver(tmp_path: Any, pki: Any, events: list) -> None:
    """testing with an unlisted MX and no STARTTLS: still delivered (local tls = ifavailable)."""
    await run(tmp_path, pki, None, policy_text("testing", mx=("other.example.test",)), tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["tls_policy"]) == ("delivered", "none", "mta-sts-testing")
    assert len(stored(tmp_path)) == 1


@pytest_twisted.ensureDeferred
async def test_policy_server_with_untrusted_certificate_is_no_policy(tmp_path: Any, pki: Any, events: list) -> None:
    """A policy server whose certificate does not verify: no policy (sts-webpki-invalid), local rules apply."""
    await run(tmp_path, pki, None, policy_text("enforce"), ca=trustme.CA(), tls="no")
    [event] = deliveries(events)
    assert (event["result"], event["tls_policy"], event["mta_sts"], event["mta_sts_error"]) == (
        "delivered", "local", "failed", mtasts.WEBPKI_INVALID)
    assert len(stored(tmp_path)) == 1


@pytest_twisted.ensureDeferred
async def test_policy_server_certificate_must_name_the_policy_host(tmp_path: Any, pki: Any, events: list) -> None:
    """A trusted certificate for another name than mta-sts.DOMAIN is sts-webpki-invalid too."""
    server = start_policy_server(pki.ca, policy_text("enforce"), name="www.example.test")
    await run(tmp_path, pki, None, "", server=server, tls="no")
    [event] = deliveries(events)
    assert (event["mta_sts"], event["mta_sts_error"]) == ("failed", mtasts.WEBPKI_INVALID)


@pytest_twisted.ensureDeferred
async def test_bad_certificate_with_cached_policy_keeps_the_cached_one(tmp_path: Any, pki: Any, events: list) -> None:
    """A new TXT id whose policy server fails verification: the cached (unexpired) enforce policy applies."""
    import time

    cache = mtasts.STSCache(str(tmp_path / "sender-state" / "mta-sts"))
    cache.write_blocking("example.test", mtasts.CachedPolicy(mtasts.parse_policy(policy_text("enforce"), "old"), time.time()))
    rx, _ = await run(tmp_path, pki, None, policy_text("none"), ca=trustme.CA(), policy_id="new", tls="ifavailable")
    [event] = deliveries(events)
    assert (event["mta_sts"], event["mta_sts_error"], event["tls_policy"]) == ("enforce/cache", mtasts.WEBPKI_INVALID, "mta-sts-enforce")
    assert (event["result"], event["text"][:5]) == ("deferred", "4.7.6")  # the receiver has no STARTTLS
    assert stored(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_policy_fetch_rules(tmp_path: Any, pki: Any, events: list) -> None:
    """Only a 200 text/plain answer is a policy: a redirect is not followed, other types are invalid."""
    server = start_policy_server(pki.ca, policy_text("enforce"))
    server.resource.code, server.resource.location = 302, b"https://mta-sts.example.test/elsewhere"
    fetch = mtasts.PolicyFetcher(
        __import__("twisted.internet.reactor", fromlist=["reactor"]),
        lambda host: __import__("twisted.internet.defer", fromlist=["succeed"]).succeed(["127.0.0.1"]),
        port=lambda: server.port,
        ca_for=lambda domain: pki.ca_pem,
    )
    try:
        try:
            await fetch("example.test")
        except mtasts.STSError as e:
            assert e.result_type == mtasts.FETCH_ERROR and "HTTP 302" in str(e)
        else:
            raise AssertionError("a redirect was followed")
        assert server.resource.requests == [b"/.well-known/mta-sts.txt"]
        server.resource.code, server.resource.location = 200, None
        server.resource.content_type = b"text/html"
        try:
            await fetch("example.test")
        except mtasts.STSError as e:
            assert e.result_type == mtasts.POLICY_INVALID and "text/html" in str(e)
        else:
            raise AssertionError("text/html was accepted")
        server.resource.content_type = b"text/plain; charset=utf-8"
        server.resource.body = b"x" * (mtasts.MAX_POLICY_SIZE + 1)
        try:
            await fetch("example.test")
        except mtasts.STSError as e:
            assert "larger than" in str(e)
        else:
            raise AssertionError("an oversized policy was accepted")
        server.resource.body = policy_text("testing").encode()
        assert mtasts.parse_policy(await fetch("example.test")).mode == "testing"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_opt_out(tmp_path: Any, pki: Any, events: list) -> None:
    """mta_sts = false for the domain: the policy is not even fetched."""
    _, server = await run(tmp_path, pki, None, policy_text("enforce"), tls="no", domains={"example.test": {"mta_sts": False}})
    [event] = deliveries(events)
    assert event["result"] == "delivered" and event["tls_policy"] == "local" and "mta_sts" not in event
    assert server.resource.requests == []


@pytest_twisted.ensureDeferred
async def test_enforce_skips_unlisted_mx_for_a_listed_one(tmp_path: Any, pki: Any, events: list) -> None:
    """enforce: of two MX hosts only the listed one is used (the first is skipped without a connection)."""
    from conftest import Pair

    leaf = pki.ca.issue_cert("mx2.example.test")
    cert, key = tmp_path / "mx2.pem", tmp_path / "mx2.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    dns = sts_dns()
    dns["mx"] = {"example.test": ["mx1.example.test", "mx2.example.test"]}
    dns["hosts"].update({"mx1.example.test": ["127.0.0.1"], "mx2.example.test": ["127.0.0.1"]})
    server = start_policy_server(pki.ca, policy_text("enforce", mx=("mx2.example.test",)))
    rx = await start_receiver(tmp_path, Pair(str(cert), str(key)))
    sender = await start_sender(tmp_path, rx.port, pki.ca_pem, dns=dns, mta_sts_https_port=server.port)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
        await server.stop()
    [event] = deliveries(events)
    assert (event["result"], event["mx"], event["verified"], event["tls_policy"]) == ("delivered", "mx2.example.test", "yes", "mta-sts-enforce")
    assert rx.service.listeners["receiver"].inbound.connections_total == 1
