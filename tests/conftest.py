"""Shared fixtures: a test PKI made with trustme, written to PEM files.

``pki.good`` is valid for localhost, 127.0.0.1 and mx.example.test and
chains to ``pki.ca_pem``; the others each break one thing.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
from typing import Any

import attrs
import hypothesis
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from guard import loopback_only

# Before the reactor exists: twisted.internet._resolver binds getaddrinfo when first imported.
assert "twisted.internet._resolver" not in sys.modules, "the loopback guard must be installed before Twisted's resolver"
# Python processes the tests start (twistd, the tlsmta command) install it through sitecustomize;
# every refusal, theirs and ours, lands in one file that each test's teardown reads.
_GUARD_LOG = tempfile.NamedTemporaryFile(prefix="tlsmta-guard-", suffix=".log", delete=False).name
os.environ[loopback_only.LOG_VARIABLE] = _GUARD_LOG
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(__file__).parent / "guard"),
                                                        os.environ.get("PYTHONPATH")]))
loopback_only.install()


def guard_refusals() -> list[str]:
    with open(_GUARD_LOG) as log:
        return log.read().splitlines()


@pytest.fixture(autouse=True)
def loopback_only_guard() -> Any:
    """Fail a test that sent a packet off loopback or asked the system resolver (see guard/loopback_only.py)."""
    before = len(guard_refusals())
    yield
    new = guard_refusals()[before:]
    if new:
        pytest.fail("\n".join(new), pytrace=False)


# Hypothesis fails an example that takes over 200 ms (its default deadline) as "Unreliable test
# timings" when the replay is fast: a loaded CI machine pausing the process is enough.  Every
# property here checks results, not speed (several already said deadline=None): none has one.
hypothesis.settings.register_profile("tlsmta", deadline=None)
hypothesis.settings.load_profile("tlsmta")


@attrs.frozen
class Pair:
    """A certificate chain file and its key file."""

    cert: str
    key: str


@attrs.frozen
class PKI:
    ca: trustme.CA
    ca_pem: str
    other_ca_pem: str
    good: Pair
    expired: Pair
    wrong_name: Pair
    untrusted: Pair
    self_signed: Pair
    client: Pair  # client certificate for client.example.test, from ca
    client_untrusted: Pair
    client_expired: Pair


def _write_leaf(directory: pathlib.Path, name: str, leaf: trustme.LeafCert) -> Pair:
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return Pair(str(cert), str(key))


def _self_signed(directory: pathlib.Path, hostname: str) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "self-signed.pem", directory / "self-signed.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pair(str(cert_path), str(key_path))


SERVER_NAMES = ("localhost", "127.0.0.1", "mx.example.test")
CLIENT_NAME = "client.example.test"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    long_ago = past - datetime.timedelta(days=60)
    return PKI(
        ca=ca,
        ca_pem=str(directory / "ca.pem"),
        other_ca_pem=str(directory / "other-ca.pem"),
        good=_write_leaf(directory, "good", ca.issue_cert(*SERVER_NAMES)),
        expired=_write_leaf(directory, "expired", ca.issue_cert(*SERVER_NAMES, not_before=long_ago, not_after=past)),
        wrong_name=_write_leaf(directory, "wrong-name", ca.issue_cert("other.example.net")),
        untrusted=_write_leaf(directory, "untrusted", other.issue_cert(*SERVER_NAMES)),
        self_signed=_self_signed(directory, "localhost"),
        client=_write_leaf(directory, "client", ca.issue_cert(CLIENT_NAME)),
        client_untrusted=_write_leaf(directory, "client-untrusted", other.issue_cert(CLIENT_NAME)),
        client_expired=_write_leaf(
            directory, "client-expired", ca.issue_cert(CLIENT_NAME, not_before=long_ago, not_after=past)
        ),
    )


@pytest.fixture
def dead_port() -> Any:
    """A loopback port that refuses connections for the whole test (a smarthost or MX that is down).

    It stays bound, never listening, until the test ends: a port merely found free and released
    (bind, close) can be taken meanwhile by any other listener on the machine, and a "down"
    smarthost would then answer."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def reserved_port() -> Any:
    """A loopback port held (bound with SO_REUSEPORT, never listening) for the whole test: it refuses
    connections until a ``reuseport:PORT`` listener starts on it, and no one else can take it meanwhile."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def small_tmpfs(tmp_path: Any):
    """A 512 KiB tmpfs (root only, as in CI): a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)




@pytest.fixture
def events() -> Any:
    """tlsmta's structured log events emitted during the test (dicts with ``tlsmta_event``)."""
    from twisted.logger import globalLogPublisher

    captured: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "tlsmta_event" in event:
            captured.append(event)

    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def certificate_warnings() -> Any:
    """The certificate-expiry warnings (``tlsmta.certificates``, level warn) logged during the test."""
    from twisted.logger import LogLevel, globalLogPublisher

    captured: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "tlsmta.certificates" and event.get("log_level") is LogLevel.warn:
            captured.append(event)

    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def logged_failures() -> Any:
    """The failures (``log.failure``: a traceback in the log) logged during the test."""
    from twisted.logger import globalLogPublisher

    captured: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            captured.append(event)

    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def redis(tmp_path: Any) -> Any:
    """A private redis-server for the test (tests/redis_lab.py), stopped by its PID after it."""
    from redis_lab import RedisServer

    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()
