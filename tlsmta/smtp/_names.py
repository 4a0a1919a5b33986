"""Domain names in one canonical form, and the domain of an address.

Configuration keys, recipient domains, certificate names, MTA-STS ``mx``
patterns and SNI all compare in the form :func:`normalize_domain` gives, so
one spelling of a name (U-label or A-label, any case, trailing dot or not)
is the same name everywhere.
"""

from __future__ import annotations

import functools
import re

import idna

from tlsmta.errors import TlsmtaError


class DomainNameError(TlsmtaError, ValueError):
    """A name that is not a domain name of the kind asked for.

    A ValueError too: every caller that refuses a bad name catches that.
    """


# A DNS label IDNA 2008 refuses but host names use (``mx_1``, ``ab--cd``); never
# an ``xn--`` label, which must be valid IDNA or nothing.
_ASCII_HOST_LABEL = re.compile(r"(?!xn--)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@functools.lru_cache(maxsize=8192)  # IDNA is slow, and the same few names come back all day
def normalize_domain(name: str, *, host: bool = False, wildcard: bool = False) -> str:
    """The canonical form of a domain name: IDNA 2008 A-labels after the UTS 46
    mapping, lower case, no surrounding space, no trailing dot.

    By default the name is a mail domain, as written after ``@`` or as a
    ``[domain]`` key: an address literal (``[192.0.2.1]``) is kept as it is,
    lower-cased; any other name must be valid IDNA.

    ``host=True`` reads a DNS host name, as a certificate, an MX record or an
    MTA-STS policy carries one: no address literal, and an ASCII name IDNA
    refuses but DNS allows (``mx_1.example``) is kept, lower-cased.

    ``wildcard=True`` also accepts one leading ``*.`` label (a certificate or
    MTA-STS pattern); the labels after it follow the rules above.

    Raises :class:`DomainNameError` for anything else (empty names and labels,
    spaces, bad hyphens).
    """
    name = name.strip().rstrip(".")
    if not name:
        raise DomainNameError("empty domain name")
    if wildcard and name.startswith("*."):
        return "*." + _labels(name[2:], host)
    if not host and name.startswith("[") and name.endswith("]"):
        return name.lower()
    return _labels(name, host)


def _labels(name: str, host: bool) -> str:
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as e:
        lowered = name.lower()
        if host and all(_ASCII_HOST_LABEL.fullmatch(label) for label in lowered.split(".")):
            return lowered
        raise DomainNameError(f"{name!r} is not a valid domain name: {e}") from None


def domain_of(address: str) -> str:
    """The lower-cased part after the last ``@``; "" when there is none.

    No ``@`` means no domain: the null sender (""), ``<postmaster>`` before it
    is made ``postmaster@`` our host name.  The domain is as written (a U-label
    stays a U-label, an address literal stays bracketed); see
    :func:`normalized_domain_of` for the form scopes are keyed by.
    """
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else ""


def normalized_domain_of(address: str) -> str:
    """:func:`domain_of` in :func:`normalize_domain`'s form, for looking a domain
    up among configured ones; a domain that is not valid IDNA cannot match one
    and is given back lower-cased, as :func:`domain_of` has it."""
    domain = domain_of(address)
    try:
        return normalize_domain(domain)
    except DomainNameError:
        return domain
