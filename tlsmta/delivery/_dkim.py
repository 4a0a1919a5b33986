"""DKIM signing (RFC 6376, RFC 8463) of mail as it leaves tlsmta, with dkimpy.

A message is signed at delivery time, as its bytes are sent: every header
change tlsmta makes (our ``Received:``) is done by then, the spool keeps the
message as it was answered 250 (durability is not touched), and a key
rotated by SIGHUP applies to mail already queued.  Each attempt signs anew,
so the signature's ``t=`` is the time it left.

The key is chosen by the domain of the ``From:`` header (what DMARC aligns
with), or the nearest parent domain with a key.  Headers signed: those of
RFC 6376 5.4.1's list that the message has, ``From:`` signed once more than
it occurs (oversigned, so no ``From:`` can be added); canonicalization
relaxed/relaxed.  Keys: PEM RSA (at least 1024 bits) or Ed25519, or an
Ed25519 seed in base64 as dkimpy's ``dknewkey`` writes it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from email.utils import getaddresses

import attrs
import dkim  # type: ignore[import-untyped]  # dkimpy ships no type hints
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.logger import Logger

from tlsmta.config import DkimDomain
from tlsmta.smtp import domain_of, normalize_domain

log = Logger(namespace="tlsmta.delivery.dkim")

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must refuse smaller keys
HEADER_LIMIT = 256 * 1024  # the header section is what dkimpy parses; a body can be large


@attrs.frozen
class SigningKey:
    """A key as dkimpy takes it: PEM for RSA, the base64 seed for Ed25519."""

    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"
    material: bytes = attrs.field(repr=False)


def load_signing_key(path: str) -> SigningKey:
    """Read a DKIM private key file; ValueError or OSError says why it cannot sign."""
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" not in data:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise ValueError("is neither a PEM private key nor a base64 Ed25519 seed") from None
        if len(seed) != 32:
            raise ValueError("is not a PEM private key, and as base64 not a 32-byte Ed25519 seed")
        return SigningKey(b"ed25519-sha256", base64.b64encode(seed))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"does not hold a PEM private key without a passphrase ({e})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"holds a {key.key_size}-bit RSA key; DKIM needs at least {MIN_RSA_BITS} (RFC 8301)")
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        return SigningKey(b"rsa-sha256", pem)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return SigningKey(b"ed25519-sha256", base64.b64encode(seed))
    raise ValueError(f"holds a {type(key).__name__.removesuffix('PrivateKey').removeprefix('_')} key; DKIM signs with RSA or Ed25519")


@attrs.frozen
class _DomainKey:
    selector: str
    key: SigningKey


class DkimSigner:
    """The ``[dkim]`` keys, read once (at start and at each reload)."""

    def __init__(self, domains: Mapping[str, DkimDomain]):
        self._keys = {name: _DomainKey(d.selector, load_signing_key(d.key_file)) for name, d in domains.items()}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def signature(self, message: bytes) -> bytes:
        """The ``DKIM-Signature:`` header field (CRLF-terminated) to put before ``message``, or b""."""
        domain = self._signing_domain(message)
        if domain is None:
            return b""
        chosen = self._keys[domain]
        try:
            return dkim.sign(message, chosen.selector.encode(), domain.encode(), chosen.key.material,
                             canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=chosen.key.algorithm)
        except dkim.DKIMException as e:
            log.warn("dkim: not signed for {domain}: {reason}", domain=domain, reason=str(e))
            return b""

    def _signing_domain(self, message: bytes) -> str | None:
        """The From: domain, or its nearest parent, that has a key."""
        head = message[:HEADER_LIMIT].split(b"\r\n\r\n", 1)[0]
        try:
            headers, _ = dkim.rfc822_parse(head + b"\r\n\r\n")
        except dkim.MessageFormatError:
            return None
        froms = [value.decode("utf-8", "replace") for name, value in headers if name.lower() == b"from"]
        addresses = [address for _, address in getaddresses(froms) if "@" in address]
        if not addresses:
            return None
        try:
            labels = normalize_domain(domain_of(addresses[0])).split(".")
        except ValueError:
            return None
        for start in range(len(labels) - 1):
            candidate = ".".join(labels[start:])
            if candidate in self._keys:
                return candidate
        return None
