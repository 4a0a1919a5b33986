"""Outbound delivery over loopback: every tls × tls_verify × certificate outcome, fallbacks, hooks."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from e2e import eventually, maildir_messages
from outbound_lab import (
    DOMAIN,
    MX,
    deliver_once,
    deliver_to_scripted,
    deliveries,
    start_receiver,
    start_scripted,
    start_sender,
    submit_and_settle,
)
from twisted.internet import reactor

BAD = ("expired", "untrusted", "self_signed")


def expected(cert: str, verify: str) -> tuple[str, str, str]:
    """(result, verified, reason fragment) the tls_verify semantics prescribe."""
    if verify == "no":
        return "delivered", "no", ""
    if cert == "good":
        return "delivered", "yes", ""
    if cert == "wrong_name":
        if verify == "ca":
            return "delivered", "yes", ""
        if verify == "host":
            return "deferred", "no", f"4.7.5 certificate name does not match {DOMAIN} or {MX}"
        return "delivered", "softfail", "certificate name does not match"
    reason = "certificate verification failed: certificate has expired" if cert == "expired" else "certificate not signed by a trusted CA"
    if verify == "optional":
        return "delivered", "softfail", reason
    return "deferred", "no", reason


MATRIX = [
    (cert, verify, tls)
    for cert in ("good", "expired", "wrong_name", "untrusted", "self_signed")
    for verify in ("no", "ca", "host", "optional")
    for tls in ("ifavailable", "required")
]


@pytest.mark.parametrize("cert, verify, tls", MATRIX)
@pytest_twisted.ensureDeferred
async def test_tls_verify_matrix(tmp_path: Any, pki: Any, events: list, cert: str, verify: str, tls: str) -> None:
    """Each certificate × tls_verify × tls: delivered, deferred 4.7.5, or delivered with a soft-fail logged.

    A certificate that fails ca/host is never retried in plain text, even with ifavailable.
    """
    receiver = await deliver_once(tmp_path, getattr(pki, cert), pki.ca_pem, tls=tls, tls_verify=verify)
    result, verified, reason = expected(cert, verify)
    [event] = deliveries(events)
    assert (event["result"], event["verified"], event["tls_verify"]) == (result, verified, verify)
    assert reason in f"{event['code']} {event['text']} {event['reason']}"
    stored = maildir_messages(str(tmp_path / "receiver-maildir"))
    if result == "delivered":
        assert event["tls"] == "tls" and event["protocol"] == "TLSv1.3"
        assert len(stored) == 1
        assert "trustme" in event["issuer"] or cert == "self_signed"
    else:
        assert (event["code"], event["text"][:5]) == (451, "4.7.5")
        assert stored == []  # and no plain-text retry happened
        assert receiver.service.listeners["receiver"].inbound.connections_total == 1


def leaf_of(pair: Any) -> Any:
    from cryptography import x509

    with open(pair.cert, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0]


@pytest.mark.parametrize(
    "cert, verify, result",
    [("wrong_name", "host", "deferred"), ("untrusted", "ca", "deferred"), ("expired", "host", "deferred"),
     ("good", "host", "delivered"), ("good", "no", "delivered")],
)
@pytest_twisted.ensureDeferred
async def test_presented_certificate_is_logged_whatever_the_verdict(
    tmp_path: Any, pki: Any, events: list, cert: str, verify: str, result: str
) -> None:
    """Every TLS attempt's delivery line names the certificate the server presented (subject, SANs, issuer,
    SPKI and certificate SHA-256), also when verification aborted the handshake (was subject=- issuer=-)."""
    from cryptography.hazmat.primitives import hashes

    from tlsmta.tls import spki_sha256

    pair = getattr(pki, cert)
    await deliver_once(tmp_path, pair, pki.ca_pem, tls="required", tls_verify=verify)
    [event] = deliveries(events)
    leaf = leaf_of(pair)
    assert event["result"] == result
    assert event["subject"] == leaf.subject.rfc4514_string() and event["issuer"] == leaf.issuer.rfc4514_string()
    assert event["sans"] == ("other.example.net" if cert == "wrong_name" else "localhost, mx.example.test, IP:127.0.0.1")
    assert event["spki_sha256"] == spki_sha256(leaf) and len(event["spki_sha256"]) == 64
    assert event["cert_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("cert, result", [("good", "delivered"), ("wrong_name", "deferred")])
@pytest_twisted.ensureDeferred
async def test_host_check_on_an_ip_literal_next_hop(tmp_path: Any, pki: Any, events: list, cert: str, result: str) -> None:
    """route smtp:127.0.0.1 with tls_verify = host: the certificate's IP address SAN decides (pki.good lists
    127.0.0.1, pki.wrong_name does not), and no SNI is sent for an IP literal (RFC 6066 3)."""
    await deliver_once(tmp_path, getattr(pki, cert), pki.ca_pem, route="smtp:127.0.0.1", tls="required", tls_verify="host")
    [event] = deliveries(events)
    assert (event["result"], event["mx"]) == (result, "127.0.0.1")
    if result == "delivered":
        assert event["verified"] == "yes" and event["sni"] is None
    else:
        assert f"{event['code']} {event['text']}" == f"451 4.7.5 certificate name does not match {DOMAIN} or 127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_host_name_matched_via_recipient_domain(tmp_path: Any, pki: Any, events: list) -> None:
    """host: a certificate naming the recipient domain (not the MX) verifies."""
    # pki.wrong_name names other.example.net, not the MX
    await deliver_once(tmp_path, pki.wrong_name, pki.ca_pem, rcpts=("user@other.example.net",), tls="required", tls_verify="host")
    [event] = deliveries(events)
    assert (event["result"], event["verified"]) == ("delivered", "yes")


@pytest.mark.parametrize("tls, result", [("ifavailable", "delivered"), ("required", "deferred")])
@pytest_twisted.ensureDeferred
async def test_server_without_starttls(tmp_path: Any, pki: Any, events: list, tls: str, result: str) -> None:
    """No STARTTLS: ifavailable delivers in plain text; required defers 4.7.6."""
    await deliver_once(tmp_path, None, pki.ca_pem, tls=tls, tls_verify="host")
    [event] = deliveries(events)
    assert event["result"] == result and event["tls"] == "none"
    if result == "deferred":
        assert f"{event['code']} {event['text']}" == "451 4.7.6 STARTTLS required but not advertised"


@pytest.mark.parametrize(
    "tls, fallback, result, text",
    [
        ("ifavailable", True, "delivered", "2.0.0 stored"),
        ("ifavailable", False, "deferred", "4.7.5 TLS negotiation failed"),
        ("required", True, "deferred", "4.7.5 TLS negotiation failed"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_broken_handshake(tmp_path: Any, pki: Any, events: list, tls: str, fallback: bool, result: str, text: str) -> None:
    """A handshake that fails for non-certificate reasons: fallback reconnects once in plain text; otherwise 4.7.5."""
    factory = await deliver_to_scripted(tmp_path, "broken", pki.ca_pem, tls=tls, tls_verify="optional", tls_ifavailable_fallback=fallback)
    [event] = deliveries(events)
    assert event["result"] == result, {k: event.get(k) for k in ("code", "text", "tls", "reason")}
    assert text in event["text"]
    if result == "delivered":
        assert factory.starttls == 1 and factory.connections == 2  # one failed handshake, one plain session
        assert event["tls"] == "none" and len(factory.messages) == 1
    else:
        assert factory.connections == 1 and factory.messages == []  # no loop, no plain text


@pytest.mark.parametrize(
    "tls, fallback, result",
    [("ifavailable", True, "delivered"), ("ifavailable", False, "deferred"), ("required", True, "deferred")],
)
@pytest_twisted.ensureDeferred
async def test_454_to_starttls(tmp_path: Any, pki: Any, events: list, tls: str, fallback: bool, result: str) -> None:
    """454 to STARTTLS: with ifavailable + fallback carry on in plain text on the same connection (stock Twisted quits)."""
    factory = await deliver_to_scripted(tmp_path, "454", pki.ca_pem, tls=tls, tls_ifavailable_fallback=fallback)
    [event] = deliveries(events)
    assert event["result"] == result
    if result == "delivered":
        assert factory.connections == 1 and len(factory.messages) == 1
    else:
        assert "4.7.5 TLS negotiation failed: STARTTLS refused: 454" in event["text"]


@pytest.mark.parametrize("code", ["502", "530", "354", "250", "221"])
@pytest_twisted.ensureDeferred
async def test_only_454_to_starttls_allows_plain_text(tmp_path: Any, pki: Any, events: list, code: str) -> None:
    """A server that advertises STARTTLS and answers it with anything but 454 gets no mail in plain text,
    even under ifavailable with fallback: the delivery defers 4.7.5 (DESIGN.md, Outbound)."""
    factory = await deliver_to_scripted(tmp_path, f"refuse-{code}", pki.ca_pem, tls="ifavailable", tls_ifavailable_fallback=True)
    [event] = deliveries(events)
    assert event["result"] == "deferred"
    assert f"4.7.5 TLS negotiation failed: STARTTLS refused: {code} not now" in event["text"]
    assert factory.messages == [] and not any(c.upper().startswith(b"MAIL") for c in factory.commands)


@pytest_twisted.ensureDeferred
async def test_454_fallback_says_why_in_the_delivery_line(tmp_path: Any, pki: Any, events: list) -> None:
    """The plain-text delivery after a 454 carries tls_fallback=starttls-refused:454."""
    await deliver_to_scripted(tmp_path, "454", pki.ca_pem, tls="ifavailable")
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["tls_fallback"]) == ("delivered", "none", "starttls-refused:454")


@pytest_twisted.ensureDeferred
async def test_handshake_fallback_says_why_in_the_delivery_line(tmp_path: Any, pki: Any, events: list) -> None:
    """The plain-text retry after a broken handshake carries tls_fallback=handshake-failed:<reason>."""
    await deliver_to_scripted(tmp_path, "broken", pki.ca_pem, tls="ifavailable", tls_verify="optional")
    [event] = deliveries(events)
    assert event["result"] == "delivered" and event["tls_fallback"].startswith("handshake-failed:")


@pytest_twisted.ensureDeferred
async def test_not_offered_says_why_in_the_delivery_line(tmp_path: Any, pki: Any, events: list) -> None:
    """ifavailable to a server without STARTTLS: tls_fallback=not-offered; tls = no has no tls_fallback."""
    await deliver_to_scripted(tmp_path, "none", pki.ca_pem, tls="ifavailable")
    await deliver_to_scripted(tmp_path, "none", pki.ca_pem, tls="no")
    first, second = deliveries(events)
    assert first["tls_fallback"] == "not-offered" and "tls_fallback" not in second


@pytest_twisted.ensureDeferred
async def test_no_plain_text_after_a_completed_handshake(tmp_path: Any, pki: Any, events: list) -> None:
    """A verified handshake, then the server closes at the EHLO inside TLS: deferred 4.7.5, no second,
    plain-text connection (the server can do TLS; a retry without it would be a downgrade)."""
    from tlsmta.tls import ServerTLS, server_context

    server_tls = ServerTLS(server_context(pki.good.cert, pki.good.key, frozenset({"TLSv1.2", "TLSv1.3"})))
    factory = await deliver_to_scripted(tmp_path, "tls-then-close", pki.ca_pem, server_tls, tls="ifavailable", tls_verify="host")
    [event] = deliveries(events)
    assert event["result"] == "deferred" and "4.7.5 TLS session failed after the handshake" in event["text"]
    assert factory.connections == 1 and factory.messages == []


@pytest_twisted.ensureDeferred
async def test_starttls_reply_injection_is_discarded(tmp_path: Any, pki: Any, events: list) -> None:
    """A server that pipelines a reply after its 220 does not get it read as the answer inside TLS."""
    factory = await deliver_to_scripted(tmp_path, "inject", pki.ca_pem, tls="required", tls_verify="no")
    [event] = deliveries(events)
    # The client went on to the handshake (a ClientHello arrived) instead of taking
    # "250 injected" as an answer; the scripted server cannot do TLS, so 4.7.5.
    assert factory.raw and factory.raw[0][:1] == b"\x16"
    assert event["result"] == "deferred" and "4.7.5 TLS negotiation failed" in event["text"]
    assert factory.messages == []


@pytest_twisted.ensureDeferred
async def test_outbound_verify_hook_decides(tmp_path: Any, pki: Any, events: list) -> None:
    """outbound_tls_verify_callback accepting an untrusted chain makes ca succeed; it is told the MX and domain."""
    import verify_hooks

    verify_hooks.calls.clear()
    await deliver_once(tmp_path, pki.untrusted, pki.ca_pem, tls="required", tls_verify="ca", hooks={"outbound_tls_verify_callback": "verify_hooks:record_and_accept"})
    [event] = deliveries(events)
    assert event["result"] == "delivered" and event["verified"] == "yes"
    ctx = verify_hooks.calls[0][3]
    assert (ctx.direction, ctx.domain, ctx.mx_host) == ("outbound", DOMAIN, MX)
    assert ctx.message_id == event["msgid"]  # the message this connection carries


@pytest_twisted.ensureDeferred
async def test_verify_hook_not_called_when_verify_is_no(tmp_path: Any, pki: Any, events: list) -> None:
    """With tls_verify = no the outbound verify hook is not called."""
    import verify_hooks

    verify_hooks.calls.clear()
    await deliver_once(tmp_path, pki.untrusted, pki.ca_pem, tls="required", tls_verify="no", hooks={"outbound_tls_verify_callback": "verify_hooks:reject"})
    assert deliveries(events)[0]["result"] == "delivered"
    assert verify_hooks.calls == []


@pytest_twisted.ensureDeferred
async def test_domain_scope_overrides_global(tmp_path: Any, pki: Any, events: list) -> None:
    """[domain."example.test"] tls_verify = host beats global optional: a wrong name is deferred, not soft-failed."""
    await deliver_once(
        tmp_path, pki.wrong_name, pki.ca_pem, domains={DOMAIN: {"tls_verify": "host"}}, tls="ifavailable", tls_verify="optional"
    )
    [event] = deliveries(events)
    assert (event["result"], event["tls_verify"]) == ("deferred", "host")


@pytest_twisted.ensureDeferred
async def test_connection_reuse(tmp_path: Any, pki: Any, events: list) -> None:
    """Messages queued together for one destination share sessions (max_connections=2 → at most 2 connections)."""
    from e2e import in_thread, send_smtplib
    from twisted.internet.defer import gatherResults

    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(
        tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host", max_connections=2,
        smtp_port=receiver.port,
    )
    try:
        sender.service.queue.stop()  # hold delivery while the batch arrives
        await gatherResults([in_thread(send_smtplib, sender.port, rcpts=(f"u{i}@{DOMAIN}",)) for i in range(12)])
        sender.service.queue._running = True
        sender.service.queue.flush()
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
        await receiver.stop()
    assert [e["result"] for e in deliveries(events)] == ["delivered"] * 12
    assert receiver.service.listeners["receiver"].inbound.connections_total <= 2
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 12


@pytest_twisted.ensureDeferred
async def test_no_connection_without_a_message(tmp_path: Any, pki: Any, events: list) -> None:
    """A session claims its first message before it connects: with one message per connection,
    the receiver sees exactly one connection per message, never one that finds the queue drained."""
    from e2e import in_thread, send_smtplib
    from twisted.internet.defer import gatherResults

    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(
        tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host", max_connections=4,
        max_messages_per_connection=1, smtp_port=receiver.port,
    )
    try:
        for wave in range(4):  # messages arrive while sessions are running
            await gatherResults([in_thread(send_smtplib, sender.port, rcpts=(f"u{wave}-{i}@{DOMAIN}",)) for i in range(10)])
        await eventually(lambda: len(deliveries(events)) == 40, timeout=60)
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
        await receiver.stop()
    assert [e["result"] for e in deliveries(events)] == ["delivered"] * 40
    assert receiver.service.listeners["receiver"].inbound.connections_total == 40


@pytest_twisted.ensureDeferred
async def test_non_ascii_size_limit_is_ignored(tmp_path: Any, pki: Any, events: list) -> None:
    """A SIZE keyword with a non-ASCII "number" (a hostile or broken server) is no limit;
    it used to raise inside the transaction and leave the message in flight for ever."""
    factory = await deliver_to_scripted(tmp_path, "odd-size", pki.ca_pem, tls="no")
    [event] = deliveries(events)
    assert event["result"] == "delivered" and len(factory.messages) == 1


@pytest_twisted.ensureDeferred
async def test_a_failing_transaction_defers_its_message_and_closes(tmp_path: Any, pki: Any, events: list, monkeypatch: Any) -> None:
    """Whatever goes wrong inside a transaction, the message is settled (deferred 451 4.3.0,
    retried later), not left in flight, and the connection is closed."""
    from tlsmta.delivery._pool import OutboundPool

    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in the middle of a transaction")

    monkeypatch.setattr(OutboundPool, "transaction", broken)
    factory, port = await start_scripted("none")
    sender = await start_sender(tmp_path, port.getHost().port, pki.ca_pem, tls="no")
    try:
        await submit_and_settle(sender)
        queue = sender.service.queue
        assert queue.in_flight == set() and len(queue.messages) == 1
        await eventually(lambda: not sender.service.pool.connections, timeout=10)
    finally:
        await sender.stop()
        await port.stopListening()
    [event] = deliveries(events)
    assert event["result"] == "deferred" and "4.3.0" in event["text"]


@pytest_twisted.ensureDeferred
async def test_several_recipients_one_transaction(tmp_path: Any, pki: Any, events: list) -> None:
    """Recipients of one domain go in one transaction: one stored copy with both Delivered-To."""
    await deliver_once(tmp_path, pki.good, pki.ca_pem, tls="required", tls_verify="host", rcpts=(f"a@{DOMAIN}", f"b@{DOMAIN}"))
    [msg] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert msg.get_all("Delivered-To") == [f"a@{DOMAIN}", f"b@{DOMAIN}"]
    assert [(e["to"], e["result"]) for e in deliveries(events)] == [(f"<a@{DOMAIN}>", "delivered"), (f"<b@{DOMAIN}>", "delivered")]


BODY_LINES = [".", "..", ".x", "", "a.", ". leading", "x" * 900]


@pytest_twisted.ensureDeferred
async def test_dot_stuffing_round_trip(tmp_path: Any, pki: Any) -> None:
    """Lines starting with dots, at the start and across 256 KiB chunk boundaries, arrive unchanged (one message)."""
    lines = [".first line is a dot"] + BODY_LINES * 600  # about 600 KB: several chunks
    body = "Subject: dots\r\n\r\n" + "\r\n".join(lines) + "\r\n"
    await deliver_once(tmp_path, pki.good, pki.ca_pem, body=body, tls="required", tls_verify="host")
    [msg] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert msg.get_payload() == "\n".join(lines) + "\n"


@pytest_twisted.ensureDeferred
async def test_rejected_recipient_bounces_with_dsn(tmp_path: Any, pki: Any, events: list) -> None:
    """A 5xx to RCPT bounces: an RFC 3464 DSN goes to the sender (routed here to a Maildir)."""
    receiver = await start_receiver(tmp_path, pki.good, relay_networks=[], local_domains=["elsewhere.test"])
    sender = await start_sender(
        tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host",
        domains={"client.test": {"route": f"maildir:{tmp_path / 'bounces'}"}},
    )
    try:
        await submit_and_settle(sender)
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
        await receiver.stop()
    assert deliveries(events)[0]["result"] == "bounced"
    [dsn] = maildir_messages(str(tmp_path / "bounces"))
    assert dsn["Return-Path"] == "<>"
    assert dsn.get_content_type() == "multipart/report"
    status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0]
    text = status.as_string()
    assert f"Final-Recipient: rfc822; user@{DOMAIN}" in text and "Status: 5.7.1" in text
    assert sender.service.queue.messages == {}


@pytest_twisted.ensureDeferred
async def test_null_mx_and_nxdomain_bounce(tmp_path: Any, pki: Any, events: list) -> None:
    """RFC 7505 null MX bounces 5.1.10; a domain that does not exist bounces 5.1.2."""
    import attrs
    from outbound_lab import sender_config

    from tlsmta.testing import RunningRelay

    config = sender_config(tmp_path, 25, pki.ca_pem)
    config = attrs.evolve(config, dns={**config.dns, "mx": {**config.dns["mx"], "nullmx.test": (".",)}})
    sender = await RunningRelay(config).start()
    try:
        await submit_and_settle(sender, rcpts=("a@nullmx.test", "b@nowhere.test"), sender="")  # a bounce itself
    finally:
        await sender.stop()
    by_domain = {e["domain"]: e for e in deliveries(events)}
    assert by_domain["nullmx.test"]["text"].startswith("5.1.10")
    assert by_domain["nowhere.test"]["text"].startswith("5.1.2")
    assert {e["result"] for e in by_domain.values()} == {"bounced"}
    assert not any(e["tlsmta_event"] == "bounce" for e in events)  # null sender: no DSN


@pytest_twisted.ensureDeferred
async def test_full_spool_disk_gives_452_and_recovers(tmp_path: Any, pki: Any, small_tmpfs: Any) -> None:
    """A spool on a full disk answers 452 4.3.1, keeps nothing half-written, and takes mail again once there is room."""
    import os
    import smtplib

    import attrs
    from e2e import in_thread, send_smtplib
    from outbound_lab import sender_config

    from tlsmta.testing import RunningRelay

    config = sender_config(tmp_path, 25, pki.ca_pem)
    # min_free 0: no reserve on this 512 KiB disk, or the message sent once there is room is refused too
    config = attrs.evolve(config, spool={**config.spool, "path": str(small_tmpfs / "spool"), "min_free": 0})
    relay = await RunningRelay(config).start()
    relay.service.queue.stop()  # keep what is accepted in the spool
    filler = small_tmpfs / "filler"
    try:
        filler.write_bytes(b"x" * (512 * 1024 - 64 * 1024))  # leave ~64 KiB
        # smtplib declares SIZE=, so the refusal comes at MAIL, as Postfix's (the end of DATA: test_disk_full.py)
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            await in_thread(send_smtplib, relay.port, body="Subject: big\r\n\r\n" + ("y" * 998 + "\r\n") * 200)
        assert e.value.smtp_code == 452 and b"4.3.1" in e.value.smtp_error
        spool = small_tmpfs / "spool"
        assert os.listdir(spool / "q") == []
        from e2e import eventually

        await eventually(lambda: os.listdir(spool / "tmp") == [])
        filler.unlink()
        await in_thread(send_smtplib, relay.port)  # room again: accepted
        assert len([n for n in os.listdir(spool / "q") if n.endswith(".msg")]) == 1
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_tls_parameters_hook_overrides_per_message(tmp_path: Any, pki: Any, events: list) -> None:
    """outbound_tls_parameters may relax tls_verify for one message: an untrusted certificate is then delivered."""
    import verify_hooks

    verify_hooks.calls.clear()
    await deliver_once(tmp_path, pki.untrusted, pki.ca_pem, tls="required", tls_verify="host", hooks={"outbound_tls_parameters": "verify_hooks:tls_parameters_relaxed"})
    [event] = deliveries(events)
    assert (event["result"], event["tls_verify"]) == ("delivered", "no")
    assert verify_hooks.calls[0][3][1:] == (DOMAIN, "default")


@pytest.mark.parametrize("selector", ["rule", "hook"])
@pytest_twisted.ensureDeferred
async def test_binding_source_address_and_ehlo_name(tmp_path: Any, pki: Any, events: list, selector: str) -> None:
    """A binding chosen by [[binding_rule]] or the outbound_binding hook sets the source address and EHLO name."""
    import attrs

    from tlsmta.config._loader import BindingRule, ScopeTable

    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host")
    await sender.stop()
    config = sender.service.config
    config = attrs.evolve(
        config,
        bindings={"out1": ScopeTable(options={"source_address": "127.0.0.2", "ehlo_hostname": "out1.sender.test"})},
        binding_rules=(BindingRule("out1", recipient_domain=frozenset({DOMAIN})),) if selector == "rule" else (),
        hooks={"outbound_binding": "verify_hooks:binding_out1"} if selector == "hook" else {},
    )
    from tlsmta.testing import RunningRelay

    sender = await RunningRelay(config).start()
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await receiver.stop()
    [event] = deliveries(events)
    assert (event["result"], event["binding"]) == ("delivered", "out1")
    [msg] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert msg["Received"].startswith("from out1.sender.test ([127.0.0.2])")


@pytest_twisted.ensureDeferred
async def test_next_mx_when_the_first_is_down(tmp_path: Any, pki: Any, events: list) -> None:
    """MX hosts are tried in preference order: the first refuses connections, the second takes the mail."""
    import attrs
    from outbound_lab import sender_config

    from tlsmta.testing import RunningRelay

    receiver = await start_receiver(tmp_path, pki.good)
    config = sender_config(tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host")
    dns = {"mx": {DOMAIN: ("down.example.test", MX)}, "hosts": {"down.example.test": ("127.0.0.3",), MX: ("127.0.0.1",)}}
    sender = await RunningRelay(attrs.evolve(config, dns=dns)).start()
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await receiver.stop()
    [event] = deliveries(events)
    assert (event["result"], event["mx"]) == ("delivered", MX)


@pytest_twisted.ensureDeferred
async def test_tls_session_resumed_with_its_verdict(tmp_path: Any, pki: Any, events: list) -> None:
    """A second session to the same MX resumes the first TLS session and keeps its host verdict."""
    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host",
                                connection_cache_time=0)  # the second message on a connection of its own
    try:
        await submit_and_settle(sender)
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await receiver.stop()
    first, second = deliveries(events)
    assert (first["resumed"], first["verified"]) == ("no", "yes")
    assert (second["resumed"], second["verified"], second["result"]) == ("yes", "yes", "delivered")
    assert second["subject"] is None or second["subject"] == first["subject"]


@pytest_twisted.ensureDeferred
async def test_tls_session_not_shared_across_policies(tmp_path: Any, pki: Any, events: list) -> None:
    """A session made under tls_verify = no is never resumed for a domain that needs host: that one still fails."""
    receiver = await start_receiver(tmp_path, pki.untrusted)
    sender = await start_sender(
        tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="no",
        domains={"other.example.net": {"tls_verify": "host"}},
    )
    try:
        await submit_and_settle(sender)
        await submit_and_settle(sender, rcpts=("user@other.example.net",))
    finally:
        await sender.stop()
        await receiver.stop()
    relaxed, strict = deliveries(events)
    assert relaxed["result"] == "delivered"
    assert (strict["result"], strict["resumed"]) == ("deferred", "no")
    assert "certificate not signed by a trusted CA" in strict["text"]


@pytest.mark.parametrize("ciphers", [None, "HIGH", "ALL:@SECLEVEL=0"])
@pytest_twisted.ensureDeferred
async def test_anonymous_tls_mitm_never_inherits_a_cached_verdict(tmp_path: Any, pki: Any, events: list, ciphers: str | None) -> None:
    """After a verified delivery caches a session, an attacker on the same address offering an
    anonymous (no certificate) handshake gets nothing: it is not a resumption, whatever tls_ciphers says."""
    from outbound_lab import AnonymousMitm, ScriptedFactory
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    receiver = await start_receiver(tmp_path, pki.good)
    port = receiver.port
    extra = {"tls_ciphers": ciphers} if ciphers else {}
    sender = await start_sender(tmp_path, port, pki.ca_pem, tls="required", tls_verify="host", **extra)
    mitm = ScriptedFactory("mitm")
    mitm.protocol = AnonymousMitm
    listening = None
    try:
        await submit_and_settle(sender)  # the genuine MX: verified, session cached
        await receiver.stop()
        listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(mitm)
        await submit_and_settle(sender, body="Subject: secret\r\n\r\nconfidential\r\n")
    finally:
        await sender.stop()
        if listening is not None:
            await listening.stopListening()
    genuine, attacked = deliveries(events)
    assert genuine["result"] == "delivered"
    assert attacked["result"] == "deferred" and attacked["resumed"] == "no"
    assert mitm.messages == []


@pytest.mark.parametrize("variant", ["local_domain_left_at_mx", "attacker_mx_to_loopback"])
@pytest_twisted.ensureDeferred
async def test_mx_pointing_back_at_us_bounces_instead_of_looping(tmp_path: Any, events: list, variant: str) -> None:
    """An MX that is our own listener (a misrouted local domain, or an attacker's MX of 127.0.0.1)
    bounces 5.4.6 "loops back to myself" after one acceptance, instead of circulating."""
    from e2e import in_thread, send_smtplib
    from postfix_lab import free_port

    from tlsmta.testing import RunningRelay, build_config, dev_listener

    port = free_port()
    domain = "loop.test" if variant == "local_domain_left_at_mx" else "evil.test"
    if variant == "local_domain_left_at_mx":
        listener = dev_listener(endpoint=f"tcp:{port}:interface=127.0.0.1", local_domains=[domain], relay_networks=[])
    else:
        listener = dev_listener(endpoint=f"tcp:{port}:interface=127.0.0.1")
    raw = {
        "global": {"hostname": "mx.ours.test", "state_dir": str(tmp_path / "state"), "smtp_port": port},
        "spool": {"path": str(tmp_path / "spool")},
        "dns": {"mx": {domain: [f"mx.{domain}"]}, "hosts": {f"mx.{domain}": ["127.0.0.1"]}},
        "listener": [listener],
    }
    relay = await RunningRelay(build_config(raw)).start()
    try:
        await in_thread(send_smtplib, port, sender="", rcpts=(f"user@{domain}",))
        await relay.service.queue.wait_idle()
    finally:
        await relay.stop()
    accepted = [e for e in events if e["tlsmta_event"] == "received" and e["code"] == 250]
    [delivery] = deliveries(events)
    assert len(accepted) == 1
    assert delivery["result"] == "bounced" and delivery["text"] == f"5.4.6 mail for {domain} loops back to myself"


@pytest.mark.parametrize("our_rank", [1, 2])
@pytest_twisted.ensureDeferred
async def test_backup_mx_never_hands_mail_to_a_less_preferred_mx(tmp_path: Any, events: list, our_rank: int) -> None:
    """RFC 5321 5.1: when we are one of a domain's MXes (pinned mx1, mx2, mx3 = preference 10, 20, 30),
    every MX at our preference or worse is dropped, not only our own address: a backup never
    hands mail to a fellow backup (they could ping-pong it).  We are mx2: only mx1 may be tried
    (it refuses connections, so the message is deferred and mx3 gets nothing).  We are mx1:
    nothing is left, 5.4.6 "loops back to myself", and mx2 gets nothing."""
    from e2e import in_thread, send_smtplib
    from outbound_lab import ScriptedFactory
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tlsmta.testing import RunningRelay, build_config, dev_listener

    backup = ScriptedFactory("none")  # a plain SMTP server that takes any message
    backup_ip = "127.0.0.3"
    listening = await TCP4ServerEndpoint(reactor, 0, interface=backup_ip).listen(backup)
    port = listening.getHost().port  # every MX listens on the same smtp_port, each on its own address
    domain = "backups.test"
    ips = {1: "127.0.0.2", 2: "127.0.0.2", 3: "127.0.0.2"}  # 127.0.0.2: nothing listens (refused)
    ips[our_rank] = "127.0.0.1"
    ips[our_rank + 1] = backup_ip
    raw = {
        "global": {"hostname": "mx.ours.test", "state_dir": str(tmp_path / "state"), "smtp_port": port},
        "spool": {"path": str(tmp_path / "spool")},
        "queue": {"retry_schedule": [3600]},
        "dns": {
            "mx": {domain: [f"mx1.{domain}", f"mx2.{domain}", f"mx3.{domain}"]},
            "hosts": {f"mx{n}.{domain}": [ip] for n, ip in ips.items()},
        },
        "listener": [dev_listener(endpoint=f"tcp:{port}:interface=127.0.0.1")],
    }
    try:
        relay = await RunningRelay(build_config(raw)).start()
        try:
            await in_thread(send_smtplib, port, sender="", rcpts=(f"user@{domain}",))
            await relay.service.queue.wait_idle()
        finally:
            await relay.stop()
    finally:
        await listening.stopListening()
    [delivery] = deliveries(events)
    assert backup.connections == 0 and backup.messages == []
    if our_rank == 2:
        assert delivery["result"] == "deferred" and delivery["mx"] == f"mx1.{domain}", delivery
    else:
        assert delivery["result"] == "bounced" and delivery["text"] == f"5.4.6 mail for {domain} loops back to myself"


@pytest_twisted.ensureDeferred
async def test_too_many_hops_refused(tmp_path: Any) -> None:
    """A message that already carries more than max_hops Received: headers is refused 554 5.4.6."""
    import smtplib

    from e2e import in_thread, send_smtplib, start_relay

    relay = await start_relay(tmp_path, max_hops=5)
    headers = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; Wed, 25 Nov 2026 18:00:00 +0000\r\n" for i in range(6))
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            await in_thread(send_smtplib, relay.port, body=headers + "Subject: loop\r\n\r\nhi\r\n")
        ok = await in_thread(send_smtplib, relay.port, body=headers[: headers.index("Received", 10)] * 5 + "Subject: ok\r\n\r\nhi\r\n")
    finally:
        await relay.stop()
    assert e.value.smtp_code == 554 and b"5.4.6" in e.value.smtp_error
    assert ok == {}


@pytest.mark.parametrize("hook", ["tls_parameters_bad_value", "tls_parameters_raises"])
@pytest_twisted.ensureDeferred
async def test_bad_tls_parameters_hook_defers(tmp_path: Any, pki: Any, events: list, hook: str) -> None:
    """An outbound_tls_parameters hook that raises or returns an invalid value defers the message
    (it is never sent with guessed, possibly weaker, settings)."""
    receiver = await start_receiver(tmp_path, None)  # no STARTTLS at all
    sender = await start_sender(
        tmp_path, receiver.port, pki.ca_pem, tls="ifavailable", hooks={"outbound_tls_parameters": f"verify_hooks:{hook}"},
    )
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await receiver.stop()
    [event] = deliveries(events)
    assert event["result"] == "deferred" and event["text"].startswith("4.3.0 outbound_tls_parameters hook")
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest_twisted.ensureDeferred
async def test_idle_destinations_are_forgotten(tmp_path: Any, pki: Any, events: list) -> None:
    """Once a destination has no jobs and no sessions, the pool no longer keeps it."""
    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host",
                                connection_cache_time=0)
    try:
        await submit_and_settle(sender)
        destinations = dict(sender.service.pool.destinations)
    finally:
        await sender.stop()
        await receiver.stop()
    assert deliveries(events)[0]["result"] == "delivered"
    assert destinations == {}


@pytest_twisted.ensureDeferred
async def test_stalled_handshake_times_out_while_others_are_delivered(tmp_path: Any, pki: Any, events: list, monkeypatch: Any) -> None:
    """An MX that says 220 to STARTTLS and then stalls is given up after STARTTLS_TIMEOUT (4.7.5 / 4.4.2),
    while mail for another destination is delivered in the meantime."""
    import tlsmta.delivery._client

    # The timeout covers every session's handshake + EHLO, the good receiver's too: with 1 s, a
    # loaded machine pausing this process for a second would defer the good delivery as well.
    monkeypatch.setattr(tlsmta.delivery._client, "STARTTLS_TIMEOUT", 5)
    stalling, stall_port = await start_scripted("stall")
    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(
        tmp_path, stall_port.getHost().port, pki.ca_pem, tls="required", tls_verify="host",
        domains={"other.example.net": {"smtp_port": receiver.port}},
    )
    try:
        from e2e import in_thread, send_smtplib

        await in_thread(send_smtplib, sender.port, rcpts=(f"user@{DOMAIN}",))
        await in_thread(send_smtplib, sender.port, rcpts=("user@other.example.net",))
        await sender.service.queue.wait_idle()
    finally:
        await sender.stop()
        await receiver.stop()
        await stall_port.stopListening()
    by_domain = {e["domain"]: e for e in deliveries(events)}
    assert by_domain["other.example.net"]["result"] == "delivered"
    stalled = by_domain[DOMAIN]
    assert stalled["result"] == "deferred" and "timeout" in stalled["text"]
    assert stalling.raw  # it did get our ClientHello


@pytest_twisted.ensureDeferred
async def test_reset_during_data_defers_and_keeps_the_message(tmp_path: Any, pki: Any, events: list) -> None:
    """A peer that resets the connection in the middle of DATA: deferred 4.4.2, the message stays queued."""
    factory, port = await start_scripted("reset")
    sender = await start_sender(tmp_path, port.getHost().port, pki.ca_pem, tls="no")
    try:
        await submit_and_settle(sender)
        queued = list(sender.service.queue.messages.values())
    finally:
        await sender.stop()
        await port.stopListening()
    [event] = deliveries(events)
    assert event["result"] == "deferred" and event["text"].startswith("4.4.2")
    assert len(queued) == 1 and queued[0].pending


@pytest_twisted.ensureDeferred
async def test_dns_timeout_defers_transiently(tmp_path: Any, pki: Any, events: list) -> None:
    """An MX lookup that times out defers (4.4.3), never bounces."""
    from outbound_lab import sender_config
    from twisted.internet.defer import fail
    from twisted.names import error
    from twisted.names.common import ResolverBase

    from tlsmta.testing import RunningRelay

    class TimingOut(ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
            return fail(error.DNSQueryTimeoutError(name))

    sender = await RunningRelay(sender_config(tmp_path, 25, pki.ca_pem), dns_backend=TimingOut()).start()
    try:
        await submit_and_settle(sender, rcpts=("user@unpinned.test",))
    finally:
        await sender.stop()
    [event] = deliveries(events)
    assert event["result"] == "deferred" and event["text"].startswith("4.4.3")


@pytest.mark.parametrize("cert", ["self_signed", "wrong_name", "expired", "good"])
@pytest_twisted.ensureDeferred
async def test_pinned_key_delivers_whatever_chain_and_name(tmp_path: Any, pki: Any, events: list, cert: str) -> None:
    """tls_pins naming the server key (one of two, for rotation) decide: delivered verified although tls_verify = host
    would refuse a self-signed, wrongly named or expired certificate (Postfix's fingerprint level)."""
    from tlsmta.tls import spki_sha256

    pins = ["sha256:" + "00" * 32, f"sha256:{spki_sha256(leaf_of(getattr(pki, cert)))}"]
    await deliver_once(tmp_path, getattr(pki, cert), pki.ca_pem, tls="ifavailable", tls_verify="host", tls_pins=pins)
    [event] = deliveries(events)
    assert (event["result"], event["verified"], event["tls_verify"], event["tls_policy"]) == ("delivered", "yes", "pins", "pinned")
    assert event["reason"].startswith("pin: SPKI sha256:") and event["tls"] == "tls"


@pytest_twisted.ensureDeferred
async def test_unpinned_key_defers_and_never_falls_back(tmp_path: Any, pki: Any, events: list) -> None:
    """A CA-valid certificate for the MX whose key is not pinned: deferred 4.7.5, never in plain text."""
    receiver = await deliver_once(tmp_path, pki.good, pki.ca_pem, tls="ifavailable", tls_verify="host",
                                  tls_pins=["sha256:" + "00" * 32])
    [event] = deliveries(events)
    assert (event["result"], event["code"]) == ("deferred", 451)
    assert event["text"].startswith("4.7.5 pin: SPKI sha256:") and event["text"].endswith("is not in tls_pins")
    assert receiver.service.listeners["receiver"].inbound.connections_total == 1
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest_twisted.ensureDeferred
async def test_pins_require_starttls(tmp_path: Any, pki: Any, events: list) -> None:
    """tls_pins and a server without STARTTLS: 4.7.6, no plain text although tls = ifavailable."""
    await deliver_once(tmp_path, None, pki.ca_pem, tls="ifavailable", tls_pins=["sha256:" + "00" * 32])
    [event] = deliveries(events)
    assert (event["result"], event["text"][:5]) == ("deferred", "4.7.6")


@pytest_twisted.ensureDeferred
async def test_host_check_on_an_ipv6_literal_next_hop(tmp_path: Any, pki: Any, events: list) -> None:
    """route smtp:[::1] with tls_verify = host: a certificate with the IP SAN ::1 verifies over IPv6 loopback."""
    from conftest import _write_leaf

    pair = _write_leaf(tmp_path, "v6", pki.ca.issue_cert("::1"))
    await deliver_once(tmp_path, pair, pki.ca_pem, receiver={"endpoint": r"tcp6:0:interface=\:\:1"},
                       route="smtp:[::1]", tls="required", tls_verify="host")
    [event] = deliveries(events)
    assert (event["result"], event["verified"], event["ip"], event["sans"]) == ("delivered", "yes", "::1", "IP:::1")


@pytest.mark.parametrize("lines", [10, 12_000, 25_000])  # 260 bytes, 312 KB, 650 KB: one read, two, three
async def test_a_body_of_any_length_leaves_whole(tmp_path: Any, lines: int) -> None:
    """The spooled body goes out as read, in however many BODY_CHUNK reads it takes."""
    from tlsmta.delivery._pool import BODY_CHUNK

    text = "".join(f"line {i:06d} of the body\r\n" for i in range(lines))
    rx = await deliver_once(tmp_path, None, None, body="Subject: long\r\n\r\n" + text)
    [message] = maildir_messages(str(tmp_path / "receiver-maildir"))
    received = message.get_payload().replace("\n", "\r\n")
    assert received == text
    assert rx.service.listeners["receiver"].inbound.connections_total == 1
    assert (len(text) > 2 * BODY_CHUNK) == (lines == 25_000)


@pytest_twisted.ensureDeferred
async def test_the_connections_last_message_sends_quit_with_its_final_dot(tmp_path: Any, events: list) -> None:
    """One message, nothing else queued, no connection kept for more: QUIT goes in the same write as the final dot (RFC 2920),
    reaching the receiver in the same read, and the message is delivered."""
    from outbound_lab import start_recording_proxy

    receiver = await start_receiver(tmp_path, None)  # plain text, so the proxy reads the commands
    listening, connections = await start_recording_proxy(receiver.port)
    sender = await start_sender(tmp_path, listening.getHost().port, None, tls="ifavailable", connection_cache_time=0)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await receiver.stop()
        await listening.stopListening()
    [event] = deliveries(events)
    assert event["result"] == "delivered"
    [reads] = connections
    assert any(read.endswith(b"\r\n.\r\nQUIT\r\n") for read in reads), reads


@pytest_twisted.ensureDeferred
async def test_a_job_that_comes_after_quit_went_with_the_dot_takes_a_new_connection(tmp_path: Any, events: list) -> None:
    """The first message's body ends with nothing queued, so QUIT goes with its dot; a second message
    for the same MX is queued before the (slow) reply, and the 250 and 221 come in one read.  The second
    message waits for a new connection instead of being tried on the closed session (it was: 451
    "internal error"), and both are delivered."""
    from e2e import eventually, in_thread, send_smtplib
    from redis_lab import start_sink

    sink, port = await start_sink(delay=0.3)
    sender = await start_sender(tmp_path, port.getHost().port, None, tls="ifavailable", max_connections=1,
                                connection_cache_time=0)
    try:
        first = in_thread(send_smtplib, sender.port, rcpts=(f"user@{DOMAIN}",), body="Subject: first\r\n\r\nhi\r\n")
        await eventually(lambda: sink.final_dots == 1, timeout=10)
        await first
        await in_thread(send_smtplib, sender.port, rcpts=(f"user@{DOMAIN}",), body="Subject: second\r\n\r\nhi\r\n")
        await eventually(lambda: len(sink.subjects) == 2, timeout=10)
    finally:
        await sender.stop()
        await port.stopListening()
    assert sorted(sink.subjects) == ["first", "second"]
    assert [e["result"] for e in deliveries(events)] == ["delivered", "delivered"]


@pytest_twisted.ensureDeferred
async def test_a_connection_waits_for_more_mail_to_its_destination_and_quits_at_shutdown(tmp_path: Any, events: list) -> None:
    """connection_cache_time: the second message, submitted after the first was delivered, goes on the
    same connection (one TCP connection, one greeting); stopping the sender QUITs it at once."""
    from outbound_lab import start_recording_proxy

    receiver = await start_receiver(tmp_path, None)
    listening, connections = await start_recording_proxy(receiver.port)
    sender = await start_sender(tmp_path, listening.getHost().port, None, tls="ifavailable", connection_cache_time=30)
    try:
        await submit_and_settle(sender)
        await submit_and_settle(sender)
        started = reactor.seconds()
        await sender.stop()
        stopped_in = reactor.seconds() - started
    finally:
        await receiver.stop()
        await listening.stopListening()
    assert [e["result"] for e in deliveries(events)] == ["delivered", "delivered"]
    [reads] = connections
    sent = b"".join(reads)
    assert sent.count(b"MAIL FROM:") == 2 and sent.endswith(b"QUIT\r\n")
    assert stopped_in < 10  # not the 30 s the connection would have waited


@pytest_twisted.ensureDeferred
async def test_a_waiting_connection_gives_its_slot_to_another_destination(tmp_path: Any, events: list) -> None:
    """[queue] max_connections = 1: the connection kept open for example.test QUITs as soon as mail for
    another destination needs the only slot, long before its connection_cache_time."""
    receiver = await start_receiver(tmp_path, None)
    sender = await start_sender(tmp_path, receiver.port, None, tls="ifavailable", connection_cache_time=30)
    sender.service.pool.max_connections = 1
    try:
        await submit_and_settle(sender)
        started = reactor.seconds()
        await submit_and_settle(sender, rcpts=("user@other.example.net",))
        waited = reactor.seconds() - started
    finally:
        await sender.stop()
        await receiver.stop()
    assert [(e["domain"], e["result"]) for e in deliveries(events)] == [
        (DOMAIN, "delivered"), ("other.example.net", "delivered")]
    assert waited < 10


@pytest_twisted.ensureDeferred
async def test_a_waiting_tls_connection_the_server_closes_ends_quietly(tmp_path: Any, pki: Any, events: list,
                                                                      logged_failures: list) -> None:
    """The receiver goes away while the TLS connection waits for more mail: the session ends at once
    and without an error logged, and the pool has no connection left."""
    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host",
                                connection_cache_time=30)
    try:
        await submit_and_settle(sender)
        await receiver.stop()
        await eventually(lambda: not sender.service.pool.active, timeout=10)
    finally:
        await sender.stop()
        await receiver.stop()
    assert [str(f["log_failure"].value) for f in logged_failures] == []
    [line] = deliveries(events)
    assert line["result"] == "delivered"
