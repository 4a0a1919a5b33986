"""Certificates generated at first start (``tls_certificate = "auto"``).

A dev CA and a server certificate it signs, both ECDSA P-256 (cheap
handshakes), kept under ``state_dir`` and reused on later starts.  An
application's tests can trust the dev CA's PEM to verify the relay.

The dev CA also issues the TLS lab's bad certificates (listener
``tls_lab``): expired, for the wrong name, from a second CA nobody
trusts, and self-signed, so an application can prove it refuses each.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsmta.config import CERTIFICATE_LAB_MODES, LAB_MODES  # noqa: F401 - validated by the config

CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=397)
RENEW_BEFORE = datetime.timedelta(days=30)


@attrs.frozen
class DevCertificate:
    """Paths of the generated files."""

    ca_path: str
    cert_path: str  # leaf followed by the CA: a full chain
    key_path: str


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsmta dev"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _make_ca(now: datetime.datetime, cn: str = "tlsmta dev CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    names: Sequence[str],
    ca: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey | None,
    now: datetime.datetime,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` signed by ``ca`` (self-signed when ``ca`` is None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = not_after or now + LEAF_LIFETIME
    issuer_key = ca_key or key
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject if ca is not None else _name(names[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - datetime.timedelta(hours=1), not_after - datetime.timedelta(days=30)))
        .not_valid_after(not_after)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


def _load(cert_path: str, key_path: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return cert, key


def _still_good(cert: x509.Certificate, names: Sequence[str], now: datetime.datetime) -> bool:
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(san) >= set(_san(names))


def dev_ca_path(state_dir: str) -> str:
    """Where the dev CA's certificate (the PEM clients trust) is kept."""
    return os.path.join(state_dir, "dev-ca.pem")


def _ensure_ca(state_dir: str, stem: str, cn: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """Load or create the CA ``state_dir/stem.{pem,key}``; the bool says it is new."""
    cert_path, key_path = os.path.join(state_dir, f"{stem}.pem"), os.path.join(state_dir, f"{stem}.key")
    ca = _load(cert_path, key_path)
    if ca is not None and ca[0].not_valid_after_utc - RENEW_BEFORE >= now:
        return ca[0], ca[1], False
    cert, key = _make_ca(now, cn)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key, True


def ensure_dev_ca(state_dir: str) -> str:
    """Create (or reuse) the dev CA; returns the path of its PEM."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    _ensure_ca(state_dir, "dev-ca", "tlsmta dev CA", datetime.datetime.now(datetime.timezone.utc))
    return dev_ca_path(state_dir)


def ensure_dev_certificate(state_dir: str, names: Sequence[str]) -> DevCertificate:
    """Create (or reuse) the dev CA and a server certificate for ``names``."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    paths = DevCertificate(
        ca_path=dev_ca_path(state_dir),
        cert_path=os.path.join(state_dir, "dev-cert.pem"),
        key_path=os.path.join(state_dir, "dev-cert.key"),
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert, ca_key, new = _ensure_ca(state_dir, "dev-ca", "tlsmta dev CA", now)
    ca = (ca_cert, ca_key)
    leaf = None if new else _load(paths.cert_path, paths.key_path)
    if leaf is None or leaf[0].issuer != ca[0].subject or not _still_good(leaf[0], names, now):
        cert, key = _make_leaf(names, ca[0], ca[1], now)
        _write(paths.key_path, _key_pem(key), 0o600)
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca[0].public_bytes(serialization.Encoding.PEM)
        _write(paths.cert_path, chain, 0o644)
    return paths


# -- the TLS lab ----------------------------------------------------------------------


WRONG_NAME = "wrong-name.invalid"  # a name no client connects to (RFC 6761 .invalid)


def lab_certificate(state_dir: str, mode: str, names: Sequence[str]) -> DevCertificate:
    """The certificate a listener in TLS lab ``mode`` serves (one of CERTIFICATE_LAB_MODES).

    ``good`` is the dev certificate.  The bad ones are made afresh under
    ``state_dir/lab/`` at each start (cheap: P-256), each broken in one way
    only: expired yesterday, named only ``wrong-name.invalid``, signed by
    a second CA ("tlsmta untrusted dev CA", kept in ``lab/``, not sent in
    the chain: "unable to get local issuer certificate"), self-signed.
    ``ca_path`` is always the dev CA: what a client is told to trust.
    """
    if mode not in CERTIFICATE_LAB_MODES:
        raise ValueError(f"not a certificate lab mode: {mode!r}")
    good = ensure_dev_certificate(state_dir, names)
    if mode == "good":
        return good
    lab = os.path.join(state_dir, "lab")
    os.makedirs(lab, mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    dev_ca = _load(good.ca_path, os.path.join(state_dir, "dev-ca.key"))
    assert dev_ca is not None  # ensure_dev_certificate just wrote it
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = dev_ca
    not_after = None
    if mode == "expired":
        not_after = now - datetime.timedelta(days=1)
    elif mode == "wrong-name":
        names = [WRONG_NAME]
    elif mode == "untrusted":
        other, other_key, _ = _ensure_ca(lab, "untrusted-ca", "tlsmta untrusted dev CA", now)
        ca = (other, other_key)
    elif mode == "self-signed":
        ca = None
    cert, key = _make_leaf(names, ca[0] if ca else None, ca[1] if ca else None, now, not_after)
    paths = DevCertificate(good.ca_path, os.path.join(lab, f"{mode}.pem"), os.path.join(lab, f"{mode}.key"))
    chain = cert.public_bytes(serialization.Encoding.PEM)
    if ca is dev_ca:  # a full chain; the untrusted CA is left out, as a server with an unknown issuer does
        chain += dev_ca[0].public_bytes(serialization.Encoding.PEM)
    _write(paths.key_path, _key_pem(key), 0o600)
    _write(paths.cert_path, chain, 0o644)
    return paths
