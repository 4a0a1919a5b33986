"""`tlsmta probe DOMAIN`: what each MX offers, and what every tls_verify mode would conclude.

Connects like a delivery would (MX order, SNI = MX name, the configured
trust anchors), completes one handshake per MX while recording every
chain error, then asks :func:`tlsmta.policy.decide` for the verdict under
each mode.  Nothing is sent: the session ends with QUIT after STARTTLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509

from tlsmta import policy, tls
from tlsmta.client_codec import parse_ehlo
from tlsmta.dns import DNSError, Resolver
from tlsmta.outbound import ConnectionBroken, connect
from tlsmta.policy import VerifyMode

MODES = (VerifyMode.NO, VerifyMode.CA, VerifyMode.HOST, VerifyMode.OPTIONAL)
CONNECT_TIMEOUT = 15


@attrs.define
class ProbeResult:
    """What one MX address showed."""

    mx: str
    ip: str
    port: int
    error: str | None = None
    banner: str = ""
    starttls: bool = False
    facts: tls.SessionFacts | None = None
    chain: list[x509.Certificate] = attrs.field(factory=list)
    verdicts: dict[VerifyMode, policy.Verdict] = attrs.field(factory=dict)


async def probe_address(reactor: Any, mx: str, ip: str, port: int, domain: str, options: Mapping[str, Any], ehlo: str) -> ProbeResult:
    """One connection: banner, EHLO, STARTTLS and a recorded handshake."""
    result = ProbeResult(mx, ip, port)
    try:
        proto = await connect(reactor, ip, port, timeout=CONNECT_TIMEOUT)
    except Exception as e:
        result.error = f"connect failed: {str(e).strip() or type(e).__name__}"
        return result
    try:
        banner = await proto.banner
        result.banner = str(banner)
        reply = await proto.command(f"EHLO {ehlo}")
        caps = parse_ehlo(reply) if reply.code == 250 else {}
        result.starttls = "STARTTLS" in caps
        if not result.starttls:
            proto.quit()
            return result
        reply = await proto.command("STARTTLS")
        if reply.code != 220:
            result.error = f"STARTTLS refused: {reply}"
            proto.quit()
            return result
        # Record everything, decide nothing in the handshake: optional never aborts.
        check = tls.CertificateCheck(VerifyMode.OPTIONAL, wanted=(domain, mx), enforce_in_handshake=False)
        ctx = tls.client_context(options["tls_protocols"], options["tls_ciphers"], options["tlsv13_ciphersuites"], options["tls_ca"])
        proto.start_tls(tls.ClientTLS(ctx, mx, check))
        await proto.command(f"EHLO {ehlo}")
        result.facts = proto.tls_facts
        result.chain = proto.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
        chain_result = policy.ChainResult(tuple(check.errors))
        for mode in MODES:
            result.verdicts[mode] = policy.decide(mode, chain_result, check.presented, (domain, mx))
        proto.quit()
    except ConnectionBroken as e:
        result.error = f"{'TLS handshake failed' if e.ssl_failure else 'connection broken'}: {e.reason}"
        proto.abort()
    return result


async def hosts_for(resolver: Resolver, domain: str, mx: str | None, route: Any) -> list[str]:
    if mx:
        return [mx]
    if route is not None and route.kind == "smtp":
        return [route.host]
    return [m.host for m in await resolver.mx(domain)]


async def run_probe(reactor: Any, resolver: Resolver, domain: str, options: Mapping[str, Any], port: int | None, mx: str | None, ehlo: str) -> tuple[list[ProbeResult], str | None]:
    """Probe every address of every MX; (results, DNS problem or None)."""
    try:
        names = await hosts_for(resolver, domain, mx, options["route"])
    except DNSError as e:
        return [], str(e)
    results = []
    target_port = port or (options["route"].port if options["route"].kind == "smtp" and options["route"].port else options["smtp_port"])
    for name in names:
        try:
            addresses = await resolver.addresses(name)
        except DNSError as e:
            results.append(ProbeResult(name, "-", target_port, error=str(e)))
            continue
        for ip in addresses[:4]:
            results.append(await probe_address(reactor, name, ip, target_port, domain, options, ehlo))
    return results, None


def configured_outcome(result: ProbeResult, tls_mode: str, verify: VerifyMode) -> tuple[bool, str]:
    """(would deliver, what happens) under the configured tls / tls_verify."""
    if result.error and result.facts is None and not result.starttls:
        return False, f"defer: {result.error}"
    if tls_mode == "no":
        return True, "deliver in plain text (tls = no)"
    if not result.starttls:
        if tls_mode == "required":
            return False, "defer: 451 4.7.6 STARTTLS required but not advertised"
        return True, "deliver in plain text (STARTTLS not offered)"
    if result.facts is None:
        if tls_mode == "required":
            return False, f"defer: 451 4.7.5 TLS negotiation failed: {result.error}"
        return True, "deliver in plain text after the failed handshake (if tls_ifavailable_fallback)"
    verdict = result.verdicts[verify]
    if verdict.fatal:
        return False, f"defer: 451 {verdict.status_text}"
    if verdict.outcome is policy.Outcome.SOFTFAIL:
        return True, f"deliver over TLS, soft-fail logged: {verdict.reason}"
    return True, "deliver over TLS" + (", certificate verified" if verdict.verified else "")


def format_certificate(depth: int, cert: x509.Certificate) -> list[str]:
    names = tls.presented_names(cert)
    return [
        f"    {depth} subject: {tls.describe_name(cert.subject)}",
        f"      issuer:  {tls.describe_name(cert.issuer)}",
        f"      SANs:    {', '.join(names.dns_names) or '(none)'}",
        f"      valid:   {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
    ]


def format_result(result: ProbeResult, tls_mode: str, verify: VerifyMode) -> list[str]:
    lines = [f"MX {result.mx} [{result.ip}]:{result.port}"]
    if result.banner:
        lines.append(f"  banner:   {result.banner}")
    if result.error and not result.banner:
        lines.append(f"  error:    {result.error}")
        lines.append(f"  configured ({tls_mode}, tls_verify={verify.value}): {configured_outcome(result, tls_mode, verify)[1]}")
        return lines
    lines.append(f"  STARTTLS: {'offered' if result.starttls else 'not offered'}")
    if result.error:
        lines.append(f"  error:    {result.error}")
    if result.facts is not None:
        lines.append(f"  TLS:      {result.facts.protocol} {result.facts.cipher}")
        lines.append("  certificate chain:")
        for depth, cert in enumerate(result.chain):
            lines += format_certificate(depth, cert)
        lines.append("  verdicts:")
        for mode in MODES:
            verdict = result.verdicts[mode]
            word = {"verified": "pass", "unchecked": "not checked", "softfail": "soft-fail", "failed": "FAIL"}[verdict.outcome.value]
            detail = f" ({verdict.reason})" if verdict.reason else ""
            lines.append(f"    {mode.value:<9} {word}{detail}")
    ok, what = configured_outcome(result, tls_mode, verify)
    lines.append(f"  configured (tls={tls_mode}, tls_verify={verify.value}): {what}")
    return lines
