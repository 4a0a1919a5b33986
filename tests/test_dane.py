"""Tests for :mod:`tlsmta.discovery._dane`: TLSA records, the DANE verdict, and the lookups.

The verdict tests are pure (certificates from trustme, no reactor).  The
lookup tests use pinned answers and a real DNS server on loopback
(twisted.names answering TLSA as raw records, with or without the AD bit),
so dnspython's query path really runs.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools

import pytest
import pytest_twisted
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor
from twisted.names import dns, error
from twisted.names.server import DNSServerFactory

from tlsmta.discovery import _dane as dane
from tlsmta.discovery._dane import MatchingType, Selector, TLSAAnswer, TLSARecord, Usage, record_for, verify_chain
from tlsmta.discovery._resolver import DNSTransient, OfflineBackend, Resolver
from tlsmta.tls._policy import Outcome

NOW = datetime.datetime.now(datetime.timezone.utc)
MX = "mx.example.test"
DOMAIN = "example.test"


def certs(leaf: trustme.LeafCert, *cas: trustme.CA) -> list[x509.Certificate]:
    """The chain as a server presents it (leaf, intermediates), plus any CA certificates given."""
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in leaf.cert_chain_pems]
    return chain + [x509.load_pem_x509_certificate(ca.cert_pem.bytes()) for ca in cas]


def ca_cert(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


@pytest.fixture(scope="module")
def root() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def intermediate(root: trustme.CA) -> trustme.CA:
    return root.create_child_ca()


@pytest.fixture(scope="module")
def leaf(intermediate: trustme.CA) -> trustme.LeafCert:
    """mx.example.test, issued by the intermediate."""
    return intermediate.issue_cert(MX)


ALL_COMBINATIONS = list(itertools.product((Selector.CERT, Selector.SPKI), (MatchingType.FULL, MatchingType.SHA256, MatchingType.SHA512)))


# -- records ----------------------------------------------------------------------------


def test_parse_and_present_round_trip():
    """Presentation form parses into fields and str() gives it back (hex lower-case, one word)."""
    digest = hashlib.sha256(b"x").hexdigest()
    record = TLSARecord.parse(f"3 1 1 {digest[:10].upper()} {digest[10:]}")
    assert (record.usage, record.selector, record.matching_type) == (3, 1, 1)
    assert record.data == bytes.fromhex(digest)
    assert str(record) == f"3 1 1 {digest}"
    assert TLSARecord.parse(str(record)) == record


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("3 1 1", "expected 'usage selector matching-type hex-data'"),
        ("", "expected"),
        ("x 1 1 00", "usage 'x' is not a number"),
        ("3 256 1 00", "selector '256' is not a number from 0 to 255"),
        ("3 1 -1 00", "matching type '-1'"),
        ("3 1 0 zz", "not hexadecimal"),
        ("3 1 0 abc", "not hexadecimal"),
        ("3 1 1 " + "00" * 31, "SHA256 data must be 32 bytes, got 31"),
        ("3 1 2 " + "00" * 32, "SHA512 data must be 64 bytes, got 32"),
    ],
)
def test_parse_rejects_malformed_record_with_reason(text, complaint):
    """Malformed presentation text raises ValueError that says what is wrong."""
    with pytest.raises(ValueError, match="TLSA record") as info:
        TLSARecord.parse(text)
    assert complaint in str(info.value)


def test_unknown_values_parse_but_are_unusable():
    """Unknown usage/selector/matching type values parse (they are legal DNS data) and are unusable."""
    assert not TLSARecord.parse("4 1 1 " + "00" * 32).usable
    assert not TLSARecord.parse("3 2 0 00").usable
    assert not TLSARecord.parse("3 1 3 00").usable


@pytest.mark.parametrize("usage, usable", [(0, False), (1, False), (2, True), (3, True)])
def test_only_dane_usages_are_usable(usage, usable):
    """RFC 7672 3.1: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP; DANE-TA(2) and DANE-EE(3) are."""
    record = TLSARecord(usage, 1, 1, b"\0" * 32)
    assert record.usable is usable
    answer = TLSAAnswer((record, TLSARecord(3, 1, 1, b"\1" * 32)), secure=True)
    assert len(answer.usable) == (2 if usable else 1)


def test_digest_of_wrong_length_is_unusable():
    """A record built from DNS data with a short SHA-256 digest is not usable (it cannot match anyway)."""
    assert not TLSARecord(3, 1, 1, b"\0" * 31).usable
    assert not TLSARecord(3, 1, 0, b"").usable


def test_field_values_are_bytes_range_checked():
    """The attrs class refuses field values outside 0-255."""
    with pytest.raises(ValueError):
        TLSARecord(256, 1, 1, b"\0" * 32)


def test_spki_selector_is_the_certificate_encoding(leaf):
    """Selector 1 hashes the SubjectPublicKeyInfo as the certificate encodes it (here equal to the
    re-encoded key), and selector 0 the whole DER certificate."""
    cert = certs(leaf)[0]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert dane.spki_der(cert) == spki
    assert record_for(cert, 3, 1, 0).data == spki
    assert record_for(cert, 3, 0, 1).data == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    assert record_for(cert, 3, 1, 2).data == hashlib.sha512(spki).digest()


# -- DANE-EE(3) ---------------------------------------------------------------------------


@pytest.mark.parametrize("selector, mtype", ALL_COMBINATIONS)
def test_dane_ee_matches_leaf_in_every_combination(leaf, selector, mtype):
    """3 S M for the leaf verifies, for every selector and matching type."""
    chain = certs(leaf)
    verdict = verify_chain([record_for(chain[0], Usage.DANE_EE, selector, mtype)], chain, [MX], NOW)
    assert verdict.outcome is Outcome.VERIFIED, verdict
    assert verdict.reason.startswith("dane: DANE-EE(3)")


@pytest.mark.parametrize("selector, mtype", ALL_COMBINATIONS)
def test_dane_ee_mismatch_fails(leaf, selector, mtype):
    """3 S M for another certificate fails with a dane: reason."""
    other = certs(trustme.CA().issue_cert(MX))[0]
    verdict = verify_chain([record_for(other, Usage.DANE_EE, selector, mtype)], certs(leaf), [MX], NOW)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason == "dane: no TLSA record matched the certificate chain"
    assert verdict.fatal


def test_dane_ee_ignores_names_and_dates(root):
    """RFC 7672 3.1.1: under DANE-EE an expired certificate with a wrong name verifies."""
    past = NOW - datetime.timedelta(days=30)
    expired_wrong = certs(root.issue_cert("other.example.net", not_before=past - datetime.timedelta(days=60), not_after=past))
    verdict = verify_chain([record_for(expired_wrong[0])], expired_wrong, [MX, DOMAIN], NOW)
    assert verdict.outcome is Outcome.VERIFIED


def test_dane_ee_only_looks_at_the_leaf(leaf, intermediate):
    """A 3 x x record matching an intermediate does not verify anything."""
    chain = certs(leaf)
    verdict = verify_chain([record_for(chain[1], Usage.DANE_EE)], chain, [MX], NOW)
    assert verdict.outcome is Outcome.FAILED


def test_self_signed_leaf_under_dane_ee():
    """The usual DANE deployment: a self-signed certificate pinned by 3 1 1."""
    ca = trustme.CA()
    self_signed = ca_cert(ca)
    assert verify_chain([record_for(self_signed)], [self_signed], [MX], NOW).verified


# -- DANE-TA(2) ---------------------------------------------------------------------------


@pytest.mark.parametrize("selector, mtype", ALL_COMBINATIONS)
def test_dane_ta_root_in_chain_every_combination(root, leaf, selector, mtype):
    """2 S M for the root, which the server includes in its chain, verifies the leaf for MX."""
    chain = certs(leaf, root)
    verdict = verify_chain([record_for(chain[-1], Usage.DANE_TA, selector, mtype)], chain, [MX, DOMAIN], NOW)
    assert verdict.outcome is Outcome.VERIFIED, verdict
    assert verdict.matched_name == MX
    assert verdict.reason.startswith("dane: DANE-TA(2)")


@pytest.mark.parametrize("selector, mtype", ALL_COMBINATIONS)
def test_dane_ta_intermediate_in_the_middle(leaf, root, selector, mtype):
    """A TA record for the intermediate (in the middle of leaf, intermediate, root) verifies."""
    chain = certs(leaf, root)
    verdict = verify_chain([record_for(chain[1], Usage.DANE_TA, selector, mtype)], chain, [MX], NOW)
    assert verdict.outcome is Outcome.VERIFIED, verdict


def test_dane_ta_root_not_presented_does_not_match(leaf, root):
    """A digest record for a root the server did not send cannot be matched (RFC 7671 5.2.2)."""
    verdict = verify_chain([record_for(ca_cert(root), Usage.DANE_TA)], certs(leaf), [MX], NOW)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason == "dane: no TLSA record matched the certificate chain"


def test_dane_ta_bare_public_key_not_in_chain(leaf, root):
    """2 1 0 with the root's full key verifies even when the server omits the root."""
    record = record_for(ca_cert(root), Usage.DANE_TA, Selector.SPKI, MatchingType.FULL)
    verdict = verify_chain([record], certs(leaf), [MX], NOW)
    assert verdict.outcome is Outcome.VERIFIED, verdict


def test_dane_ta_bare_key_of_a_stranger_fails(leaf):
    """2 1 0 with a key that signed nothing in the chain fails."""
    record = record_for(ca_cert(trustme.CA()), Usage.DANE_TA, Selector.SPKI, MatchingType.FULL)
    assert verify_chain([record], certs(leaf), [MX], NOW).outcome is Outcome.FAILED


def test_dane_ta_wrong_name_fails(root):
    """Under DANE-TA the leaf must name the MX host or the next-hop domain."""
    chain = certs(root.issue_cert("other.example.net"), root)
    verdict = verify_chain([record_for(chain[-1], Usage.DANE_TA)], chain, [MX, DOMAIN], NOW)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason == f"dane: certificate name does not match {MX} or {DOMAIN}"
    # ... and the same certificate pinned by DANE-EE verifies.
    assert verify_chain([record_for(chain[0])], chain, [MX, DOMAIN], NOW).verified


def test_dane_ta_accepts_next_hop_domain_and_wildcard(root):
    """The next-hop domain is a reference name too, and a leading wildcard matches one label."""
    chain = certs(root.issue_cert(DOMAIN, "*.mail.example.test"), root)
    record = record_for(chain[-1], Usage.DANE_TA)
    assert verify_chain([record], chain, ["mx9.other.test", DOMAIN], NOW).matched_name == DOMAIN
    assert verify_chain([record], chain, ["mx1.mail.example.test"], NOW).verified
    assert not verify_chain([record], chain, ["a.b.mail.example.test"], NOW).verified


def test_dane_ta_expired_leaf_fails(root):
    """Under DANE-TA an expired leaf fails (and verifies under DANE-EE)."""
    past = NOW - datetime.timedelta(days=30)
    chain = certs(root.issue_cert(MX, not_before=past - datetime.timedelta(days=60), not_after=past), root)
    verdict = verify_chain([record_for(chain[-1], Usage.DANE_TA)], chain, [MX], NOW)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason.startswith("dane: chain does not verify from the DANE-TA trust anchor")
    assert verify_chain([record_for(chain[0])], chain, [MX], NOW).verified


def test_dane_ta_not_the_issuer_fails(leaf, root):
    """A TA record matching a CA certificate that did not issue the chain fails, even if presented."""
    stranger = ca_cert(trustme.CA())
    chain = certs(leaf) + [stranger]
    verdict = verify_chain([record_for(stranger, Usage.DANE_TA)], chain, [MX], NOW)
    assert verdict.outcome is Outcome.FAILED
    assert "does not verify" in verdict.reason


def test_dane_ta_record_matching_the_leaf_is_not_an_anchor(leaf):
    """A 2 x x record that matches the leaf itself is not taken as a trust anchor."""
    chain = certs(leaf)
    assert verify_chain([record_for(chain[0], Usage.DANE_TA)], chain, [MX], NOW).outcome is Outcome.FAILED


def test_unusable_records_are_ignored(leaf, root):
    """PKIX-TA/PKIX-EE records matching the chain are ignored; a usable record alongside decides."""
    chain = certs(leaf, root)
    pkix = [record_for(chain[0], Usage.PKIX_EE), record_for(chain[-1], Usage.PKIX_TA)]
    only_pkix = verify_chain(pkix, chain, [MX], NOW)
    assert only_pkix.outcome is Outcome.FAILED and only_pkix.reason == "dane: no usable TLSA records"
    assert verify_chain(pkix + [record_for(chain[0])], chain, [MX], NOW).verified


def test_any_matching_record_is_enough(leaf):
    """One record of the RRset matching is enough (key rollover: old and new published together)."""
    chain = certs(leaf)
    other = certs(trustme.CA().issue_cert(MX))[0]
    assert verify_chain([record_for(other), record_for(chain[0], 3, 0, 2)], chain, [MX], NOW).verified


def test_no_certificate_presented(leaf):
    """An empty chain fails."""
    assert verify_chain([record_for(certs(leaf)[0])], [], [MX], NOW).reason == "dane: no certificate presented"


# -- lookups: pinned -----------------------------------------------------------------------


def fired(d: defer.Deferred):
    box = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    return box[0]


class NoBackend:
    def __getattr__(self, name):
        raise AssertionError(f"backend consulted: {name}")


def test_pinned_tlsa_answer_is_secure():
    """[dns.tlsa] answers are parsed and count as DNSSEC-secure, without any query."""
    record = "3 1 1 " + "ab" * 32
    resolver = Resolver({"tlsa": {"_25._tcp.mx1.example.test": (record, "0 0 1 " + "cd" * 32)}}, NoBackend())
    answer = fired(dane.lookup_tlsa(resolver, "MX1.example.test."))
    assert answer == TLSAAnswer((TLSARecord.parse(record), TLSARecord.parse("0 0 1 " + "cd" * 32)), secure=True)
    assert answer.usable == (TLSARecord.parse(record),)


def test_pinned_tlsa_uses_the_port():
    """The owner name carries the port: _PORT._tcp.HOST."""
    resolver = Resolver({"tlsa": {"_2525._tcp.mx1.example.test": ("3 1 1 " + "ab" * 32,)}}, NoBackend())
    assert fired(dane.lookup_tlsa(resolver, "mx1.example.test", 2525)).secure
    assert dane.tlsa_name("MX1.Example.test.", 2525) == "_2525._tcp.mx1.example.test"


def test_pinned_malformed_tlsa_is_transient_naming_the_key():
    """A malformed pinned record fails the lookup as DNSTransient naming [dns.tlsa] and the key."""
    resolver = Resolver({"tlsa": {"_25._tcp.mx1.example.test": ("3 1 1 xyz",)}}, NoBackend())
    result = fired(dane.lookup_tlsa(resolver, "mx1.example.test"))
    assert result.check(DNSTransient)
    assert "[dns.tlsa] '_25._tcp.mx1.example.test'" in str(result.value)


def test_pinned_rrsets_are_secure():
    """is_secure: a pinned MX or host RRset is secure, without a query."""
    resolver = Resolver({"mx": {"example.test": ("mx1.example.test",)}, "hosts": {"mx1.example.test": ("127.0.0.1",)}},
                        NoBackend())
    assert fired(dane.is_secure(resolver, "example.test", "MX")) is True
    assert fired(dane.is_secure(resolver, "mx1.example.test", "A")) is True
    assert fired(dane.is_secure(resolver, "mx1.example.test", "AAAA")) is True


# -- lookups: a real DNS server on loopback ---------------------------------------------------


TLSA_TYPE = 52


def tlsa_rdata(record: TLSARecord) -> bytes:
    return bytes([record.usage, record.selector, record.matching_type]) + record.data


class Zone:
    """Answers for the loopback server: RRsets by (name, type), failures by name."""

    def __init__(self):
        self.rrsets: dict[tuple[str, int], list[dns.RRHeader]] = {}
        self.servfail: set[str] = set()
        self.nxdomain: set[str] = set()
        self.queries: list[tuple[str, int]] = []
        self.dnssec_ok: list[bool] = []  # the DO bit of each query

    def add_tlsa(self, name: str, *records: TLSARecord) -> None:
        self.rrsets[(name, TLSA_TYPE)] = [
            dns.RRHeader(name.encode(), TLSA_TYPE, dns.IN, 300, dns.UnknownRecord(tlsa_rdata(r), 300), auth=True)
            for r in records
        ]

    def query(self, query: dns.Query, timeout=None):
        name = query.name.name.decode().lower()
        self.queries.append((name, query.type))
        if name in self.servfail:
            return defer.fail(error.DNSServerError(name))
        if name in self.nxdomain:
            return defer.fail(error.AuthoritativeDomainError(name))
        return defer.succeed((self.rrsets.get((name, query.type), []), [], []))


class ADServer(DNSServerFactory):
    """A DNS server that sets (or not) the AD bit on every answer, like a validating resolver."""

    _messageFactory = dns._EDNSMessage

    def __init__(self, zone: Zone, authentic: bool):
        super().__init__(verbose=0)
        self.resolver = zone
        self.authentic = authentic

    def _responseFromMessage(self, message, **kwargs):
        response = super()._responseFromMessage(message, **kwargs)
        response.authenticData = self.authentic
        return response

    def handleQuery(self, message, protocol, address):
        opts = [dns._OPTHeader.fromRRHeader(rr) for rr in message.additional if rr.type == dns.OPT]
        self.resolver.dnssec_ok.append(bool(opts) and opts[0].dnssecOK)
        super().handleQuery(message, protocol, address)

    def gotResolverError(self, failure, protocol, message, address):
        # The stock server answers every DomainError (DNSServerError included) with NXDOMAIN.
        if failure.check(error.DNSServerError):
            self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
            return
        super().gotResolverError(failure, protocol, message, address)


@pytest.fixture
def dns_server():
    """Start a loopback UDP DNS server; yields a function (authentic) -> (zone, resolver)."""
    ports = []

    def start(authentic: bool):
        zone = Zone()
        factory = ADServer(zone, authentic)
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        ports.append(port)
        resolver = Resolver({}, OfflineBackend(), nameservers=[("127.0.0.1", port.getHost().port)])
        return zone, resolver

    yield start
    for port in ports:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_real_tlsa_with_ad_bit_is_secure(dns_server, leaf):
    """TLSA records from a validating resolver (AD set) come back parsed and secure;
    the query names _25._tcp.HOST with type TLSA."""
    zone, resolver = dns_server(authentic=True)
    record = record_for(certs(leaf)[0])
    zone.add_tlsa("_25._tcp.mx1.example.test", record, TLSARecord(2, 0, 1, b"\7" * 32))
    answer = await dane.lookup_tlsa(resolver, "mx1.example.test")
    assert answer.secure is True
    assert set(answer.records) == {record, TLSARecord(2, 0, 1, b"\7" * 32)}
    assert ("_25._tcp.mx1.example.test", TLSA_TYPE) in zone.queries
    assert zone.dnssec_ok == [True]


@pytest_twisted.ensureDeferred
async def test_real_tlsa_without_ad_bit_is_insecure(dns_server, leaf):
    """The same records without the AD bit are returned but not secure."""
    zone, resolver = dns_server(authentic=False)
    zone.add_tlsa("_25._tcp.mx1.example.test", record_for(certs(leaf)[0]))
    answer = await dane.lookup_tlsa(resolver, "mx1.example.test")
    assert answer.secure is False
    assert len(answer.records) == 1


@pytest_twisted.ensureDeferred
async def test_real_nodata_and_nxdomain_are_empty(dns_server):
    """NODATA and NXDOMAIN are an empty answer, not an error."""
    zone, resolver = dns_server(authentic=True)
    zone.nxdomain.add("_25._tcp.gone.example.test")
    assert (await dane.lookup_tlsa(resolver, "mx1.example.test")).records == ()
    nx = await dane.lookup_tlsa(resolver, "gone.example.test")
    assert nx.records == () and nx.secure is True


@pytest_twisted.ensureDeferred
async def test_real_servfail_is_transient(dns_server):
    """SERVFAIL fails with DNSTransient (RFC 7672 2.2: the MX is unusable, delivery defers)."""
    zone, resolver = dns_server(authentic=True)
    zone.servfail.add("_25._tcp.broken.example.test")
    with pytest.raises(DNSTransient, match="server failure"):
        await dane.lookup_tlsa(resolver, "broken.example.test")


@pytest_twisted.ensureDeferred
async def test_real_timeout_is_transient():
    """A resolver that never answers gives DNSTransient after the lookup lifetime."""
    silent = reactor.listenUDP(0, dns.DNSDatagramProtocol(None), interface="127.0.0.1")  # reads and ignores
    silent.protocol.datagramReceived = lambda data, addr: None
    try:
        resolver = Resolver({}, OfflineBackend(), nameservers=[("127.0.0.1", silent.getHost().port)])
        resolver._dnspython_resolver().lifetime = 0.3
        with pytest.raises(DNSTransient, match="timed out"):
            await dane.lookup_tlsa(resolver, "mx1.example.test")
    finally:
        silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_is_secure_follows_the_ad_bit(dns_server):
    """is_secure on a real RRset is the AD bit of its answer."""
    zone, resolver = dns_server(authentic=True)
    zone.rrsets[("example.test", dns.MX)] = [
        dns.RRHeader(b"example.test", dns.MX, dns.IN, 300, dns.Record_MX(10, b"mx1.example.test"))
    ]
    assert await dane.is_secure(resolver, "example.test", "MX") is True
    zone2, insecure = dns_server(authentic=False)
    assert await dane.is_secure(insecure, "example.test", "MX") is False
