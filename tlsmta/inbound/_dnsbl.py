"""DNS blocklist lookups with a score, as Postfix postscreen weighs them.

A client address is listed in a zone when ``REVERSED-ADDRESS.ZONE`` has an
A record in 127.0.0.0/8 (RFC 5782 2.1: IPv4 octets reversed, IPv6 nibbles
reversed).  Each listing adds its zone's weight; a client whose score
reaches ``dnsbl_threshold`` is refused.  Lookups go through tlsmta's own
resolver (pinned answers, ``[dns] nameservers``) and all run at once under
one timeout: a zone that fails or does not answer in time counts as "not
listed" and is logged, so a broken blocklist never blocks mail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from tlsmta.config import DnsblZone
from tlsmta.discovery import DNSPermanent
from tlsmta.reporting import EventBus


def query_name(ip: str, zone: str) -> str:
    """The name to look up for ``ip`` in ``zone`` (RFC 5782 2.1 and 2.4)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    reversed_name = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
    return f"{reversed_name}.{zone}"


def listed(answers: Sequence[str]) -> bool:
    """Whether A answers say "listed": an address in 127.0.0.0/8 (RFC 5782 2.3); others are errors of the list."""
    for answer in answers:
        try:
            if ipaddress.ip_address(answer) in _LISTED:
                return True
        except ValueError:
            continue
    return False


_LISTED = ipaddress.ip_network("127.0.0.0/8")


@attrs.frozen
class DnsblResult:
    """The zones that list a client and its score."""

    zones: tuple[str, ...]
    score: int

    def blocked(self, threshold: int) -> bool:
        return bool(self.zones) and self.score >= threshold


def check(
    ip: str,
    zones: Sequence[DnsblZone],
    lookup: Callable[[str], Deferred[list[str]]],
    clock: IReactorTime,
    timeout: float,
    events: EventBus,
    listener: str,
) -> Deferred[DnsblResult]:
    """Look ``ip`` up in every zone at once; never fails, and fires within ``timeout``.

    A peer that is no IP address (a UNIX socket's) is in no blocklist."""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return succeed(DnsblResult((), 0))

    def one(zone: DnsblZone) -> Deferred[bool]:
        d = lookup(query_name(ip, zone.zone))
        d.addTimeout(timeout, clock)
        return d.addCallbacks(listed, lambda failure: _not_listed(failure, zone.zone))

    def _not_listed(failure: Failure, zone: str) -> bool:
        if not _is_no_such_name(failure):
            events.emit("dnsbl_failed", listener=listener, peer=ip, zone=zone, reason=failure.getErrorMessage() or failure.type.__name__)
        return False

    def score(results: list[tuple[bool, bool]]) -> DnsblResult:
        hits = [zone for zone, (_, hit) in zip(zones, results) if hit]
        return DnsblResult(tuple(zone.zone for zone in hits), sum(zone.weight for zone in hits))

    return DeferredList([one(zone) for zone in zones], consumeErrors=True).addCallback(score)


def _is_no_such_name(failure: Failure) -> bool:
    """NXDOMAIN: the usual "not listed" answer, not worth a log line."""
    return failure.check(DNSPermanent) is not None
