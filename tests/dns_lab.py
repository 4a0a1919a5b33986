"""A real authoritative DNS server on loopback (twisted.names), for tests that need lookups answered.

Tests point tlsmta at it with ``[dns] nameservers`` instead of letting a lookup
reach the system resolver.  It is authoritative for one zone: names in the
zone without records get NXDOMAIN, as a real zone's server would say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, server


class _ZoneAuthority(authority.FileAuthority):
    """One zone from memory: ``records`` maps owner names to twisted.names records."""

    def __init__(self, origin: str, records: Mapping[str, Sequence[Any]], queries: list[tuple[str, str]]):
        self._origin, self._given, self.queries = origin, records, queries
        super().__init__(origin)

    def loadFile(self, origin: str) -> None:  # noqa: N802 - FileAuthority's hook
        soa = dns.Record_SOA(mname=f"ns.{origin}", rname=f"hostmaster.{origin}", serial=1, minimum=60, ttl=60)
        self.soa = (origin.encode(), soa)
        self.records = {origin.encode().lower(): [soa]}
        for name, records in self._given.items():
            self.records.setdefault(name.encode().lower(), []).extend(records)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:  # noqa: A002
        self.queries.append((name.decode().lower(), dns.QUERY_TYPES.get(type, str(type))))
        return super()._lookup(name, cls, type, timeout)


@attrs.define
class LoopbackDNS:
    """The running server: ``nameserver`` is its ``"127.0.0.1:PORT"``; ``queries`` what it was asked."""

    port: int
    queries: list[tuple[str, str]]
    _listening: list[Any]

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        for port in self._listening:
            port.stopListening()


def start_dns(origin: str, records: Mapping[str, Sequence[Any]] | None = None, attempts: int = 20) -> LoopbackDNS:
    """Serve ``origin`` on UDP and TCP on one free loopback port.

    The kernel picks a free TCP port; the same number may still be taken for
    UDP (or, the other way round, by one of the suite's many TCP connections),
    so a collision picks again instead of failing the test.
    """
    queries: list[tuple[str, str]] = []
    factory = server.DNSServerFactory(authorities=[_ZoneAuthority(origin, records or {}, queries)])
    for _ in range(attempts):
        tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")
        port = tcp.getHost().port
        try:
            udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        except CannotListenError:
            tcp.stopListening()
            continue
        return LoopbackDNS(port, queries, [udp, tcp])
    raise RuntimeError(f"no loopback port free for both TCP and UDP in {attempts} attempts")
