"""The certificates tlsmta serves or presents: chains of several key types in one context,
the context a client's SNI name picks, and the facts of a certificate file (logs, expiry).

OpenSSL keeps one certificate per key type in an ``SSL_CTX`` (RSA, ECDSA,
Ed25519): ``use_certificate_chain_file`` and ``use_privatekey_file`` called once
per chain fill the slot of that chain's key type, each with its own
intermediates, and the handshake serves the one the client's signature
algorithms allow (all public pyOpenSSL API).  A second chain of the same key
type would silently replace the first, so :func:`check_chains` refuses it.

SNI (RFC 6066 3): the default context's servername callback moves the
connection to the first certificate set whose DNS subjectAltNames match the
name the client sent (RFC 6125 through :func:`tlsmta.tls._policy.match_names`),
names written out before wildcards; no match or no SNI keeps the default.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.logger import Logger

from tlsmta.tls._contexts import KeyPairError, describe_name, key_type, load_keypair, presented_names, server_name
from tlsmta.tls._policy import PresentedNames, match_names

log = Logger(namespace="tlsmta.tls")

Chain = tuple[str, str]  # (certificate chain file, key file)


@attrs.frozen
class CertificateFacts:
    """The leaf of one chain file: for the log lines, the expiry gauge and SNI matching."""

    path: str
    subject: str
    key_type: str
    dns_names: tuple[str, ...]
    not_after: datetime.datetime  # aware, UTC

    @classmethod
    def of(cls, certificate: x509.Certificate, path: str = "") -> CertificateFacts:
        return cls(path, describe_name(certificate.subject), key_type(certificate),
                   # only dNSName SANs: the subject CN is not an SNI name (RFC 6125 6.4.4 applies to clients)
                   presented_names(certificate).dns_names,
                   certificate.not_valid_after_utc)


def read_certificate(path: str) -> CertificateFacts:
    """The facts of the first certificate (the leaf) in a PEM chain file."""
    try:
        with open(path, "rb") as f:
            leaf = x509.load_pem_x509_certificates(f.read())[0]
    except OSError as e:
        raise KeyPairError("tls_certificate", f"cannot read certificate {path!r}: {e.strerror}") from None
    except ValueError as e:
        raise KeyPairError("tls_certificate", f"cannot load certificate {path!r}: {e}") from None
    return CertificateFacts.of(leaf, path)


def check_chains(chains: Sequence[Chain], sni: bool = False) -> list[CertificateFacts]:
    """Each chain loads and matches its key, no two share a key type, and (``sni``) each
    leaf has a DNS name to match; raises :class:`KeyPairError` naming the key at fault."""
    facts: list[CertificateFacts] = []
    for cert, key in chains:
        load_keypair(cert, key)
        leaf = read_certificate(cert)
        same = next((other for other in facts if other.key_type == leaf.key_type), None)
        if same is not None:
            raise KeyPairError("tls_certificate", f"{same.path!r} and {cert!r} are both {leaf.key_type} certificates: "
                                                  "one chain per key type (RSA, ECDSA, ...) is served")
        if sni and not leaf.dns_names:
            raise KeyPairError("tls_certificate", f"certificate {cert!r} has no DNS subjectAltName for an SNI name to match")
        facts.append(leaf)
    return facts


def choose_by_server_name(name_sets: Sequence[Sequence[str]], server_name: str | None) -> int | None:
    """The index of the certificate set a client's SNI name picks, or None (serve the default).

    Pure: a set matches when one of its DNS names matches ``server_name`` as RFC 6125
    says (one leading wildcard label at most); sets naming it exactly win over wildcards,
    then the first in configuration order."""
    if not server_name:
        return None
    for wildcards in (False, True):
        for index, names in enumerate(name_sets):
            patterns = tuple(n for n in names if n.startswith("*.") == wildcards)
            if patterns and match_names(PresentedNames(dns_names=patterns), [server_name]) is not None:
                return index
    return None


def serve_by_sni(default: SSL.Context, choices: Sequence[tuple[Sequence[Chain], SSL.Context]]) -> None:
    """Install on ``default`` the servername callback that moves a connection to the context
    of the certificate set its SNI name picks (``choices``: each set's chain files and context)."""
    if not choices:
        return
    name_sets = [tuple(name for cert, _ in chains for name in read_certificate(cert).dns_names) for chains, _ in choices]

    def pick(conn: SSL.Connection) -> None:
        try:
            index = choose_by_server_name(name_sets, server_name(conn))
            if index is not None:
                conn.set_context(choices[index][1])
        except Exception:  # never abort a handshake over the choice: the default certificate is served
            log.failure("choosing a certificate by SNI failed; serving the default")

    default.set_tlsext_servername_callback(pick)
