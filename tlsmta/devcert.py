"""Certificates generated at first start (``tls_certificate = "auto"``).

A dev CA and a server certificate it signs, both ECDSA P-256 (cheap
handshakes), kept under ``state_dir`` and reused on later starts.  An
application's tests can trust the dev CA's PEM to verify the relay.
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


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("tlsmta dev CA")
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
    names: Sequence[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
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


def ensure_dev_certificate(state_dir: str, names: Sequence[str]) -> DevCertificate:
    """Create (or reuse) the dev CA and a server certificate for ``names``."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    paths = DevCertificate(
        ca_path=os.path.join(state_dir, "dev-ca.pem"),
        cert_path=os.path.join(state_dir, "dev-cert.pem"),
        key_path=os.path.join(state_dir, "dev-cert.key"),
    )
    ca_key_path = os.path.join(state_dir, "dev-ca.key")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = _load(paths.ca_path, ca_key_path)
    if ca is None or ca[0].not_valid_after_utc - RENEW_BEFORE < now:
        ca = _make_ca(now)
        _write(ca_key_path, _key_pem(ca[1]), 0o600)
        _write(paths.ca_path, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
        leaf = None
    else:
        leaf = _load(paths.cert_path, paths.key_path)
    if leaf is None or leaf[0].issuer != ca[0].subject or not _still_good(leaf[0], names, now):
        cert, key = _make_leaf(names, ca[0], ca[1], now)
        _write(paths.key_path, _key_pem(key), 0o600)
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca[0].public_bytes(serialization.Encoding.PEM)
        _write(paths.cert_path, chain, 0o644)
    return paths
