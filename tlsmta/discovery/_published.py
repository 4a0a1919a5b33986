"""What the recipient side publishes about TLS, looked up for one destination.

For a delivery over MX records: the domain's MTA-STS policy (through
:class:`tlsmta.discovery._mtasts.STSResolver`), whether its MX RRset is DNSSEC-secure,
and the TLSA records of each MX host (:mod:`tlsmta.discovery._dane`).  Turning these
facts into a requirement is :func:`tlsmta.tls._policy.effective_requirement`'s
job; this module only gathers them.

A lab that pins a domain's MX in ``[dns.mx]`` has no signed zone for it:
its MX hosts' TLSA records come from ``[dns.tlsa]`` only, never from the
real resolver (so tests and labs never query the network for them).
Smarthost routes (``smtp:HOST``) and local routes get no MTA-STS or DANE;
a smarthost, named in our configuration, counts as a validated next hop.
"""

from __future__ import annotations

from typing import Any

import attrs

from tlsmta.discovery import _dane as dane
from tlsmta.discovery._mtasts import STSResolver, STSResult
from tlsmta.discovery._resolver import DNSError, Resolver
from tlsmta.tls import DANEStatus, STSState


@attrs.frozen
class MXTLSA:
    """The DANE facts of one MX host."""

    status: DANEStatus
    records: tuple[dane.TLSARecord, ...] = ()
    reason: str = ""  # why the lookup failed (FAILED)


@attrs.frozen
class ExternalFacts:
    """Everything the recipient side says, for one destination at one moment."""

    sts: STSResult | None = None  # None: MTA-STS not applicable (route or opt-out)
    mx_secure: bool = False
    tlsa: dict[str, MXTLSA] = attrs.field(factory=dict)  # by MX host name

    def sts_state(self, mx: str) -> STSState | None:
        policy = self.sts.policy if self.sts is not None else None
        if policy is None:
            return None
        return STSState(policy.mode, policy.matches(mx))

    def dane_for(self, mx: str) -> MXTLSA:
        return self.tlsa.get(mx, MXTLSA(DANEStatus.NONE))


async def gather_facts(
    resolver: Resolver,
    sts: STSResolver | None,
    domain: str,
    route_kind: str,
    mx_hosts: list[tuple[str, int]],
    use_sts: bool,
    use_dane: bool,
    need_mx_status: bool = False,
) -> ExternalFacts:
    """MTA-STS for ``domain`` and DANE for each (MX host, port); the MX RRset's DNSSEC
    status also when ``need_mx_status`` (REQUIRETLS wants it, DANE or not)."""
    if route_kind in ("smtp", "lmtp"):
        # A smarthost's (or LMTP server's) name comes from our own configuration, not from DNS: it
        # counts as a validated next hop for REQUIRETLS (RFC 8689 4.2.1 step 1).
        return ExternalFacts(mx_secure=True)
    if route_kind != "mx" or domain.startswith("["):
        return ExternalFacts()
    sts_result = await sts.policy_for(domain) if (use_sts and sts is not None) else None
    if not (use_dane or need_mx_status):
        return ExternalFacts(sts_result)
    mx_pinned = resolver.pinned_answer("mx", domain) is not None
    try:
        mx_secure = mx_pinned or await dane.is_secure(resolver, domain, "MX")
    except DNSError:
        # The MX lookup itself succeeded; without a DNSSEC status the MX set
        # counts as insecure (RFC 7672 2.2.1: DANE then does not apply).
        mx_secure = False
    tlsa: dict[str, MXTLSA] = {}
    if mx_secure and use_dane:
        for host, port in dict.fromkeys(mx_hosts):
            if host in tlsa:
                continue
            if mx_pinned and resolver.pinned_answer("tlsa", dane.tlsa_name(host, port)) is None:
                tlsa[host] = MXTLSA(DANEStatus.NONE)
                continue
            if not mx_pinned:
                # RFC 7672 2.2.2: TLSA records are only used when the MX host's
                # address records validate too.
                try:
                    if not await dane.is_secure(resolver, host, "A"):
                        tlsa[host] = MXTLSA(DANEStatus.NONE)
                        continue
                except DNSError as e:
                    tlsa[host] = MXTLSA(DANEStatus.FAILED, reason=str(e))
                    continue
            tlsa[host] = await _tlsa(resolver, host, port)
    return ExternalFacts(sts_result, mx_secure, tlsa)


async def _tlsa(resolver: Resolver, host: str, port: int) -> MXTLSA:
    try:
        answer = await dane.lookup_tlsa(resolver, host, port)
    except DNSError as e:
        return MXTLSA(DANEStatus.FAILED, reason=str(e))
    if not answer.secure or not answer.records:
        return MXTLSA(DANEStatus.NONE)
    if answer.usable:
        return MXTLSA(DANEStatus.USABLE, answer.usable)
    return MXTLSA(DANEStatus.UNUSABLE, answer.records)


def describe_facts(facts: ExternalFacts, mx: str) -> dict[str, Any]:
    """Log fields: the MTA-STS and DANE state for one MX."""
    fields: dict[str, Any] = {}
    if facts.sts is not None:
        policy = facts.sts.policy
        fields["mta_sts"] = f"{policy.mode}/{facts.sts.source}" if policy is not None else facts.sts.source
        if facts.sts.failure is not None:
            fields["mta_sts_error"] = facts.sts.failure.result_type
    tlsa = facts.dane_for(mx)
    if tlsa.status is not DANEStatus.NONE:
        fields["dane"] = tlsa.status.value
    return fields
