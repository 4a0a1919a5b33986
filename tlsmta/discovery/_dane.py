"""DANE for SMTP (RFC 7672, RFC 6698, RFC 7218): TLSA records and what they verify.

The lookups go through :class:`tlsmta.discovery._resolver.Resolver` (pinned ``[dns.tlsa]``
answers count as DNSSEC-secure; real answers only with the AD bit).  The
certificate check, :func:`verify_chain`, is pure: records, the chain the
peer presented, the reference names and the time in, a
:class:`tlsmta.tls._policy.Verdict` out.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
from collections.abc import Iterable, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509 import verification
from twisted.internet.defer import Deferred, fail, succeed

from tlsmta.discovery._resolver import DNSTransient, Resolver
from tlsmta.tls import Outcome, Verdict, describe_wanted, match_names, presented_names, spki_der


class Usage(enum.IntEnum):
    """TLSA certificate usages (RFC 7218 mnemonics)."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    CERT = 0
    SPKI = 1


class MatchingType(enum.IntEnum):
    FULL = 0
    SHA256 = 1
    SHA512 = 2


_DIGEST_LENGTHS = {MatchingType.SHA256: 32, MatchingType.SHA512: 64}


def _uint8(value: int) -> int:
    if not 0 <= value <= 255:
        raise ValueError(f"{value} is not an 8-bit field value (0-255)")
    return value


@attrs.frozen
class TLSARecord:
    """One TLSA record: usage, selector, matching type and association data."""

    usage: int = attrs.field(converter=_uint8)
    selector: int = attrs.field(converter=_uint8)
    matching_type: int = attrs.field(converter=_uint8)
    data: bytes

    @classmethod
    def parse(cls, text: str) -> TLSARecord:
        """A record from presentation form, ``"3 1 1 <hex>"`` (the hex may contain spaces).

        Raises ValueError saying what is wrong.  Unknown usages, selectors and
        matching types parse (they are merely unusable); a digest of the wrong
        length for SHA-256/SHA-512 does not.
        """
        fields = text.split()
        if len(fields) < 4:
            raise ValueError(f"TLSA record {text!r}: expected 'usage selector matching-type hex-data'")
        numbers = []
        for label, field in zip(("usage", "selector", "matching type"), fields[:3]):
            if not field.isdigit() or int(field) > 255:
                raise ValueError(f"TLSA record {text!r}: {label} {field!r} is not a number from 0 to 255")
            numbers.append(int(field))
        hex_data = "".join(fields[3:])
        try:
            data = bytes.fromhex(hex_data)
        except ValueError:
            raise ValueError(f"TLSA record {text!r}: association data is not hexadecimal") from None
        if not data:
            raise ValueError(f"TLSA record {text!r}: association data is empty")
        expected = _DIGEST_LENGTHS.get(numbers[2])  # type: ignore[call-overload]
        if expected is not None and len(data) != expected:
            raise ValueError(
                f"TLSA record {text!r}: {MatchingType(numbers[2]).name} data must be {expected} bytes, got {len(data)}"
            )
        return cls(numbers[0], numbers[1], numbers[2], data)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching_type} {self.data.hex()}"

    @property
    def usable(self) -> bool:
        """RFC 7672 3.1: only DANE-TA(2)/DANE-EE(3) with known selector and matching type.

        PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP, as is a SHA-256 or
        SHA-512 digest of the wrong length (a malformed record).
        """
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.matching_type not in (MatchingType.FULL, MatchingType.SHA256, MatchingType.SHA512):
            return False
        expected = _DIGEST_LENGTHS.get(MatchingType(self.matching_type))
        return bool(self.data) and (expected is None or len(self.data) == expected)

    def matches(self, cert: x509.Certificate) -> bool:
        """Whether the certificate's selected part, hashed per matching type, is the data."""
        return _associate(_selected(cert, self.selector), self.matching_type) == self.data


@attrs.frozen
class TLSAAnswer:
    """The TLSA RRset of one MX host and whether it was DNSSEC-validated."""

    records: tuple[TLSARecord, ...]
    secure: bool

    @property
    def usable(self) -> tuple[TLSARecord, ...]:
        """The records DANE for SMTP may use (RFC 7672 3.1)."""
        return tuple(r for r in self.records if r.usable)


# -- selecting and hashing --------------------------------------------------------------


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == Selector.CERT:
        return cert.public_bytes(serialization.Encoding.DER)
    return spki_der(cert)


def _associate(selected: bytes, matching_type: int) -> bytes | None:
    if matching_type == MatchingType.FULL:
        return selected
    if matching_type == MatchingType.SHA256:
        return hashlib.sha256(selected).digest()
    if matching_type == MatchingType.SHA512:
        return hashlib.sha512(selected).digest()
    return None


def record_for(cert: x509.Certificate, usage: int = Usage.DANE_EE, selector: int = Selector.SPKI,
               mtype: int = MatchingType.SHA256) -> TLSARecord:
    """The TLSA record that designates ``cert`` (``3 1 1`` unless told otherwise)."""
    data = _associate(_selected(cert, selector), mtype)
    if data is None:
        raise ValueError(f"unknown matching type {mtype}")
    return TLSARecord(int(usage), int(selector), int(mtype), data)


# -- verification -------------------------------------------------------------------------


def _describe(record: TLSARecord) -> str:
    return f"{Usage(record.usage).name.replace('_', '-')}({record.usage}) {record.usage} {record.selector} {record.matching_type}"


def verify_chain(
    records: Iterable[TLSARecord],
    chain: Sequence[x509.Certificate],
    reference_names: Sequence[str],
    now: datetime.datetime,
) -> Verdict:
    """The DANE verdict for the chain a server presented (leaf first).

    DANE-EE(3): the leaf matches; names and dates are not looked at (RFC
    7672 3.1.1).  DANE-TA(2): an issuer certificate in the chain matches (or,
    for ``2 1 0``, its key signed one of them); the chain must verify from
    that anchor with the leaf valid at ``now`` and naming one of
    ``reference_names`` (RFC 7672 3.2.2, RFC 6125 wildcards).  Unusable
    records are ignored; the caller decides what no usable record means.
    On success the reason says which record matched.
    """
    usable = [r for r in records if r.usable]
    if not usable:
        return Verdict(Outcome.FAILED, "dane: no usable TLSA records")
    if not chain:
        return Verdict(Outcome.FAILED, "dane: no certificate presented")
    leaf = chain[0]
    for record in usable:
        if record.usage == Usage.DANE_EE and record.matches(leaf):
            return Verdict(Outcome.VERIFIED, f"dane: {_describe(record)} matched the leaf")
    anchors = _trust_anchors([r for r in usable if r.usage == Usage.DANE_TA], chain)
    if not anchors:
        return Verdict(Outcome.FAILED, "dane: no TLSA record matched the certificate chain")
    errors = []
    for record, anchor in anchors:
        problem = _chain_problem(anchor, chain, now)
        if problem is None:
            matched = match_names(presented_names(leaf), reference_names)
            if matched is None:
                return Verdict(
                    Outcome.FAILED,
                    f"dane: certificate name does not match {describe_wanted(reference_names)}",
                )
            return Verdict(
                Outcome.VERIFIED, f"dane: {_describe(record)} matched a trust anchor", matched_name=matched
            )
        errors.append(problem)
    return Verdict(Outcome.FAILED, f"dane: chain does not verify from the DANE-TA trust anchor: {errors[0]}")


def _trust_anchors(records: list[TLSARecord], chain: Sequence[x509.Certificate]) -> list[tuple[TLSARecord, x509.Certificate]]:
    """(record, anchor certificate) pairs, anchors from the issuers in the chain.

    Only issuers (depth >= 1) can be trust anchors: a DANE-TA record that
    matches the leaf is a misplaced DANE-EE and does not count.  For a bare
    public key (``2 1 0``) the anchor is the chain certificate it signed.
    """
    found = []
    for record in records:
        for cert in chain[1:]:
            if record.matches(cert):
                found.append((record, cert))
        if record.selector == Selector.SPKI and record.matching_type == MatchingType.FULL:
            signed = _signed_by_key(record.data, chain)
            if signed is not None:
                found.append((record, signed))
    return found


def _signed_by_key(spki: bytes, chain: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The top-most chain certificate whose signature the bare key verifies."""
    try:
        key = serialization.load_der_public_key(spki)
    except ValueError:
        return None
    for cert in reversed(chain):
        if _signature_ok(key, cert):
            return cert
    return None


def _signature_ok(key: PublicKeyTypes, cert: x509.Certificate) -> bool:
    signature, tbs, params = cert.signature, cert.tbs_certificate_bytes, cert.signature_algorithm_parameters
    hashed = cert.signature_hash_algorithm
    try:
        # A key that does not fit the certificate's signature algorithm did not sign it.
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, (padding.PSS, padding.PKCS1v15)) and hashed:
            key.verify(signature, tbs, params, hashed)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(signature, tbs, params)
        elif isinstance(key, dsa.DSAPublicKey) and hashed:
            key.verify(signature, tbs, hashed)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, tbs)
        else:
            return False
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def _chain_problem(anchor: x509.Certificate, chain: Sequence[x509.Certificate], now: datetime.datetime) -> str | None:
    """Why the leaf does not verify with ``anchor`` as the only root (None: it does).

    cryptography's verifier with the Web PKI rules for the CA certificates;
    the leaf's extensions are not held to Web PKI rules (its names are
    checked by :func:`policy.match_names`, which also knows the CN fallback).
    """
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor]))
        .time(now)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    leaf = chain[0]
    try:
        verifier.verify(leaf, list(chain[1:]))
    except verification.VerificationError as e:
        return str(e)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return "leaf certificate is not within its validity period"
    return None


# -- lookups ------------------------------------------------------------------------------


def tlsa_name(host: str, port: int = 25) -> str:
    """The TLSA owner name of an SMTP server (RFC 6698 3)."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


def lookup_tlsa(resolver: Resolver, host: str, port: int = 25) -> Deferred[TLSAAnswer]:
    """The TLSA RRset of ``host``:``port``.

    Pinned ``[dns.tlsa]`` answers are secure; real ones are secure with the
    AD bit.  NXDOMAIN/NODATA are an empty answer; SERVFAIL and timeouts fail
    with :class:`DNSTransient` (RFC 7672 2.2: that MX is then unusable).
    """
    name = tlsa_name(host, port)
    pinned = resolver.pinned_answer("tlsa", name)
    if pinned is not None:
        try:
            return succeed(TLSAAnswer(tuple(TLSARecord.parse(text) for text in pinned), secure=True))
        except ValueError as e:
            return fail(DNSTransient(f"[dns.tlsa] {name!r}: {e}"))
    return resolver.dnssec_query(name, "TLSA").addCallback(
        lambda answer: TLSAAnswer(
            tuple(TLSARecord(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer.rdatas), answer.secure
        )
    )


def is_secure(resolver: Resolver, name: str, rdtype: str) -> Deferred[bool]:
    """Whether the ``rdtype`` RRset of ``name`` (e.g. a domain's MX, an MX host's A) validates.

    Only the DNSSEC status: the records themselves come from the normal
    twisted.names lookups.  A pinned RRset is secure.
    """
    if resolver.pinned_secure(name, rdtype):
        return succeed(True)
    return resolver.dnssec_query(name, rdtype).addCallback(lambda answer: answer.secure)
