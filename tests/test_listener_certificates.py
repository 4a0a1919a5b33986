"""A listener's certificates and TLS requirement over real loopback sockets and real clients:
``tls = required``, certificates chosen by SNI, RSA and ECDSA chains side by side, reload, expiry;
and the outbound client certificate of each key type, against openssl s_server."""

from __future__ import annotations

import datetime
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import trustme
from e2e import client_context, in_thread, maildir_messages, read_reply, run_process, start_relay
from OpenSSL import SSL

from tlsmta.app import _preflight as preflight
from tlsmta.config import parse_protocols
from tlsmta.testing import RunningRelay, dev_listener
from tlsmta.tls import client_context as tlsmta_client_context
from tlsmta.tls._contexts import served_certificate

MUST_STARTTLS = b"5.7.0 Must issue a STARTTLS command first"


def _mail_in_clear_then_inside_tls(port: int, ca: str) -> tuple[tuple[int, bytes], bool, dict[str, Any]]:
    """MAIL before STARTTLS (the answer), whether EHLO offered STARTTLS, then a message inside TLS."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        offered = client.has_extn("starttls")
        refused = client.mail("a@client.test")
        client.rset()
        client.starttls(context=client_context(ca))
        client.ehlo()
        result = client.sendmail("a@client.test", ["u@example.com"], b"Subject: tls\r\n\r\nhi\r\n")
    return refused, offered, result


@pytest_twisted.ensureDeferred
async def test_tls_required_listener_refuses_mail_in_clear_and_takes_it_inside_tls(tmp_path: Any, pki: Any) -> None:
    """``tls = required``: smtplib's MAIL in clear gets 530 5.7.0, EHLO still offers STARTTLS,
    and the same client's message after STARTTLS is stored."""
    listener = dev_listener(tls="required", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    relay = await start_relay(tmp_path, [listener])
    try:
        refused, offered, result = await in_thread(_mail_in_clear_then_inside_tls, relay.port, pki.ca_pem)
    finally:
        await relay.stop()
    assert refused == (530, MUST_STARTTLS)
    assert offered
    assert result == {}
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert "with ESMTPS id" in " ".join(msg["Received"].split())


# -- certificates chosen by SNI and by key type ---------------------------------------------


@attrs.frozen
class Chain:
    """A chain file, its key file and the leaf's DER (what a client sees)."""

    cert: str
    key: str
    der: bytes


def _issue(ca: trustme.CA, directory: Path, name: str, *names: str, key_type: trustme.KeyType) -> Chain:
    leaf = ca.issue_cert(*names, common_name=names[0], key_type=key_type)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return Chain(str(cert), str(key), ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))


@attrs.frozen
class Certificates:
    ca: str
    default_rsa: Chain
    default_ecdsa: Chain
    org: Chain  # *.example.org, RSA
    net_rsa: Chain  # mail.example.net, both key types
    net_ecdsa: Chain


RSA, ECDSA = trustme.KeyType.RSA, trustme.KeyType.ECDSA


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return Certificates(
        ca=str(tmp_path / "ca.pem"),
        default_rsa=_issue(ca, tmp_path, "mx-rsa", "mx.example.test", key_type=RSA),
        default_ecdsa=_issue(ca, tmp_path, "mx-ecdsa", "mx.example.test", key_type=ECDSA),
        org=_issue(ca, tmp_path, "org", "*.example.org", key_type=RSA),
        net_rsa=_issue(ca, tmp_path, "net-rsa", "mail.example.net", key_type=RSA),
        net_ecdsa=_issue(ca, tmp_path, "net-ecdsa", "mail.example.net", key_type=ECDSA),
    )


def sni_listener(certs: Certificates, **overrides: Any) -> dict[str, Any]:
    """Default: RSA and ECDSA for mx.example.test; SNI: *.example.org (RSA), mail.example.net (both)."""
    return dev_listener(**{
        "tls": "starttls",
        "tls_certificate": [certs.default_rsa.cert, certs.default_ecdsa.cert],
        "tls_key": [certs.default_rsa.key, certs.default_ecdsa.key],
        "tls_sni": [
            {"certificate": certs.org.cert, "key": certs.org.key},
            {"certificate": [certs.net_ecdsa.cert, certs.net_rsa.cert], "key": [certs.net_ecdsa.key, certs.net_rsa.key]},
        ],
        **overrides,
    })


def served(port: int, ca: str, server_name: str | None, key_type: str | None = None, message: bool = False) -> bytes:
    """STARTTLS with Python's ssl (SNI ``server_name``); ``key_type`` "ECDSA"/"RSA" offers only
    TLS 1.2 suites of that authentication; returns the DER of the certificate served.
    ``message``: send one message inside TLS as well."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # which name the certificate has is what the test compares
    if key_type is not None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(f"ECDHE-{key_type}-AES128-GCM-SHA256")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        plain = sock.makefile("rb")
        for command in (None, b"EHLO client.test\r\n", b"STARTTLS\r\n"):
            if command:
                sock.sendall(command)
            assert read_reply(plain)[:1] in (b"2",)
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            f = tls.makefile("rb")
            script = [b"EHLO client.test\r\n"]
            if message:
                script += [b"MAIL FROM:<a@client.test>\r\n", b"RCPT TO:<u@example.com>\r\n", b"DATA\r\n",
                           b"Subject: sni\r\n\r\nhi\r\n.\r\n"]
            for command in script:
                tls.sendall(command)
                assert read_reply(f)[:1] in (b"2", b"3")
            tls.sendall(b"QUIT\r\n")
            read_reply(f)
    assert der is not None
    return der


@pytest_twisted.ensureDeferred
async def test_sni_and_key_type_pick_the_served_certificate(tmp_path: Any, certs: Certificates) -> None:
    """The client's SNI name picks the certificate set (wildcards as RFC 6125 says; no SNI or no match:
    the default), and within a set, clients offering ECDSA get ECDSA and the others RSA."""
    relay = await start_relay(tmp_path, [sni_listener(certs)])
    cases = [
        (None, "ECDSA", certs.default_ecdsa),
        (None, "RSA", certs.default_rsa),
        ("unknown.example.com", "RSA", certs.default_rsa),
        ("smtp.example.org", None, certs.org),
        ("smtp.example.org", "RSA", certs.org),
        ("mail.example.net", "ECDSA", certs.net_ecdsa),
        ("mail.example.net", "RSA", certs.net_rsa),
        ("deep.smtp.example.org", "RSA", certs.default_rsa),
    ]
    try:
        seen = [await in_thread(served, relay.port, certs.ca, name, kind) for name, kind, _ in cases]
    finally:
        await relay.stop()
    assert seen == [chain.der for _, _, chain in cases]


@pytest_twisted.ensureDeferred
async def test_openssl_s_client_over_tls13_gets_the_chain_its_signature_algorithms_allow(
    tmp_path: Any, certs: Certificates
) -> None:
    """openssl s_client with TLS 1.3 signature algorithms: ECDSA-only gets the ECDSA chain, RSA-only
    the RSA chain, each verifying against the CA under the SNI name."""
    relay = await start_relay(tmp_path, [sni_listener(certs)])
    try:
        runs = {}
        for sigalgs in ("ECDSA+SHA256", "rsa_pss_rsae_sha256:RSA+SHA256"):
            runs[sigalgs] = await run_process(
                "openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{relay.port}", "-tls1_3",
                "-servername", "mail.example.net", "-verify_hostname", "mail.example.net", "-CAfile", certs.ca,
                "-sigalgs", sigalgs, "-brief", stdin=b"QUIT\r\n",
            )
    finally:
        await relay.stop()
    ecdsa, rsa = (out + err for _, out, err in runs.values())
    assert "Verification: OK" in ecdsa and "Signature type: ECDSA" in ecdsa, ecdsa
    assert "Verification: OK" in rsa and "Signature type: RSA-PSS" in rsa, rsa


@pytest_twisted.ensureDeferred
async def test_received_and_disconnect_lines_name_the_certificate_served(tmp_path: Any, certs: Certificates) -> None:
    """The received and disconnect lines carry ``sni`` and the certificate the SNI name and key type chose."""
    relay = await start_relay(tmp_path, [sni_listener(certs)])
    lines: list[tuple[str, dict[str, Any]]] = []
    relay.service.events.add_sink(lambda event, fields: lines.append((event, fields)))
    try:
        await in_thread(served, relay.port, certs.ca, "mail.example.net", "ECDSA", message=True)
    finally:
        await relay.stop()
    received = next(fields for event, fields in lines if event == "received")
    disconnect = next(fields for event, fields in lines if event == "disconnect")
    for fields in (received, disconnect):
        assert fields["sni"] == "mail.example.net"
        assert fields["certificate"].startswith("CN=mail.example.net") and fields["certificate"].endswith("(ecdsa)")


def _rewrite(chain: Chain, ca: trustme.CA, name: str, key_type: trustme.KeyType, days: int = 365) -> bytes:
    """Replace ``chain``'s files in place with a new certificate for ``name``, valid ``days``; its DER."""
    not_after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days, hours=12)
    leaf = ca.issue_cert(name, common_name=name, key_type=key_type, not_after=not_after)
    Path(chain.cert).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(chain.key)
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


@pytest_twisted.ensureDeferred
async def test_reload_rereads_every_chain_and_sni_certificate(tmp_path: Any, certificate_warnings: list[dict[str, Any]]) -> None:
    """Files replaced on disk, then the reload SIGHUP runs: new handshakes get the new default RSA and
    ECDSA chains and the new SNI certificate, with the configuration file unchanged; the expiry gauge
    and the warnings follow (the new RSA chain has 10 days left)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    rsa = _issue(ca, tmp_path, "rsa", "mx.example.test", key_type=RSA)
    ecdsa = _issue(ca, tmp_path, "ecdsa", "mx.example.test", key_type=ECDSA)
    org = _issue(ca, tmp_path, "org", "*.example.org", key_type=RSA)
    path = tmp_path / "tlsmta.toml"
    path.write_text(f"""
[global]
hostname = "mx.example.test"
state_dir = "{tmp_path / 'state'}"
route = "discard"
[spool]
path = "{tmp_path / 'spool'}"
[[listener]]
name = "mx"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "starttls"
tls_certificate = ["{rsa.cert}", "{ecdsa.cert}"]
tls_key = ["{rsa.key}", "{ecdsa.key}"]
tls_sni = [{{ certificate = "{org.cert}", key = "{org.key}" }}]
""")
    relay = await RunningRelay(preflight.load(str(path))).start()
    ca_pem = str(tmp_path / "ca.pem")
    try:
        before = [await in_thread(served, relay.port, ca_pem, name, kind)
                  for name, kind in ((None, "RSA"), (None, "ECDSA"), ("a.example.org", None))]
        renewed = [_rewrite(rsa, ca, "mx.example.test", RSA, days=10), _rewrite(ecdsa, ca, "mx.example.test", ECDSA),
                   _rewrite(org, ca, "*.example.org", RSA)]
        assert relay.service.reload() == []
        await relay.service.reloaded()
        after = [await in_thread(served, relay.port, ca_pem, name, kind)
                 for name, kind in ((None, "RSA"), (None, "ECDSA"), ("a.example.org", None))]
        gauge = {labels["path"]: seconds for labels, seconds in relay.service.certificates.samples()}
    finally:
        await relay.stop()
    assert before == [rsa.der, ecdsa.der, org.der]
    assert after == renewed
    assert gauge[rsa.cert] == pytest.approx(10.5 * 24 * 3600, abs=60) and gauge[org.cert] > 300 * 24 * 3600
    assert [(w["path"], w["threshold_days"]) for w in certificate_warnings] == [(rsa.cert, 14)]


# -- the outbound client certificate, one per key type --------------------------------------


def _present_client_certificate(certs: Certificates, client_sigalgs: str) -> tuple[str | None, str]:
    """Handshake with openssl s_server asking for a client certificate with ``client_sigalgs``, from
    tlsmta's client context holding an RSA and an ECDSA chain: what we presented, what s_server saw."""
    argv = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-cert", certs.default_rsa.cert,
            "-key", certs.default_rsa.key, "-Verify", "1", "-client_sigalgs", client_sigalgs, "-CAfile", certs.ca]
    # stdin stays open: s_server ends the session at EOF on it
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as server:
        try:
            assert server.stdout is not None
            line = b""
            while not line.startswith(b"ACCEPT"):
                line = server.stdout.readline()
                assert line, "openssl s_server exited before listening"
            port = int(line.rsplit(b":", 1)[1])
            ctx = tlsmta_client_context(parse_protocols("+ALL"), ca=certs.ca,
                                        cert_path=(certs.net_rsa.cert, certs.net_ecdsa.cert),
                                        key_path=(certs.net_rsa.key, certs.net_ecdsa.key))
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.settimeout(None)  # pyOpenSSL wants a blocking socket; s_server's exit bounds it
                conn = SSL.Connection(ctx, sock)
                conn.set_connect_state()
                conn.do_handshake()
                presented = served_certificate(conn)
                conn.sendall(b"bye\n")
                conn.shutdown()
            return presented, server.communicate(timeout=20)[0].decode()
        finally:
            if server.poll() is None:
                server.kill()


@pytest.mark.parametrize("client_sigalgs, key_type", [("ECDSA+SHA256", "ecdsa"), ("rsa_pss_rsae_sha256:RSA+SHA256", "rsa")])
def test_outbound_client_certificate_of_the_key_type_the_server_asks_for(
    certs: Certificates, client_sigalgs: str, key_type: str
) -> None:
    """A delivery scope's tls_certificate/tls_key lists: the client presents the chain whose key type the
    server's CertificateRequest allows (openssl s_server -client_sigalgs), and s_server received that one."""
    presented, server_output = _present_client_certificate(certs, client_sigalgs)
    assert presented is not None and presented.startswith("CN=mail.example.net") and presented.endswith(f"({key_type})")
    assert "CN = mail.example.net" in server_output, server_output


def _mail_reply(port: int, ca: str, server_name: str, client: Chain | None) -> int:
    """STARTTLS with SNI ``server_name`` (and ``client``'s certificate, if any); the reply code to MAIL."""
    ctx = client_context(ca, client)
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as smtp:
        smtp.ehlo()
        smtp.docmd("STARTTLS")
        smtp.sock = ctx.wrap_socket(smtp.sock, server_hostname=server_name)
        smtp.file = None
        smtp.ehlo()
        code, _ = smtp.mail("a@client.test")
    return code


@pytest_twisted.ensureDeferred
async def test_a_certificate_chosen_by_sni_still_asks_for_and_checks_client_certificates(
    tmp_path: Any, certs: Certificates
) -> None:
    """The SNI context keeps the listener's client-certificate policy (tls_verify = ca): with a certificate
    from tls_client_ca MAIL is accepted, without one it is 530, under the SNI name as under the default."""
    relay = await start_relay(tmp_path, [sni_listener(certs, tls_verify="ca", tls_client_ca=certs.ca)])
    try:
        codes = {(name, bool(client)): await in_thread(_mail_reply, relay.port, certs.ca, name, client)
                 for name in ("mail.example.net", "mx.example.test") for client in (certs.org, None)}
    finally:
        await relay.stop()
    assert codes == {("mail.example.net", True): 250, ("mail.example.net", False): 530,
                     ("mx.example.test", True): 250, ("mx.example.test", False): 530}


def _implicit_tls_leaf(port: int, ca: str, server_name: str) -> bytes:
    """The certificate an implicit-TLS listener serves to SNI ``server_name`` (its 220 greeting read inside TLS)."""
    ctx = client_context(ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            assert read_reply(tls.makefile("rb")).startswith(b"220 ")
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener_chooses_by_sni_too(tmp_path: Any, certs: Certificates) -> None:
    """tls = implicit: the servername callback runs on the first handshake as it does after STARTTLS."""
    relay = await start_relay(tmp_path, [sni_listener(certs, tls="implicit")])
    try:
        seen = [await in_thread(_implicit_tls_leaf, relay.port, certs.ca, name)
                for name in ("a.example.org", "mx.example.test")]
    finally:
        await relay.stop()
    assert seen[0] == certs.org.der and seen[1] in (certs.default_rsa.der, certs.default_ecdsa.der)
