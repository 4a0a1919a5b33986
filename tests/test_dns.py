"""Unit tests for :mod:`tlsmta.discovery._resolver`: pinned answers, MX ordering and failure classes.

No network: the real-resolver paths run against :class:`FakeBackend`, which
answers with twisted.names records built here or fails with the
twisted.names errors a real resolver raises.  Every Deferred involved has
already fired, so the tests are synchronous.
"""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns, error
from twisted.python.failure import Failure

from tlsmta.discovery._resolver import (
    LOOKUP_TIMEOUT,
    DNSPermanent,
    DNSTransient,
    MXHost,
    OfflineBackend,
    Resolver,
    below_self,
    order_mx,
)

# -- helpers --------------------------------------------------------------------------


def rr(name: str, payload) -> dns.RRHeader:
    return dns.RRHeader(name=name.encode(), type=payload.TYPE, payload=payload)


def mx(name: str, preference: int, host: str) -> dns.RRHeader:
    return rr(name, dns.Record_MX(preference, host.encode()))


def a(name: str, address: str) -> dns.RRHeader:
    return rr(name, dns.Record_A(address))


def aaaa(name: str, address: str) -> dns.RRHeader:
    return rr(name, dns.Record_AAAA(address))


def ptr(name: str, target: str) -> dns.RRHeader:
    return rr(name, dns.Record_PTR(target.encode()))


def txt(name: str, *strings: bytes) -> dns.RRHeader:
    return rr(name, dns.Record_TXT(*strings))


class FakeBackend:
    """A twisted.names-shaped resolver with canned answers and failures.

    ``answers[(kind, name)]`` is a list of RRHeaders for the answer section;
    ``failures[(kind, name)]`` an exception to fail with.  A name with
    neither gets an empty answer (NODATA).  Every query is recorded.
    """

    def __init__(self, answers=None, failures=None):
        self.answers = dict(answers or {})
        self.failures = dict(failures or {})
        self.calls: list[tuple[str, str, object]] = []

    def _query(self, kind: str, name, timeout) -> Deferred:
        name = name.decode() if isinstance(name, bytes) else name
        self.calls.append((kind, name, timeout))
        if (kind, name) in self.failures:
            return fail(self.failures[(kind, name)])
        return succeed((list(self.answers.get((kind, name), [])), [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._query("MX", name, timeout)

    def lookupAddress(self, name, timeout=None):
        return self._query("A", name, timeout)

    def lookupIPV6Address(self, name, timeout=None):
        return self._query("AAAA", name, timeout)

    def lookupPointer(self, name, timeout=None):
        return self._query("PTR", name, timeout)

    def lookupText(self, name, timeout=None):
        return self._query("TXT", name, timeout)


class NoBackend:
    """A backend that must not be asked anything (pinned and literal answers)."""

    def __getattr__(self, name):
        raise AssertionError(f"backend consulted: {name}")


def result_of(d: Deferred):
    """The value or Failure an already-fired Deferred holds (the failure is consumed)."""
    box = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    return box[0]


def success(d: Deferred):
    value = result_of(d)
    if isinstance(value, Failure):
        value.raiseException()
    return value


def failure(d: Deferred, kind: type[BaseException]) -> BaseException:
    value = result_of(d)
    assert isinstance(value, Failure), f"expected {kind.__name__}, got {value!r}"
    assert value.check(kind), value
    return value.value


def servfail():
    return error.DNSServerError("SERVFAIL")


def timeout():
    return error.DNSQueryTimeoutError(1)


def nxdomain():
    return error.DNSNameError("NXDOMAIN")


# -- order_mx ---------------------------------------------------------------------------


def test_order_mx_sorts_by_preference():
    """Hosts come out by ascending preference, whatever order the records came in."""
    keep = lambda hosts: None  # noqa: E731 - no shuffling
    ordered = order_mx([(30, "c"), (10, "a"), (20, "b")], rng=keep)
    assert ordered == [MXHost(10, "a"), MXHost(20, "b"), MXHost(30, "c")]


def test_order_mx_randomises_only_within_equal_preference():
    """The rng is applied to each group of equal preference, never across groups."""
    groups = []

    def reverse(hosts):
        groups.append(list(hosts))
        hosts.reverse()

    ordered = order_mx([(10, "a1"), (20, "b1"), (10, "a2"), (10, "a3"), (20, "b2")], rng=reverse)
    assert [h.host for h in ordered] == ["a3", "a2", "a1", "b2", "b1"]
    assert sorted(map(sorted, groups)) == [["a1", "a2", "a3"], ["b1", "b2"]]


def test_order_mx_equal_preferences_share_first_place():
    """With a real (seeded) shuffle, each of the equal-preference hosts is sometimes first,
    and the lower-preference host never is."""
    rng = random.Random(4)
    firsts = {order_mx([(10, "x"), (10, "y"), (10, "z"), (5, "w")], rng=rng.shuffle)[1].host for _ in range(200)}
    assert firsts == {"x", "y", "z"}
    assert all(order_mx([(10, "x"), (5, "w")], rng=rng.shuffle)[0].host == "w" for _ in range(20))


def test_below_self_keeps_only_mx_preferred_over_us():
    """RFC 5321 5.1: with us at preference 20, every MX at 20 or more goes (equal ones too)."""
    mxs = [MXHost(10, "a1"), MXHost(10, "a2"), MXHost(20, "b1"), MXHost(20, "us"), MXHost(30, "c")]
    assert below_self(mxs, lambda mx: mx.host == "us") == [MXHost(10, "a1"), MXHost(10, "a2")]
    assert below_self(mxs, lambda mx: mx.host in ("us", "a2")) == []  # our lowest preference counts
    assert below_self(mxs, lambda mx: False) == mxs


# -- pinned answers ------------------------------------------------------------------------


def test_pinned_mx_in_given_order_without_query():
    """Pinned MX hosts keep their listed order and the backend is never asked."""
    resolver = Resolver({"mx": {"example.test": ("mx1.example.test", "mx2.example.test", "mx3.example.test")}}, NoBackend())
    hosts = success(resolver.mx("example.test"))
    assert [h.host for h in hosts] == ["mx1.example.test", "mx2.example.test", "mx3.example.test"]
    assert [h.preference for h in hosts] == sorted({h.preference for h in hosts})
    assert not any(h.implicit for h in hosts)


def test_pinned_lookup_ignores_case_and_trailing_dot():
    """A query for Example.TEST. finds the answer pinned for example.test."""
    resolver = Resolver({"mx": {"example.test": ("mx1.example.test",)}, "hosts": {"mx1.example.test": ("192.0.2.1",)}},
                        NoBackend())
    assert [h.host for h in success(resolver.mx("Example.TEST."))] == ["mx1.example.test"]
    assert success(resolver.addresses("MX1.example.test.")) == ["192.0.2.1"]


def test_pinned_null_mx_is_permanent():
    """A pinned "." MX is RFC 7505 null MX: a permanent failure."""
    resolver = Resolver({"mx": {"nomail.test": (".",)}}, NoBackend())
    e = failure(resolver.mx("nomail.test"), DNSPermanent)
    assert e.permanent
    assert "null MX" in str(e)


def test_pinned_hosts_ptr_txt():
    """Pinned hosts, ptr and txt tables answer without a query (PTR names lower-cased, no dot)."""
    resolver = Resolver(
        {
            "hosts": {"mx1.example.test": ("127.0.0.1", "::1")},
            "ptr": {"192.0.2.7": ("Client.Example.TEST.",)},
            "txt": {"_mta-sts.example.test": ("v=STSv1; id=1",)},
        },
        NoBackend(),
    )
    assert success(resolver.addresses("mx1.example.test")) == ["127.0.0.1", "::1"]
    assert success(resolver.ptr("192.0.2.7")) == ["client.example.test"]
    assert success(resolver.txt("_mta-sts.example.test")) == ["v=STSv1; id=1"]


def test_unpinned_names_go_to_the_backend():
    """A name missing from the pinned table is looked up for real, with LOOKUP_TIMEOUT."""
    backend = FakeBackend({("MX", "other.test"): [mx("other.test", 10, "mx.other.test")]})
    resolver = Resolver({"mx": {"example.test": ("mx1.example.test",)}}, backend)
    assert [h.host for h in success(resolver.mx("other.test"))] == ["mx.other.test"]
    assert backend.calls == [("MX", "other.test", LOOKUP_TIMEOUT)]


@pytest.mark.parametrize("literal, expected", [("192.0.2.1", "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"),
                                               ("::1", "::1"), ("[2001:DB8::1]", "2001:db8::1")])
def test_ip_literal_is_its_own_address(literal, expected):
    """An IP literal (bracketed or not) resolves to itself without a query."""
    assert success(Resolver({}, NoBackend()).addresses(literal)) == [expected]


# -- real MX lookups ---------------------------------------------------------------------


def test_real_mx_ordered_by_preference():
    """MX records from the resolver come back ordered by preference, trailing dots removed."""
    backend = FakeBackend({("MX", "example.test"): [
        mx("example.test", 20, "backup.example.test."),
        mx("example.test", 5, "primary.example.test."),
        a("example.test", "192.0.2.9"),  # not an MX record: ignored
    ]})
    hosts = success(Resolver({}, backend).mx("example.test"))
    assert hosts == [MXHost(5, "primary.example.test"), MXHost(20, "backup.example.test")]


@pytest.mark.parametrize("target", ["", "."])
def test_real_null_mx_is_permanent(target):
    """A single MX record with an empty target (RFC 7505) is a permanent failure, and the
    domain's addresses are not used as a fallback."""
    backend = FakeBackend({
        ("MX", "nomail.test"): [mx("nomail.test", 0, target)],
        ("A", "nomail.test"): [a("nomail.test", "192.0.2.1")],
    })
    e = failure(Resolver({}, backend).mx("nomail.test"), DNSPermanent)
    assert "null MX" in str(e)
    assert [c[0] for c in backend.calls] == ["MX"]


@pytest.mark.parametrize(
    "exc, kind",
    [(nxdomain(), DNSPermanent), (servfail(), DNSTransient), (timeout(), DNSTransient),
     (error.DNSQueryRefusedError("refused"), DNSTransient), (RuntimeError("odd"), DNSTransient)],
)
def test_mx_failure_classes(exc, kind):
    """NXDOMAIN is permanent; SERVFAIL, timeouts, refusals and anything unexpected are transient."""
    backend = FakeBackend(failures={("MX", "example.test"): exc})
    e = failure(Resolver({}, backend).mx("example.test"), kind)
    assert e.permanent is (kind is DNSPermanent)
    assert "example.test" in str(e)


def test_no_mx_falls_back_to_addresses():
    """No MX record but an A record: the domain itself is the (implicit) mail host."""
    backend = FakeBackend({("A", "example.test"): [a("example.test", "192.0.2.1")]})
    assert success(Resolver({}, backend).mx("example.test")) == [MXHost(0, "example.test", implicit=True)]


def test_no_mx_falls_back_to_ipv6_only():
    """An AAAA record alone is enough for the implicit MX."""
    backend = FakeBackend({("AAAA", "example.test"): [aaaa("example.test", "2001:db8::25")]})
    assert success(Resolver({}, backend).mx("example.test")) == [MXHost(0, "example.test", implicit=True)]


def test_no_mx_and_no_address_is_permanent():
    """Neither MX nor A/AAAA records (NODATA everywhere): permanent failure."""
    e = failure(Resolver({}, FakeBackend()).mx("example.test"), DNSPermanent)
    assert "no MX and no address" in str(e)


def test_no_mx_and_address_lookup_servfail_is_transient():
    """No MX and the address lookups fail with SERVFAIL: try again later, do not bounce."""
    backend = FakeBackend(failures={("A", "example.test"): servfail(), ("AAAA", "example.test"): servfail()})
    failure(Resolver({}, backend).mx("example.test"), DNSTransient)


# -- addresses ---------------------------------------------------------------------------


def test_addresses_ipv4_first_then_ipv6():
    """A records come before AAAA records; IPv6 addresses are in compressed text form."""
    backend = FakeBackend({
        ("AAAA", "mx.test"): [aaaa("mx.test", "2001:0db8:0000:0000:0000:0000:0000:0001")],
        ("A", "mx.test"): [a("mx.test", "192.0.2.1"), a("mx.test", "192.0.2.2")],
    })
    assert success(Resolver({}, backend).addresses("mx.test")) == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    assert {c[0] for c in backend.calls} == {"A", "AAAA"}


def test_addresses_one_family_failing_is_tolerated():
    """If one of the A/AAAA lookups fails but the other answers, the answer is used."""
    backend = FakeBackend({("A", "mx.test"): [a("mx.test", "192.0.2.1")]},
                          failures={("AAAA", "mx.test"): timeout()})
    assert success(Resolver({}, backend).addresses("mx.test")) == ["192.0.2.1"]


def test_addresses_both_fail():
    """Both address lookups failing: NXDOMAIN is permanent, SERVFAIL transient."""
    nx = FakeBackend(failures={("A", "mx.test"): nxdomain(), ("AAAA", "mx.test"): nxdomain()})
    failure(Resolver({}, nx).addresses("mx.test"), DNSPermanent)
    sf = FakeBackend(failures={("A", "mx.test"): servfail(), ("AAAA", "mx.test"): servfail()})
    failure(Resolver({}, sf).addresses("mx.test"), DNSTransient)


def test_addresses_nodata_is_empty_list():
    """A name with no address records (and no failure) resolves to an empty list."""
    assert success(Resolver({}, FakeBackend()).addresses("mx.test")) == []


# -- PTR, forward-confirmed PTR, TXT ------------------------------------------------------------


def test_ptr_queries_reverse_name():
    """ptr() asks for the in-addr.arpa name and returns lower-case names without the dot."""
    backend = FakeBackend({("PTR", "7.2.0.192.in-addr.arpa"): [ptr("7.2.0.192.in-addr.arpa", "Client.Example.TEST.")]})
    assert success(Resolver({}, backend).ptr("192.0.2.7")) == ["client.example.test"]
    assert backend.calls == [("PTR", "7.2.0.192.in-addr.arpa", LOOKUP_TIMEOUT)]


def test_ptr_failures_are_classified():
    """A PTR NXDOMAIN is permanent, a timeout transient."""
    name = "7.2.0.192.in-addr.arpa"
    failure(Resolver({}, FakeBackend(failures={("PTR", name): nxdomain()})).ptr("192.0.2.7"), DNSPermanent)
    failure(Resolver({}, FakeBackend(failures={("PTR", name): timeout()})).ptr("192.0.2.7"), DNSTransient)


def test_verified_ptr_keeps_only_forward_confirmed_names():
    """Only reverse names whose own addresses include the IP are returned."""
    rev = "7.2.0.192.in-addr.arpa"
    backend = FakeBackend({
        ("PTR", rev): [ptr(rev, "good.example.test"), ptr(rev, "liar.example.test"), ptr(rev, "broken.example.test")],
        ("A", "good.example.test"): [a("good.example.test", "192.0.2.7")],
        ("A", "liar.example.test"): [a("liar.example.test", "198.51.100.1")],
    }, failures={("A", "broken.example.test"): servfail(), ("AAAA", "broken.example.test"): servfail()})
    assert success(Resolver({}, backend).verified_ptr("192.0.2.7")) == ["good.example.test"]


def test_verified_ptr_never_fails():
    """A failing PTR lookup gives an empty list, not an error."""
    backend = FakeBackend(failures={("PTR", "7.2.0.192.in-addr.arpa"): servfail()})
    assert success(Resolver({}, backend).verified_ptr("192.0.2.7")) == []


def test_verified_ptr_with_pinned_tables():
    """Pinned ptr and hosts tables are used for both halves of the check."""
    resolver = Resolver({"ptr": {"192.0.2.7": ("good.test", "bad.test")},
                         "hosts": {"good.test": ("192.0.2.7",), "bad.test": ("192.0.2.8",)}}, NoBackend())
    assert success(resolver.verified_ptr("192.0.2.7")) == ["good.test"]


def test_txt_joins_strings_of_each_record():
    """Each TXT record is one string: its character-strings concatenated."""
    backend = FakeBackend({("TXT", "_mta-sts.example.test"): [
        txt("_mta-sts.example.test", b"v=STSv1; ", b"id=20261125"),
        txt("_mta-sts.example.test", b"other"),
    ]})
    assert success(Resolver({}, backend).txt("_mta-sts.example.test")) == ["v=STSv1; id=20261125", "other"]


def test_txt_failures_are_classified():
    """TXT NXDOMAIN is permanent, SERVFAIL transient."""
    failure(Resolver({}, FakeBackend(failures={("TXT", "x.test"): nxdomain()})).txt("x.test"), DNSPermanent)
    failure(Resolver({}, FakeBackend(failures={("TXT", "x.test"): servfail()})).txt("x.test"), DNSTransient)


# -- OfflineBackend -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lookupMailExchange", "lookupAddress", "lookupIPV6Address", "lookupPointer",
                                    "lookupText"])
def test_offline_backend_knows_no_names(method):
    """Every lookup on the OfflineBackend fails with DNSNameError, at once."""
    failure(getattr(OfflineBackend(), method)("example.test", timeout=LOOKUP_TIMEOUT), error.DNSNameError)


def test_resolver_on_offline_backend():
    """Through the Resolver, an offline lookup is NXDOMAIN: permanent; pinned names still work."""
    resolver = Resolver({"mx": {"pinned.test": ("mx.pinned.test",)}}, OfflineBackend())
    failure(resolver.mx("example.test"), DNSPermanent)
    failure(resolver.addresses("mx.example.test"), DNSPermanent)
    assert success(resolver.verified_ptr("192.0.2.1")) == []
    assert [h.host for h in success(resolver.mx("pinned.test"))] == ["mx.pinned.test"]


@pytest.mark.parametrize("peer", ["unknown", "UNIXAddress('/run/tlsmta.sock')", ""])
def test_verified_ptr_of_non_ip_peer_is_empty(peer):
    """A peer that is not an IP address (UNIX socket, unknown) has no verified names; the
    lookup still returns a Deferred of [] rather than raising."""
    assert success(Resolver({}, NoBackend()).verified_ptr(peer)) == []


def test_verified_ptr_accepts_ipv4_mapped_peer():
    """A dual-stack listener sees ::ffff:192.0.2.7; its PTR and forward lookup use the IPv4 form."""
    from tlsmta.discovery._resolver import OfflineBackend, Resolver

    resolver = Resolver({"ptr": {"192.0.2.7": ("client.test",)}, "hosts": {"client.test": ("192.0.2.7",)}}, OfflineBackend())
    out = []
    resolver.verified_ptr("::ffff:192.0.2.7").addCallback(out.append)
    assert out == [["client.test"]]


# -- DNSSEC status (dnspython side; the queries themselves are exercised in test_dane.py) ---------


def test_pinned_answer_and_pinned_secure():
    """pinned_answer reads a [dns] table by owner name; pinned_secure maps record types to tables."""
    resolver = Resolver(
        {"mx": {"example.test": ("mx1.example.test",)}, "hosts": {"mx1.example.test": ("127.0.0.1",)},
         "tlsa": {"_25._tcp.mx1.example.test": ("3 1 1 " + "00" * 32,)}, "txt": {"_smtp._tls.example.test": ("v=TLSRPTv1",)}},
        NoBackend(),
    )
    assert resolver.pinned_answer("tlsa", "_25._tcp.MX1.example.test.") == ("3 1 1 " + "00" * 32,)
    assert resolver.pinned_answer("tlsa", "_25._tcp.mx2.example.test") is None
    assert resolver.pinned_secure("example.test", "MX")
    assert resolver.pinned_secure("mx1.example.test", "a") and resolver.pinned_secure("mx1.example.test", "AAAA")
    assert resolver.pinned_secure("_25._tcp.mx1.example.test", "TLSA")
    assert resolver.pinned_secure("_smtp._tls.example.test", "TXT")
    assert not resolver.pinned_secure("mx1.example.test", "MX")
    assert not resolver.pinned_secure("example.test", "SRV")


@pytest.mark.parametrize(
    "exception, words",
    [
        ("NoNameservers", "server failure"),
        ("LifetimeTimeout", "timed out"),
        ("NoResolverConfiguration", "no resolver configured"),
        ("OSError", "unreachable"),
    ],
)
def test_dnspython_failures_are_transient(exception, words):
    """Every dnspython failure of a DNSSEC query is DNSTransient naming the query (retry later)."""
    import dns.resolver

    from tlsmta.discovery._resolver import _classify_dnspython

    made = {
        "NoNameservers": lambda: dns.resolver.NoNameservers(),
        "LifetimeTimeout": lambda: dns.resolver.LifetimeTimeout(timeout=6.0, errors=[]),
        "NoResolverConfiguration": lambda: dns.resolver.NoResolverConfiguration(),
        "OSError": lambda: OSError("network unreachable"),
    }[exception]()
    result = _classify_dnspython(Failure(made), "TLSA lookup for _25._tcp.mx.test")
    assert result.check(DNSTransient)
    assert str(result.value).startswith("TLSA lookup for _25._tcp.mx.test: ")
    assert words in str(result.value)


def test_dnspython_programming_errors_are_not_hidden():
    """An exception that is not a DNS failure passes through unchanged (it is a bug to see)."""
    from tlsmta.discovery._resolver import _classify_dnspython

    result = _classify_dnspython(Failure(KeyError("x")), "TLSA lookup")
    assert result.check(KeyError)


@pytest_twisted.ensureDeferred
async def test_nameservers_answer_every_lookup() -> None:
    """With [dns] nameservers, twisted.names and the DNSSEC queries both go to that server (here a real
    zone server on loopback), never to /etc/resolv.conf's."""
    from dns_lab import start_dns
    from twisted.internet import reactor

    zone = start_dns("example.test", {"example.test": [dns.Record_MX(10, b"mx1.example.test", ttl=60)],
                                      "mx1.example.test": [dns.Record_A("127.0.0.9", ttl=60)]})
    try:
        resolver = Resolver({}, nameservers=[("127.0.0.1", zone.port)], reactor=reactor)
        assert await resolver.mx("example.test") == [MXHost(10, "mx1.example.test")]
        assert await resolver.addresses("mx1.example.test") == ["127.0.0.9"]
        answer = await resolver.dnssec_query("_25._tcp.mx1.example.test", "TLSA")
        assert answer.rdatas == () and not answer.secure  # NXDOMAIN from an unsigned zone
        resolver.nameservers = [("127.0.0.1", zone.port)]  # a reload rebuilds both clients
        assert await resolver.addresses("mx1.example.test") == ["127.0.0.9"]
    finally:
        zone.stop()
    assert ("example.test", "MX") in zone.queries and ("_25._tcp.mx1.example.test", "52") in zone.queries


@pytest_twisted.ensureDeferred
async def test_lookups_do_not_depend_on_a_random_port_being_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """twisted.names picks each query's source port at random and retries when it is taken, leaking
    a socket per failure; our client lets the kernel choose, so a taken port costs nothing."""
    import socket

    from dns_lab import start_dns
    from twisted.internet import reactor
    from twisted.names import dns as names_dns

    zone = start_dns("example.test", {"mx1.example.test": [dns.Record_A("127.0.0.9", ttl=60)]})
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        taken.bind(("0.0.0.0", 0))
        monkeypatch.setattr(names_dns, "randomSource", lambda: taken.getsockname()[1])  # every pick collides
        resolver = Resolver({}, nameservers=[("127.0.0.1", zone.port)], reactor=reactor)
        assert await resolver.addresses("mx1.example.test") == ["127.0.0.9"]
    finally:
        zone.stop()
        taken.close()
