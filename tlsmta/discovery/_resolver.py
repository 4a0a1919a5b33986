"""DNS lookups through twisted.names, with the ``[dns]`` table's pinned answers.

Pinned answers are consulted first and nothing else in tlsmta knows a name
was pinned; names not pinned go to the real resolver.  Failures come back
as :class:`DNSPermanent` (NXDOMAIN, null MX: bounce) or
:class:`DNSTransient` (SERVFAIL, timeout: retry later).

DNSSEC status (for DANE) is the one thing twisted.names cannot give: it has
no TLSA type and does not expose the AD bit.  :meth:`Resolver.dnssec_query`
asks the same resolver (``[dns] nameservers`` or the system's) through dnspython, with the DO bit set, in a
thread of the reactor's pool, and trusts the AD bit of its answer (the
validating resolver is expected to be local, as RFC 7672 1.3 assumes).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from dns import exception as _dnsexc
from dns import flags as _dnsflags
from dns import nameserver as _dnsnameserver
from dns import rdatatype as _rdatatype
from dns import resolver as _dnsresolver
from twisted.internet import threads
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.names import dns, error
from twisted.names.common import ResolverBase
from twisted.python.failure import Failure

from tlsmta.errors import TlsmtaError
from tlsmta.network import IServiceReactor, installed_reactor

LOOKUP_TIMEOUT = (2, 4)  # seconds per retry, as twisted.names takes them


class DNSError(TlsmtaError):
    """A lookup that did not give a usable answer; ``status`` overrides the default 5.1.2/4.4.3."""

    permanent = False

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class DNSPermanent(DNSError):
    permanent = True


class DNSTransient(DNSError):
    pass


@attrs.frozen
class MXHost:
    preference: int
    host: str
    implicit: bool = False  # no MX record: the domain itself (RFC 5321 5.1)


def order_mx(records: Sequence[tuple[int, str]], rng: Callable[[list[str]], None] = random.shuffle) -> list[MXHost]:
    """RFC 5321 5.1: by preference, random order among equal preferences."""
    groups: dict[int, list[str]] = {}
    for pref, host in records:
        groups.setdefault(pref, []).append(host)
    out = []
    for pref in sorted(groups):
        hosts = groups[pref]
        rng(hosts)
        out += [MXHost(pref, h) for h in hosts]
    return out


def below_self(mxs: Sequence[MXHost], is_self: Callable[[MXHost], bool]) -> list[MXHost]:
    """RFC 5321 5.1: when this MTA is one of the MX hosts, only those preferred over
    it (a lower preference number than our lowest) may be tried; the others, us
    included, would hand the mail back or to a fellow backup (a loop).  Empty:
    there is nowhere to send it (the caller's 5.4.6)."""
    own = [mx.preference for mx in mxs if is_self(mx)]
    if not own:
        return list(mxs)
    return [mx for mx in mxs if mx.preference < min(own)]


def _classify(failure: Failure, what: str) -> Failure:
    if failure.check(error.DNSNameError):
        return Failure(DNSPermanent(f"{what}: no such domain"))
    if failure.check(error.DNSServerError, error.DNSQueryTimeoutError, error.TimeoutError, error.DNSQueryRefusedError):
        return Failure(DNSTransient(f"{what}: {failure.getErrorMessage() or type(failure.value).__name__}"))
    if failure.check(DNSError):
        return failure
    return Failure(DNSTransient(f"{what}: {failure.getErrorMessage() or type(failure.value).__name__}"))


def _names(records: Sequence[Any], rtype: int) -> list[Any]:
    return [r.payload for r in records if r.type == rtype]


@attrs.frozen
class DNSSECAnswer:
    """One RRset from the real resolver and whether it validated (AD bit).

    ``rdatas`` are dnspython rdata objects; empty for NXDOMAIN and NODATA
    (then ``secure`` says whether the denial validated).
    """

    rdatas: tuple[Any, ...]
    secure: bool


# Pinned tables that stand for a record type, for :meth:`Resolver.pinned_secure`.
_PIN_TABLES = {"MX": "mx", "A": "hosts", "AAAA": "hosts", "TXT": "txt", "TLSA": "tlsa", "PTR": "ptr"}


class Resolver:
    """MX, address, PTR and TXT lookups for tlsmta, and DNSSEC-aware queries.

    ``nameservers`` (``[(address, port), ...]``, from ``[dns] nameservers``)
    sends every query there; None sends them to the servers in
    /etc/resolv.conf.  ``backend`` replaces the twisted.names resolver
    (tests, labs); ``reactor`` supplies the thread pool DNSSEC queries run in.
    """

    def __init__(
        self,
        pinned: Mapping[str, Mapping[str, tuple[str, ...]]],
        backend: Any = None,
        nameservers: Sequence[tuple[str, int]] | None = None,
        reactor: IServiceReactor | None = None,
    ):
        self.pinned = pinned
        self._given_backend = backend
        self._reactor = reactor
        self.nameservers = nameservers

    @property
    def nameservers(self) -> tuple[tuple[str, int], ...] | None:
        return self._nameservers

    @nameservers.setter
    def nameservers(self, servers: Sequence[tuple[str, int]] | None) -> None:
        # Both resolvers are built on first use, so a reload can point them elsewhere.
        self._nameservers = tuple(servers) if servers else None
        self._backend: Any = self._given_backend
        self._dnspython: _dnsresolver.Resolver | None = None

    @property
    def backend(self) -> Any:
        """The twisted.names resolver that answers what is not pinned."""
        if self._backend is None:
            from twisted.names import cache, client, resolve

            extra = {"reactor": _KernelChosenPorts(self._reactor or installed_reactor())}
            if self._nameservers is None:
                self._backend = client.createResolver()  # /etc/resolv.conf and /etc/hosts
            else:
                self._backend = resolve.ResolverChain(
                    [cache.CacheResolver(**extra), client.Resolver(servers=list(self._nameservers), **extra)]
                )
        return self._backend

    def _pin(self, table: str, name: str) -> tuple[str, ...] | None:
        return self.pinned.get(table, {}).get(name.lower().rstrip("."))

    def pinned_answer(self, table: str, name: str) -> tuple[str, ...] | None:
        """The ``[dns.TABLE]`` answer pinned for ``name``, or None when not pinned."""
        return self._pin(table, name)

    def pinned_secure(self, name: str, rdtype: str) -> bool:
        """Whether ``name``/``rdtype`` is pinned: pinned answers count as DNSSEC-validated."""
        table = _PIN_TABLES.get(rdtype.upper())
        return table is not None and self._pin(table, name) is not None

    def dnssec_query(self, name: str, rdtype: str) -> Deferred[DNSSECAnswer]:
        """Ask the real resolver for ``name``/``rdtype`` with DNSSEC OK; never pinned.

        NXDOMAIN and NODATA give an empty answer; SERVFAIL, timeouts and a
        missing resolver configuration are :class:`DNSTransient`.  Runs in a
        thread so the reactor is never blocked.
        """
        reactor = self._reactor if self._reactor is not None else installed_reactor()
        what = f"{rdtype} lookup for {name}"
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), self._dnssec_query_blocking, name, rdtype)
        return d.addErrback(lambda f: _classify_dnspython(f, what))

    def _dnssec_query_blocking(self, name: str, rdtype: str) -> DNSSECAnswer:
        resolver = self._dnspython_resolver()
        try:
            answer = resolver.resolve(name, _rdatatype.from_text(rdtype), raise_on_no_answer=False, search=False)
        except _dnsresolver.NXDOMAIN as e:
            responses = list(e.responses().values())
            return DNSSECAnswer((), bool(responses) and _authentic(responses[-1]))
        rdatas = tuple(answer.rrset) if answer.rrset is not None else ()
        return DNSSECAnswer(rdatas, _authentic(answer.response))

    def _dnspython_resolver(self) -> _dnsresolver.Resolver:
        # Built on first use: reading /etc/resolv.conf is only needed for DANE.
        if self._dnspython is None:
            if self._nameservers is None:
                resolver = _dnsresolver.Resolver(configure=True)
            else:
                resolver = _dnsresolver.Resolver(configure=False)
                resolver.nameservers = [_dnsnameserver.Do53Nameserver(a, p) for a, p in self._nameservers]
            resolver.timeout = LOOKUP_TIMEOUT[0]
            resolver.lifetime = float(sum(LOOKUP_TIMEOUT))
            # DO asks for DNSSEC; AD in the query (RFC 6840 5.7) asks a
            # validating resolver to report the status even without DO.
            resolver.use_edns(0, _dnsflags.DO, 1232)
            resolver.flags = _dnsflags.RD | _dnsflags.AD
            self._dnspython = resolver
        return self._dnspython

    def mx(self, domain: str) -> Deferred[list[MXHost]]:
        """Where mail for ``domain`` goes, in delivery order.

        A null MX (RFC 7505) is DNSPermanent; no MX record falls back to
        the domain's own addresses.
        """
        pinned = self._pin("mx", domain)
        if pinned is not None:
            return self._checked_mx([(10 * (i + 1), h) for i, h in enumerate(pinned)], domain)
        d = self.backend.lookupMailExchange(domain, timeout=LOOKUP_TIMEOUT)

        def got(result: tuple[list[Any], list[Any], list[Any]]) -> Any:
            answers = [(p.preference, str(p.name)) for p in _names(result[0], dns.MX)]
            if not answers:
                return self._implicit_mx(domain)
            return self._checked_mx(answers, domain)

        return d.addCallbacks(got, lambda f: _classify(f, f"MX lookup for {domain}"))

    def _checked_mx(self, records: list[tuple[int, str]], domain: str) -> Any:
        if len(records) == 1 and records[0][1].rstrip(".") == "":
            return fail(DNSPermanent(f"{domain} does not accept mail (null MX)", status="5.1.10"))
        return succeed(order_mx([(p, h.rstrip(".")) for p, h in records if h.rstrip(".")]))

    def _implicit_mx(self, domain: str) -> Deferred[list[MXHost]]:
        def have(addresses: list[str]) -> list[MXHost]:
            if not addresses:
                raise DNSPermanent(f"{domain} has no MX and no address records")
            return [MXHost(0, domain, implicit=True)]

        return self.addresses(domain).addCallback(have)

    def addresses(self, host: str) -> Deferred[list[str]]:
        """A and AAAA addresses of ``host`` (IPv4 first); an IP literal is itself."""
        try:
            return succeed([str(ipaddress.ip_address(host.strip("[]")))])
        except ValueError:
            pass
        pinned = self._pin("hosts", host)
        if pinned is not None:
            return succeed(list(pinned))
        queries = [
            self.backend.lookupAddress(host, timeout=LOOKUP_TIMEOUT),
            self.backend.lookupIPV6Address(host, timeout=LOOKUP_TIMEOUT),
        ]

        def combine(results: list[tuple[bool, Any]]) -> list[str]:
            found: list[str] = []
            failures = []
            for ok, value in results:
                if ok:
                    found += [p.dottedQuad() if hasattr(p, "dottedQuad") else _ipv6(p) for p in
                              _names(value[0], dns.A) + _names(value[0], dns.AAAA)]
                else:
                    failures.append(value)
            if found or not failures:
                return found
            raise _classify(failures[0], f"address lookup for {host}").value

        return DeferredList(queries, consumeErrors=True).addCallback(combine)

    def ptr(self, ip: str) -> Deferred[list[str]]:
        """Reverse names of ``ip`` (not forward-confirmed; see :meth:`verified_ptr`)."""
        pinned = self._pin("ptr", ip)
        if pinned is not None:
            return succeed([n.rstrip(".").lower() for n in pinned])
        name = ipaddress.ip_address(ip).reverse_pointer
        d = self.backend.lookupPointer(name, timeout=LOOKUP_TIMEOUT)
        return d.addCallbacks(
            lambda r: [str(p.name).rstrip(".").lower() for p in _names(r[0], dns.PTR)],
            lambda f: _classify(f, f"PTR lookup for {ip}"),
        )

    def verified_ptr(self, ip: str) -> Deferred[list[str]]:
        """Reverse names whose forward lookup includes ``ip`` (never fails: [] instead)."""

        def confirm(names: list[str]) -> Deferred[list[str]]:
            peer = canonical_ip(ip)

            def confirmed(addrs: list[str], name: str) -> str | None:
                return name if peer in {canonical_ip(a) for a in addrs} else None

            checks = [self.addresses(n).addCallback(confirmed, n) for n in names[:5]]
            return DeferredList(checks, consumeErrors=True).addCallback(
                lambda results: [n for ok, n in results if ok and n]
            )

        return maybeDeferred(self.ptr, canonical_ip(ip)).addCallback(confirm).addErrback(lambda _: [])  # ptr() raises for a non-IP

    def txt(self, name: str) -> Deferred[list[str]]:
        pinned = self._pin("txt", name)
        if pinned is not None:
            return succeed(list(pinned))
        d = self.backend.lookupText(name, timeout=LOOKUP_TIMEOUT)
        return d.addCallbacks(
            lambda r: [b"".join(p.data).decode("utf-8", "replace") for p in _names(r[0], dns.TXT)],
            lambda f: _classify(f, f"TXT lookup for {name}"),
        )


class _KernelChosenPorts:
    """The reactor as twisted.names' client sees it, with one change: each query's UDP
    socket binds port 0, so the kernel picks a free port (at random: Linux randomises
    ephemeral ports, which is what source-port randomisation needs).

    The stock client picks random ports itself and retries when one is taken, and
    Twisted's UDP port leaks the socket of every failed bind (shown in
    tests/test_stock_twisted_faults.py); the leaked sockets are closed only by the
    garbage collector, with a ResourceWarning."""

    def __init__(self, reactor: Any):
        self._reactor = reactor

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        return self._reactor.listenUDP(0, protocol, interface, maxPacketSize)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def _authentic(response: Any) -> bool:
    return response is not None and bool(response.flags & _dnsflags.AD)


def _classify_dnspython(failure: Failure, what: str) -> Failure:
    """dnspython's failures as tlsmta's: all of them are worth a retry."""
    if failure.check(DNSError):
        return failure
    if failure.check(_dnsresolver.NoNameservers):
        return Failure(DNSTransient(f"{what}: server failure"))
    if failure.check(_dnsexc.Timeout):
        return Failure(DNSTransient(f"{what}: timed out"))
    if failure.check(_dnsresolver.NoResolverConfiguration):
        return Failure(DNSTransient(f"{what}: no resolver configured"))
    if failure.check(_dnsexc.DNSException, OSError):
        return Failure(DNSTransient(f"{what}: {failure.getErrorMessage() or type(failure.value).__name__}"))
    return failure  # a programming error: let it show


def canonical_ip(text: str) -> str:
    """An address in canonical form; IPv4-mapped IPv6 (dual-stack peers) as IPv4.
    Text that is not an address comes back unchanged."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _ipv6(payload: Any) -> str:
    return str(ipaddress.IPv6Address(payload.address))


class OfflineBackend(ResolverBase):
    """A twisted.names resolver that knows no names: tests never leave the machine."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        return fail(error.DNSNameError(name))
