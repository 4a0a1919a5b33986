"""`tlsmta probe DOMAIN`: what each MX offers, and what every tls_verify mode would conclude.

It also looks up what the recipient side publishes, live: the MTA-STS
policy (fetched, not cached), the DNSSEC status of the MX set and each MX
host's TLSA records, with the DANE verdict on the presented chain, and
judges each MX under the effective (strictest applicable) requirement.

Connects like a delivery would (MX order, the addresses delivery tries,
SNI = MX name, the configured trust anchors, delivery's client session),
completes one handshake per MX while recording every chain error, then asks
:func:`tlsmta.tls._policy.decide` for the verdict under each mode.  What
would happen is :func:`tlsmta.delivery._decisions.session_outcome`, the
steps delivery takes.  Nothing is sent: the session ends with QUIT after STARTTLS.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509

from tlsmta.config import OutboundTLS, Route
from tlsmta.delivery import (
    UNIX_SOCKET_PORT,
    ConnectionBroken,
    EndpointFactory,
    addresses_to_try,
    connect,
    connection_class,
    greeting_failure,
    lmtp_endpoints,
    pinned_verdict,
    session_outcome,
    tcp_endpoints,
    unix_socket_host,
)
from tlsmta.delivery import dane_verdict as delivery_dane_verdict
from tlsmta.delivery import requirement as delivery_requirement
from tlsmta.discovery import (
    CachedPolicy,
    DNSError,
    ExternalFacts,
    PolicyFetcher,
    Resolver,
    STSCache,
    STSResolver,
    gather_facts,
    tlsa_name,
)
from tlsmta.network import IServiceReactor
from tlsmta.smtp import Reply
from tlsmta.smtp import client_session as session
from tlsmta.tls import (
    POLICY_LOCAL,
    CertificateCheck,
    ChainResult,
    ClientTLS,
    DANEStatus,
    Outcome,
    PresentedNames,
    Requirement,
    SessionFacts,
    TLSAction,
    TLSFailure,
    Verdict,
    VerifyMode,
    certificate_sha256,
    client_context,
    decide,
    describe_name,
    describe_sans,
    presented_names,
    spki_sha256,
    tls_connection,
)

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
    starttls: bool = False  # TLS offered: STARTTLS advertised, or implicit TLS (an smtps: route)
    implicit: bool = False  # TLS from the first byte, before the banner
    refused: Reply | None = None  # the answer to STARTTLS, when it was not 220
    facts: SessionFacts | None = None
    chain: list[x509.Certificate] = attrs.field(factory=list)
    verdicts: dict[VerifyMode, Verdict] = attrs.field(factory=dict)
    chain_result: ChainResult | None = None
    presented: PresentedNames | None = None
    requiretls: bool = False  # REQUIRETLS offered after STARTTLS


async def probe_address(reactor: IServiceReactor, mx: str, ip: str, port: int, domain: str, options: Mapping[str, Any], ehlo: str,
                        endpoints: EndpointFactory | None = None) -> ProbeResult:
    """One connection: banner, EHLO, STARTTLS and a recorded handshake, through delivery's client session
    (for an smtps: route the handshake first, then banner and EHLO inside TLS)."""
    route = options.get("route")
    result = ProbeResult(mx, ip, port, implicit=route is not None and route.implicit_tls)
    # Record everything, decide nothing in the handshake: optional never aborts.
    check = CertificateCheck(VerifyMode.OPTIONAL, wanted=(domain, mx), enforce_in_handshake=False)

    def creator() -> ClientTLS:
        ctx = client_context(options["tls_protocols"], options["tls_ciphers"], options["tlsv13_ciphersuites"], options["tls_ca"],
                             groups=options["tls_groups"])
        return ClientTLS(ctx, mx, check)

    try:
        proto = await connect(reactor, endpoints or tcp_endpoints(reactor), ip, port, ehlo, timeout=CONNECT_TIMEOUT,
                              protocol=connection_class(route))
    except Exception as e:
        result.error = f"connect failed: {str(e).strip() or type(e).__name__}"
        return result
    try:
        greeting = await (proto.implicit_tls(creator()) if result.implicit else proto.greeting())
        if proto.session.banner is not None:
            result.banner = str(proto.session.banner)
        if not isinstance(greeting, session.Greeted):
            result.error = str(greeting_failure(greeting, mx))
            proto.quit()
            return result
        local = route is not None and route.over_unix_socket  # an lmtp:unix: socket: no TLS
        result.starttls = result.implicit or ("STARTTLS" in greeting.capabilities and not local)
        if not result.starttls:
            proto.quit()
            return result
        secured = greeting if result.implicit else await proto.starttls(creator())
        if isinstance(secured, session.StartTLSRefused):
            result.refused = secured.reply
            result.error = f"STARTTLS refused: {secured.reply}"
            proto.quit()
            return result
        if isinstance(secured, session.HelloRefused):
            result.error = str(greeting_failure(secured, mx))
        result.requiretls = isinstance(secured, session.Greeted) and "REQUIRETLS" in secured.capabilities
        result.facts = proto.tls_facts
        result.chain = tls_connection(proto.transport).get_peer_cert_chain(as_cryptography=True) or []
        chain_result = ChainResult(tuple(check.errors))
        result.chain_result, result.presented = chain_result, check.presented
        for mode in MODES:
            result.verdicts[mode] = decide(mode, chain_result, check.presented, (domain, mx))
        proto.quit()
    except ConnectionBroken as e:
        result.error = f"{'TLS handshake failed' if e.ssl_failure else 'connection broken'}: {e.reason}"
        proto.abort()
    return result


async def hosts_for(resolver: Resolver, domain: str, mx: str | None, route: Any) -> list[str]:
    if mx:
        return [mx]
    if route is not None and route.kind in ("smtp", "lmtp"):
        return [route.host]
    return [m.host for m in await resolver.mx(domain)]


class _NoDiskCache(STSCache):
    """The probe fetches live and leaves the daemon's policy cache alone."""

    def __init__(self) -> None:
        super().__init__("")

    def read_blocking(self, domain: str) -> CachedPolicy | None:
        return None

    def write_blocking(self, domain: str, cached: CachedPolicy) -> None:
        return None


async def external_facts(reactor: IServiceReactor, resolver: Resolver, domain: str, options: Mapping[str, Any], names: list[str], port: int, https_port: int) -> ExternalFacts:
    """MTA-STS (fetched now) and DANE (looked up now) for the MX hosts probed."""
    fetcher = PolicyFetcher(reactor, resolver.addresses, port=lambda: https_port, ca_for=lambda d: options["tls_ca"])
    sts = STSResolver(resolver.txt, fetcher, _NoDiskCache(), now=reactor.seconds)
    route_kind = options["route"].kind
    return await gather_facts(resolver, sts, domain, route_kind, [(n, port) for n in names], options["mta_sts"], options["dane"], need_mx_status=True)


async def run_probe(reactor: IServiceReactor, resolver: Resolver, domain: str, options: Mapping[str, Any], port: int | None, mx: str | None, ehlo: str,
                    https_port: int = 443, endpoints: EndpointFactory | None = None) -> tuple[list[ProbeResult], str | None, ExternalFacts]:
    """Probe every address of every MX; (results, DNS problem or None, recipient-side policies)."""
    route = options["route"]
    if route.over_unix_socket:
        # A local socket: no DNS, MTA-STS, DANE or TLS; the banner and LHLO show whether the server is there.
        name, path, socket_port = unix_socket_host(route)
        socket_endpoints = lmtp_endpoints(reactor, endpoints or tcp_endpoints(reactor))
        return [await probe_address(reactor, name, path, socket_port, domain, options, ehlo, socket_endpoints)], None, ExternalFacts()
    try:
        names = await hosts_for(resolver, domain, mx, options["route"])
    except DNSError as e:
        return [], str(e), ExternalFacts()
    results = []
    target_port = port or options["route"].port_for(options["smtp_port"])
    facts = await external_facts(reactor, resolver, domain, options, names, target_port, https_port)
    for name in names:
        try:
            addresses = await resolver.addresses(name)
        except DNSError as e:
            results.append(ProbeResult(name, "-", target_port, error=str(e)))
            continue
        for ip in addresses_to_try(addresses):
            results.append(await probe_address(reactor, name, ip, target_port, domain, options, ehlo, endpoints))
    return results, None, facts


def requirement(options: Mapping[str, Any], facts: ExternalFacts, mx: str, tls_mode: OutboundTLS, verify: VerifyMode) -> Requirement:
    """The effective requirement for ``mx`` (an ordinary message: no REQUIRETLS)."""
    return delivery_requirement(tls_mode, verify, options["tls_ifavailable_fallback"], facts, mx, dane=options["dane"],
                                pins=options["tls_pins"])


def dane_verdict(result: ProbeResult, facts: ExternalFacts) -> Verdict | None:
    """The DANE verdict on the chain the MX showed, when it has usable TLSA records."""
    if result.facts is None:
        return None
    return delivery_dane_verdict(facts, result.mx, result.chain, datetime.datetime.now(datetime.timezone.utc))


def effective_outcome(result: ProbeResult, req: Requirement, domain: str, facts: ExternalFacts) -> tuple[bool, str]:
    """(would deliver, what happens) under the effective requirement for this MX."""
    if req.unusable is not None:
        return False, f"defer: 451 {req.unusable} (this MX is not used)"
    verdict = None
    if result.facts is not None and req.pinned:
        verdict = pinned_verdict(req.pins, result.chain)
    elif result.facts is not None:
        verdict = dane_verdict(result, facts) if req.dane else decide(
            req.verify, result.chain_result or ChainResult(), result.presented, req.wanted(domain, result.mx)
        )
    return _outcome(result, req, verdict, " (never in plain text)", " by DANE" if req.dane else " by tls_pins" if req.pinned else "")


def _outcome(result: ProbeResult, req: Requirement, verdict: Verdict | None, fatal_note: str = "",
             verified_by: str = "") -> tuple[bool, str]:
    """(would deliver, what happens): delivery's decisions over what the probe saw."""
    if result.error and result.facts is None and not result.starttls:
        return False, f"defer: {result.error}"
    handshake_error = result.error if result.facts is None and result.refused is None else None
    outcome = session_outcome(
        req, starttls_offered=result.starttls, refused=result.refused, handshake_error=handshake_error,
        verdict=verdict, requiretls_offered=result.requiretls,
    )
    if isinstance(outcome, TLSFailure):
        return False, f"defer: {outcome.reply}" + (fatal_note if verdict is not None else "")
    if outcome is TLSAction.PLAIN:
        if req.tls is OutboundTLS.NO:
            return True, "deliver in plain text (tls = no)"
        if not result.starttls:
            return True, "deliver in plain text (STARTTLS not offered)"
        if result.refused is not None:
            return True, f"deliver in plain text after {result.refused.code} to STARTTLS (tls_ifavailable_fallback)"
        return True, "deliver in plain text after the failed handshake (if tls_ifavailable_fallback)"
    assert verdict is not None
    if verdict.outcome is Outcome.SOFTFAIL:
        return True, f"deliver over TLS, soft-fail logged: {verdict.reason}"
    return True, "deliver over TLS" + (", certificate verified" + verified_by if verdict.verified else "")


def config_source(resolver: Resolver, domain: str, route: Route) -> str | None:
    """Where the configuration decides the MX set, so DNSSEC did not: the ``smtp:`` route or a
    ``[dns.mx]`` pin (delivery treats both as validated); None when DNS answers."""
    if route.kind in ("smtp", "lmtp"):
        return f"route {route}"
    return "[dns.mx]" if resolver.pinned_answer("mx", domain) is not None else None


def tlsa_source(resolver: Resolver, mx: str, port: int) -> str | None:
    """``[dns.tlsa]`` when the configuration pins this MX's TLSA records."""
    return "[dns.tlsa]" if resolver.pinned_answer("tlsa", tlsa_name(mx, port)) is not None else None


def mx_set_status(facts: ExternalFacts, pinned_in: str | None) -> str:
    if pinned_in is not None:
        return f"pinned in config ({pinned_in}), not looked up in DNS; treated as validated"
    return "DNSSEC-secure" if facts.mx_secure else "not DNSSEC-validated (DANE does not apply)"


def format_external(facts: ExternalFacts, domain: str, pinned_in: str | None = None) -> list[str]:
    """The domain-wide part: MTA-STS and the MX set's DNSSEC status (or the config that pins it)."""
    lines = []
    if facts.sts is not None:
        lines.append(f"MTA-STS for {domain}: {facts.sts.describe()}")
        if facts.sts.failure is not None and facts.sts.policy is not None:
            lines.append(f"  (a fresh fetch failed: {facts.sts.failure} [{facts.sts.failure.result_type}])")
    else:
        lines.append(f"MTA-STS for {domain}: not applied (mta_sts = false, or not an MX route)")
    lines.append(f"MX set of {domain}: {mx_set_status(facts, pinned_in)}")
    return lines


def format_policies(result: ProbeResult, facts: ExternalFacts, req: Requirement, domain: str,
                    tlsa_pinned_in: str | None = None) -> list[str]:
    """Per MX: the TLSA records (and where they come from), the DANE verdict, MTA-STS's view,
    the effective requirement and outcome."""
    tlsa = facts.dane_for(result.mx)
    lines = []
    if tlsa.status is DANEStatus.FAILED:
        lines.append(f"  TLSA:     lookup failed: {tlsa.reason}")
    elif tlsa.records:
        source = f"pinned in config ({tlsa_pinned_in})" if tlsa_pinned_in else "DNSSEC-secure"
        lines.append(f"  TLSA ({'usable' if tlsa.status is DANEStatus.USABLE else 'none usable'}, {source}):")
        lines += [f"    {r}" for r in tlsa.records]
        verdict = dane_verdict(result, facts)
        if verdict is not None:
            lines.append(f"  DANE:     {'pass' if verdict.verified else 'FAIL'} ({verdict.reason})")
    elif facts.mx_secure:
        lines.append("  TLSA:     none (DANE does not apply)")
    sts = facts.sts_state(result.mx)
    if sts is not None and sts.mode != "none":
        lines.append(f"  MTA-STS:  {sts.mode}; this MX is {'listed' if sts.mx_matches else 'NOT listed'} in the policy")
    if result.facts is not None:
        lines.append(f"  REQUIRETLS: {'offered' if result.requiretls else 'not offered'} after STARTTLS")
    ok, what = effective_outcome(result, req, domain, facts)
    how = "DANE" if req.dane else "tls_pins" if req.pinned else f"tls={req.tls}, tls_verify={req.verify.value}"
    lines.append(f"  effective ({req.policy}: {how}): {what}")
    return lines


def configured_outcome(result: ProbeResult, tls_mode: OutboundTLS, verify: VerifyMode, fallback: bool = True) -> tuple[bool, str]:
    """(would deliver, what happens) under the configured tls / tls_verify."""
    local = Requirement(POLICY_LOCAL, tls_mode, verify, fallback=fallback)
    return _outcome(result, local, result.verdicts.get(verify))


def format_certificate(depth: int, cert: x509.Certificate) -> list[str]:
    names = presented_names(cert)
    return [
        f"    {depth} subject: {describe_name(cert.subject)}",
        f"      issuer:  {describe_name(cert.issuer)}",
        f"      SANs:    {describe_sans(names) or '(none)'}",
        f"      valid:   {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"      SPKI:    sha256:{spki_sha256(cert)}",
        f"      cert:    sha256:{certificate_sha256(cert)}",
    ]


def format_result(result: ProbeResult, tls_mode: OutboundTLS, verify: VerifyMode) -> list[str]:
    if result.port == UNIX_SOCKET_PORT:
        lines = [f"LMTP server on unix:{result.ip} (a local socket: no STARTTLS)"]
    else:
        lines = [f"MX {result.mx} [{result.ip}]:{result.port}"]
    if result.banner:
        lines.append(f"  banner:   {result.banner}")
    if result.error and not result.banner:
        lines.append(f"  error:    {result.error}")
        lines.append(f"  configured ({tls_mode}, tls_verify={verify.value}): {configured_outcome(result, tls_mode, verify)[1]}")
        return lines
    if result.implicit:
        lines.append("  TLS mode: implicit (smtps:, the handshake before the banner)")
    elif result.port != UNIX_SOCKET_PORT:
        lines.append(f"  STARTTLS: {'offered' if result.starttls else 'not offered'}")
    if result.error:
        lines.append(f"  error:    {result.error}")
    if result.facts is not None:
        lines.append(f"  TLS:      {result.facts.protocol} {result.facts.cipher}")
        lines.append(f"  group:    {result.facts.group or 'unknown'}")  # the key exchange's
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
