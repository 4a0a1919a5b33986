"""One canonical form for domain names and one answer to "the domain of this address" (tlsmta.smtp._names)."""

from __future__ import annotations

from typing import Any

import pytest

from tlsmta.config._routes import parse_route
from tlsmta.errors import TlsmtaError
from tlsmta.smtp._commands import Path
from tlsmta.smtp._names import DomainNameError, domain_of, normalize_domain, normalized_domain_of
from tlsmta.storage._interfaces import Recipient
from tlsmta.storage._spool import RecipientState

MAIL: dict[str, bool] = {}
HOST = {"host": True}
PATTERN = {"host": True, "wildcard": True}


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        # every kind: lower case, no surrounding space, no trailing dot, U-labels become A-labels
        (" Example.COM. ", MAIL, "example.com"),
        ("Example.COM.", HOST, "example.com"),
        ("Example.COM.", PATTERN, "example.com"),
        ("bücher.example", MAIL, "xn--bcher-kva.example"),
        ("BÜCHER.example.", MAIL, "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", MAIL, "xn--bcher-kva.example"),
        ("bücher.example", HOST, "xn--bcher-kva.example"),
        ("faß.de", MAIL, "xn--fa-hia.de"),  # IDNA 2008 keeps the sharp s (2003 made it "ss")
        # a mail domain may be an address literal, kept as written but lower-cased
        ("[192.0.2.1]", MAIL, "[192.0.2.1]"),
        ("[IPv6:2001:DB8::1]", MAIL, "[ipv6:2001:db8::1]"),
        # a host name may be ASCII that IDNA 2008 refuses but DNS carries
        ("MX_1.Example.com.", HOST, "mx_1.example.com"),
        ("ab--cd.example", HOST, "ab--cd.example"),
        # a pattern may start with one wildcard label
        ("*.Example.com", PATTERN, "*.example.com"),
        ("*.bücher.example", PATTERN, "*.xn--bcher-kva.example"),
        ("*.mx_1.example", PATTERN, "*.mx_1.example"),
        ("*.example.com", {"wildcard": True}, "*.example.com"),
    ],
)
def test_normalize_domain(raw: str, kind: dict[str, Any], expected: str) -> None:
    """Each spelling of a name has one canonical form, whatever kind of name is asked for."""
    assert normalize_domain(raw, **kind) == expected


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        *((bad, kind) for bad in ("", ".", " ", "exa mple.com", "a..b", "-bad.example", "xn--zz.example",
                                  "a" * 64 + ".example", "mx.exa*mple") for kind in (MAIL, HOST, PATTERN)),
        ("ab--cd.example", MAIL),  # passes an address's syntax, not IDNA: no mail domain
        ("mx_1.example.com", MAIL),
        ("[192.0.2.1]", HOST),  # a literal is no host name
        ("*.example.com", MAIL),  # a wildcard only where the caller reads patterns
        ("*.example.com", HOST),
        ("*.mx_1.example", {"wildcard": True}),
        ("*", PATTERN),
        ("*.", PATTERN),
        ("*.*.example", PATTERN),
        ("f*.example.com", PATTERN),
        ("*.[192.0.2.1]", PATTERN),
    ],
)
def test_normalize_domain_refuses(raw: str, kind: dict[str, Any]) -> None:
    """What is not a name of the kind asked for is refused with an error every caller can catch."""
    with pytest.raises(DomainNameError) as e:
        normalize_domain(raw, **kind)
    assert isinstance(e.value, ValueError) and isinstance(e.value, TlsmtaError)


ADDRESSES = [
    # address, domain_of, normalized_domain_of
    ("User@Example.COM", "example.com", "example.com"),
    ('"a@b"@Example.org', "example.org", "example.org"),  # the last "@" counts
    ("", "", ""),  # the null sender
    ("postmaster", "", ""),  # RCPT TO:<postmaster>, before it gets our host name
    ("a@[192.0.2.1]", "[192.0.2.1]", "[192.0.2.1]"),
    ("a@[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]", "[ipv6:2001:db8::1]"),
    ("u@Bücher.Example.", "bücher.example.", "xn--bcher-kva.example"),
    ("u@AB--CD.example", "ab--cd.example", "ab--cd.example"),  # not IDNA: as written, lower-cased
]


@pytest.mark.parametrize(("address", "domain", "normalized"), ADDRESSES)
def test_domain_of(address: str, domain: str, normalized: str) -> None:
    """The lower-cased part after the last "@", "" without one; normalised for looking scopes up."""
    assert domain_of(address) == domain
    assert normalized_domain_of(address) == normalized


@pytest.mark.parametrize(("address", "domain", "normalized"), ADDRESSES)
def test_every_address_type_has_the_same_domain(address: str, domain: str, normalized: str) -> None:
    """A parsed path, an accepted recipient and a spooled recipient agree on an address's domain."""
    route = parse_route("mx")
    assert Path(address, {}).domain == domain
    assert Recipient(address, route).domain == domain
    assert RecipientState(address, route).domain == domain
