"""Fingerprints of a certificate: its SubjectPublicKeyInfo and its whole DER encoding.

The SPKI's SHA-256 is what DANE-EE ``3 1 1`` records, ``tls_pins`` and the
``spki_sha256`` log field all mean, so they are computed here once; the
certificate's SHA-256 is Postfix's ``fingerprint`` (``cert_sha256``).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def _der_element(data: bytes, offset: int) -> tuple[int, int]:
    """(start of contents, end of element) of the DER TLV at ``offset``."""
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return start, start + length


def spki_der(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo exactly as encoded in the certificate.

    Re-encoding ``public_key()`` would normally give the same bytes, but not
    for every key (e.g. compressed EC points), and TLSA data hashes the
    certificate's own encoding; so walk the TBSCertificate's DER instead:
    [0] version (optional), serial, signature, issuer, validity, subject, SPKI.
    """
    tbs = cert.tbs_certificate_bytes
    offset, _ = _der_element(tbs, 0)  # inside the TBSCertificate SEQUENCE
    if tbs[offset] == 0xA0:
        offset = _der_element(tbs, offset)[1]
    for _ in range(5):
        offset = _der_element(tbs, offset)[1]
    return tbs[offset : _der_element(tbs, offset)[1]]


def spki_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's public key (its SPKI), in hex: a DANE ``3 1 1`` record's data."""
    return hashlib.sha256(spki_der(cert)).hexdigest()


def certificate_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the whole certificate (DER), in hex."""
    return cert.fingerprint(hashes.SHA256()).hex()
