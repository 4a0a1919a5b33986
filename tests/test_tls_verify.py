"""CertificateCheck and ClientTLS in real TLS handshakes (memory BIOs, trustme chains)."""

from __future__ import annotations

from typing import Any

import pytest
import verify_hooks
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from tlsmta.config._loader import parse_protocols
from tlsmta.tls import _contexts as tls
from tlsmta.tls._certificate_facts import spki_sha256
from tlsmta.tls._policy import Outcome, VerifyMode

ALL = parse_protocols("+ALL")
MX = "mx.example.test"


class _TLSProtocolStub:
    """What set_app_data is given: the connection's owner."""


def handshake(
    pki: Any,
    pair: Any,
    check: tls.CertificateCheck,
    server_name: str = MX,
    server_protocols: frozenset[str] = ALL,
    client_protocols: frozenset[str] = ALL,
) -> tuple[bool, list[bytes]]:
    """Run a full handshake between memory BIOs; returns (completed, SNI names the server saw)."""
    server_ctx = tls.server_context(pair.cert, pair.key, server_protocols)
    seen_sni: list[bytes] = []
    server_ctx.set_tlsext_servername_callback(lambda conn: seen_sni.append(conn.get_servername()))
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client_ctx = tls.client_context(client_protocols, ca=pki.ca_pem)
    client = tls.ClientTLS(client_ctx, server_name, check).clientConnectionForTLS(_TLSProtocolStub())
    done = {"client": False, "server": False}
    try:
        for _ in range(20):
            for name, conn in (("client", client), ("server", server)):
                if not done[name]:
                    try:
                        conn.do_handshake()
                        done[name] = True
                    except SSL.WantReadError:
                        pass
            _pump(client, server)
            _pump(server, client)
            if all(done.values()):
                return True, seen_sni
    except SSL.Error:
        return False, seen_sni
    raise AssertionError("handshake did not finish")


def _pump(src: SSL.Connection, dst: SSL.Connection) -> None:
    while True:
        try:
            data = src.bio_read(65536)
        except SSL.WantReadError:
            return
        if not data:
            return
        dst.bio_write(data)


def _handshake_in_memory(client: SSL.Connection, server: SSL.Connection) -> None:
    """Drive both ends' handshakes over memory BIOs (an SSL.Error from either propagates)."""
    for _ in range(10):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(client, server)
        _pump(server, client)


def outbound_check(mode: str, wanted: tuple[str, ...] = ("example.com", MX), hook: Any = None) -> tls.CertificateCheck:
    return tls.CertificateCheck(
        VerifyMode(mode),
        wanted,
        hook=hook,
        hook_context=tls.HookContext(direction="outbound", domain="example.com", mx_host=MX),
        enforce_in_handshake=True,
    )


CASES = [
    # certificate, mode, handshake completes, outcome, reason fragment
    ("good", "host", True, Outcome.VERIFIED, ""),
    ("good", "ca", True, Outcome.VERIFIED, ""),
    ("good", "optional", True, Outcome.VERIFIED, ""),
    ("good", "no", True, Outcome.UNCHECKED, ""),
    ("wrong_name", "host", False, Outcome.FAILED, "certificate name does not match example.com or mx.example.test"),
    ("wrong_name", "optional", True, Outcome.SOFTFAIL, "certificate name does not match"),
    ("wrong_name", "ca", True, Outcome.VERIFIED, ""),
    ("expired", "ca", False, Outcome.FAILED, "certificate verification failed: certificate has expired (depth 0)"),
    ("expired", "optional", True, Outcome.SOFTFAIL, "certificate has expired"),
    ("untrusted", "ca", False, Outcome.FAILED, "certificate not signed by a trusted CA"),
    ("untrusted", "host", False, Outcome.FAILED, "certificate not signed by a trusted CA"),
    ("untrusted", "optional", True, Outcome.SOFTFAIL, "certificate not signed by a trusted CA"),
    ("self_signed", "ca", False, Outcome.FAILED, "certificate not signed by a trusted CA: self-signed certificate"),
    ("self_signed", "no", True, Outcome.UNCHECKED, ""),
]


@pytest.mark.parametrize("which, mode, completes, outcome, reason", CASES)
def test_outbound_verification_matrix(pki: Any, which: str, mode: str, completes: bool, outcome: Outcome, reason: str) -> None:
    """Each certificate against each tls_verify mode: ca/host abort the handshake, optional soft-fails."""
    check = outbound_check(mode)
    ok, _ = handshake(pki, getattr(pki, which), check)
    verdict = check.verdict()
    assert (ok, verdict.outcome) == (completes, outcome)
    assert reason in verdict.reason


def test_name_matched_via_mx_host_only(pki: Any) -> None:
    """host: a certificate naming only the MX host (not the recipient domain) verifies."""
    check = outbound_check("host", wanted=("example.com", MX))
    assert handshake(pki, pki.good, check)[0]
    assert check.verdict().matched_name == MX


def test_sni_is_the_mx_host(pki: Any) -> None:
    """ClientTLS sends the MX host name as SNI."""
    _, sni = handshake(pki, pki.good, outbound_check("no"), server_name="MX.Example.Test.")
    assert sni == [b"mx.example.test"]


def test_hook_accepts_untrusted_certificate(pki: Any) -> None:
    """An outbound verify hook that answers True overrides chain errors (its answer decides)."""
    verify_hooks.calls.clear()
    check = outbound_check("ca", hook=verify_hooks.record_and_accept)
    assert handshake(pki, pki.untrusted, check)[0]
    assert check.verdict().outcome is Outcome.VERIFIED
    depth, errno, ok, ctx = verify_hooks.calls[0]
    assert not ok and errno != 0 and ctx.mx_host == MX


def test_hook_rejects_good_certificate(pki: Any) -> None:
    """A hook answering False fails an otherwise good certificate under host."""
    check = outbound_check("host", hook=verify_hooks.reject)
    assert not handshake(pki, pki.good, check)[0]
    assert check.verdict().fatal


def test_hook_that_raises_fails_closed(pki: Any) -> None:
    """A hook that raises counts as a verification failure, not a pass."""
    check = outbound_check("ca", hook=verify_hooks.explode)
    assert not handshake(pki, pki.good, check)[0]
    verdict = check.verdict()
    assert verdict.fatal and "verify hook failed: RuntimeError: hook bug" in verdict.reason


def test_hook_shown_name_check_result_at_depth_zero(pki: Any) -> None:
    """Under host, the hook sees ok=False at depth 0 when the name does not match."""
    verify_hooks.calls.clear()
    check = outbound_check("host", hook=verify_hooks.record_and_accept)
    handshake(pki, pki.wrong_name, check)
    assert [(d, ok) for d, _, ok, _ in verify_hooks.calls if d == 0] == [(0, False)]
    assert check.verdict().verified  # the hook accepted it


def test_session_facts_after_handshake(pki: Any) -> None:
    """SessionFacts reads protocol, cipher and the peer's subject/issuer."""
    check = outbound_check("host")
    server_ctx = tls.server_context(pki.good.cert, pki.good.key, ALL)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = tls.ClientTLS(tls.client_context(ALL, ca=pki.ca_pem), MX, check).clientConnectionForTLS(_TLSProtocolStub())
    _handshake_in_memory(client, server)
    facts = tls.SessionFacts.from_connection(client)
    assert facts.protocol == "TLSv1.3"
    assert facts.cipher.startswith("TLS_")
    assert facts.peer_issuer and "trustme" in facts.peer_issuer


def _facts_of_one_handshake(pki: Any) -> tls.SessionFacts:
    server = SSL.Connection(tls.server_context(pki.good.cert, pki.good.key, ALL), None)
    server.set_accept_state()
    client = tls.ClientTLS(tls.client_context(ALL, ca=pki.ca_pem), MX, outbound_check("host")).clientConnectionForTLS(
        _TLSProtocolStub())
    _handshake_in_memory(client, server)
    return tls.SessionFacts.from_connection(client)


def test_certificate_facts_are_worked_out_once_per_certificate(pki: Any) -> None:
    """Two sessions with one server certificate share its log fields (fingerprints
    hashed once), each session still logging them in full."""
    first, second = _facts_of_one_handshake(pki), _facts_of_one_handshake(pki)
    assert first.peer_certificate is not second.peer_certificate
    assert tls.certificate_log_fields(first.peer_certificate) is tls.certificate_log_fields(second.peer_certificate)
    fields = tls.tls_log_fields(second, "host", "yes", "")
    assert fields == tls.tls_log_fields(first, "host", "yes", "")
    assert fields["spki_sha256"] == spki_sha256(second.peer_certificate)
    assert fields["cert_sha256"] == second.peer_certificate.fingerprint(hashes.SHA256()).hex()
    assert fields["subject"] == first.peer_subject and "trustme" in fields["issuer"]


@pytest.mark.parametrize(
    "server, client, completes",
    [
        ("+ALL:-TLSv1.3", "+TLSv1.3", False),
        ("+ALL:-TLSv1.0:-TLSv1.1", "+TLSv1.2", True),
        ("+TLSv1.3", "+ALL:-TLSv1.3", False),
        ("+TLSv1.3", "+ALL", True),
    ],
)
def test_protocol_lists_are_enforced(pki: Any, server: str, client: str, completes: bool) -> None:
    """tls_protocols restricts the versions either side will negotiate."""
    check = outbound_check("no")
    ok, _ = handshake(pki, pki.good, check, server_protocols=parse_protocols(server), client_protocols=parse_protocols(client))
    assert ok is completes


def test_load_keypair_reports_mismatch(pki: Any) -> None:
    """load_keypair names the key when it does not match the certificate."""
    with pytest.raises(tls.KeyPairError) as e:
        tls.load_keypair(pki.good.cert, pki.wrong_name.key)
    assert e.value.key == "tls_key" and "does not match" in str(e.value)


def _weak_chain(directory: Any) -> tuple[str, str, str]:
    """A CA and an RSA-1024 leaf for mx.example.test (below OpenSSL's default security level)."""
    import datetime

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(65537, 2048)
    ca_name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "Weak Test CA")])
    ca = (
        cx509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(cx509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(65537, 1024)
    leaf = (
        cx509.CertificateBuilder().subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, MX)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(cx509.SubjectAlternativeName([cx509.DNSName(MX)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = [str(directory / n) for n in ("weak-ca.pem", "weak.pem", "weak.key")]
    for path, data in zip(paths, [
        ca.public_bytes(serialization.Encoding.PEM),
        leaf.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    ]):
        with open(path, "wb") as f:
            f.write(data)
    return tuple(paths)  # type: ignore[return-value]


@pytest.mark.parametrize("protocols", ["+ALL", "+ALL:-TLSv1.0:-TLSv1.1"])
def test_weak_key_fails_host_whatever_the_protocol_list(tmp_path: Any, protocols: str) -> None:
    """Allowing TLS 1.0/1.1 does not lower OpenSSL's security level: an RSA-1024 leaf still fails host."""
    ca, cert, key = _weak_chain(tmp_path)
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # the server is willing; the client must refuse
    server_ctx.use_certificate_chain_file(cert)
    server_ctx.use_privatekey_file(key)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    check = outbound_check("host")
    client = tls.ClientTLS(tls.client_context(parse_protocols(protocols), ca=ca), MX, check).clientConnectionForTLS(_TLSProtocolStub())
    with pytest.raises(SSL.Error):
        _handshake_in_memory(client, server)
    verdict = check.verdict()
    assert verdict.fatal and "key too weak" in verdict.reason
