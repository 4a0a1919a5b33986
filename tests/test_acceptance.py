"""Unit tests for :mod:`tlsmta.inbound._acceptance`: relay control and the client-certificate MAIL gate."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsmta.inbound._acceptance import (
    RELAY_DENIED,
    ClientStanding,
    check_client_certificate,
    check_recipient,
    client_pinned,
    in_networks,
    may_relay,
)
from tlsmta.smtp._commands import Reject
from tlsmta.tls._policy import Outcome, Verdict, VerifyMode

LOCAL = frozenset({"example.com", "mail.example.com"})
NETS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("::1/128"))
STRANGER = "203.0.113.9"


def denied(fn, *args) -> Reject:
    with pytest.raises(Reject) as info:
        fn(*args)
    return info.value


# -- relay control ----------------------------------------------------------------------------


def test_relay_denied_constant():
    """Relay refusal is 554 5.7.1 relay access denied (DESIGN, Inbound)."""
    assert RELAY_DENIED.code == 554
    assert RELAY_DENIED.text == "5.7.1 relay access denied"


@pytest.mark.parametrize("client", [ClientStanding(STRANGER), ClientStanding("not an ip"), ClientStanding("2001:db9::1")])
def test_local_domain_always_accepted(client):
    """Mail for a local domain is accepted from anyone, with no relay rights at all."""
    check_recipient("example.com", LOCAL, client, (), False)
    check_recipient("mail.example.com", LOCAL, client, NETS, True)


def test_non_local_denied_for_stranger():
    """A non-local domain from an unknown, unauthenticated client without certificate is 554 5.7.1."""
    r = denied(check_recipient, "elsewhere.example", LOCAL, ClientStanding(STRANGER), NETS, True)
    assert r is RELAY_DENIED
    assert (r.code, r.text) == (554, "5.7.1 relay access denied")


def test_subdomain_of_local_is_not_local():
    """Only the listed domains are local: a subdomain is someone else's mail."""
    assert denied(check_recipient, "sub.example.com", LOCAL, ClientStanding(STRANGER), (), False) is RELAY_DENIED


@pytest.mark.parametrize("address", ["192.0.2.1", "192.0.2.255", "127.0.0.1", "2001:db8::25", "::1", "::ffff:127.0.0.1", "::ffff:192.0.2.77"])
def test_relay_from_relay_networks(address):
    """Clients in relay_networks (IPv4, IPv6, IPv4-mapped IPv6) may relay."""
    check_recipient("elsewhere.example", LOCAL, ClientStanding(address), NETS, False)
    assert in_networks(address, NETS)


@pytest.mark.parametrize("address", ["192.0.3.1", "128.0.0.1", "2001:db9::1", "::2", "::ffff:10.0.0.1", "", "localhost", "192.0.2.1:25"])
def test_no_relay_outside_relay_networks(address):
    """Addresses outside relay_networks, and text that is no address at all, get no relay."""
    assert not in_networks(address, NETS)
    assert denied(check_recipient, "elsewhere.example", LOCAL, ClientStanding(address), NETS, False) is RELAY_DENIED


def test_ipv4_network_does_not_match_ipv6_client():
    """An IPv4 relay network does not match an IPv6 address that is not IPv4-mapped (e.g. 6to4-looking)."""
    assert not in_networks("::7f00:1", (ipaddress.ip_network("127.0.0.0/8"),))


def test_empty_relay_networks():
    """With no relay_networks, an address alone never grants relay."""
    assert not in_networks("127.0.0.1", ())
    assert not may_relay(ClientStanding("127.0.0.1"), (), True)


def test_authenticated_may_relay():
    """A client that authenticated (AUTH inside TLS) may relay from anywhere."""
    client = ClientStanding(STRANGER, authenticated=True)
    check_recipient("elsewhere.example", LOCAL, client, (), False)
    assert may_relay(client, (), False)


def test_pinned_certificate_may_relay_without_the_listener_flag():
    """relay_client_pins (Postfix relay_clientcerts): a pinned client certificate relays by itself."""
    check_recipient("elsewhere.example", LOCAL, ClientStanding(STRANGER, cert_pinned=True), (), False)


def test_client_pinned_by_spki_or_certificate_hash():
    """A pin matches the certificate's SPKI SHA-256 or its whole-certificate SHA-256; nothing else."""
    spki, cert = "aa" * 32, "bb" * 32
    assert client_pinned([spki], spki, cert) and client_pinned(["cc" * 32, cert], spki, cert)
    assert not client_pinned(["cc" * 32], spki, cert)
    assert not client_pinned([], spki, cert) and not client_pinned([spki], None, None)


def test_verified_certificate_relays_when_listener_allows():
    """A verified client certificate grants relay when tls_verified_peer_can_relay is true."""
    client = ClientStanding(STRANGER, cert_verified=True)
    check_recipient("elsewhere.example", LOCAL, client, (), True)


def test_verified_certificate_no_relay_when_listener_forbids():
    """A verified client certificate alone does not grant relay when tls_verified_peer_can_relay is false."""
    client = ClientStanding(STRANGER, cert_verified=True)
    assert not may_relay(client, NETS, False)
    assert denied(check_recipient, "elsewhere.example", LOCAL, client, NETS, False) is RELAY_DENIED


def test_can_relay_flag_alone_grants_nothing():
    """tls_verified_peer_can_relay without a verified certificate grants nothing."""
    assert denied(check_recipient, "elsewhere.example", LOCAL, ClientStanding(STRANGER), NETS, True) is RELAY_DENIED


@given(
    authenticated=st.booleans(),
    cert_verified=st.booleans(),
    can_relay=st.booleans(),
    in_net=st.booleans(),
    local=st.booleans(),
)
def test_relay_decision_table(authenticated, cert_verified, can_relay, in_net, local):
    """The full decision: local, or authenticated, or (verified and allowed), or in relay_networks."""
    client = ClientStanding("192.0.2.5" if in_net else STRANGER, authenticated, cert_verified)
    domain = "example.com" if local else "elsewhere.example"
    allowed = local or authenticated or (cert_verified and can_relay) or in_net
    try:
        check_recipient(domain, LOCAL, client, NETS, can_relay)
    except Reject as r:
        assert not allowed and r is RELAY_DENIED
    else:
        assert allowed


# -- client-certificate MAIL gate ------------------------------------------------------------

VERIFIED = Verdict(Outcome.VERIFIED, matched_name="client.example")
FAILED = Verdict(Outcome.FAILED, "certificate has expired")
SOFTFAIL = Verdict(Outcome.SOFTFAIL, "name mismatch")
UNCHECKED = Verdict(Outcome.UNCHECKED)


@pytest.mark.parametrize("mode", [VerifyMode.NO, VerifyMode.OPTIONAL])
@pytest.mark.parametrize("tls_active", [False, True])
@pytest.mark.parametrize("verdict", [None, VERIFIED, FAILED, SOFTFAIL, UNCHECKED])
def test_non_enforcing_modes_never_refuse(mode, tls_active, verdict):
    """tls_verify = no or optional never refuses MAIL, whatever the certificate did."""
    assert check_client_certificate(mode, tls_active, verdict) is None


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST])
@pytest.mark.parametrize("verdict", [None, VERIFIED, FAILED])
def test_enforcing_without_tls(mode, verdict):
    """ca/host without TLS: 530 5.7.0 Must issue a STARTTLS command first."""
    r = denied(check_client_certificate, mode, False, verdict)
    assert (r.code, r.text) == (530, "5.7.0 Must issue a STARTTLS command first")


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST])
@pytest.mark.parametrize("verdict", [FAILED, SOFTFAIL])
def test_enforcing_with_failed_verdict(mode, verdict):
    """ca/host inside TLS with a certificate that did not verify: 530 5.7.0 giving the reason."""
    r = denied(check_client_certificate, mode, True, verdict)
    assert r.code == 530
    assert r.text.startswith("5.7.0 ")
    assert verdict.reason in r.text


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST])
def test_enforcing_without_certificate(mode):
    """ca/host inside TLS but no verdict (no certificate presented): 530 5.7.0."""
    r = denied(check_client_certificate, mode, True, None)
    assert r.code == 530 and r.text.startswith("5.7.0") and "no certificate" in r.text


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST])
def test_enforcing_unchecked_is_not_verified(mode):
    """An UNCHECKED verdict is not a verified certificate: ca/host refuse MAIL."""
    assert denied(check_client_certificate, mode, True, UNCHECKED).code == 530


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST])
def test_enforcing_verified_passes(mode):
    """ca/host inside TLS with a verified certificate: MAIL may proceed."""
    assert check_client_certificate(mode, True, VERIFIED) is None
