"""The built-in TLS defaults pass Mozilla's "intermediate" profile, in both directions.

sslyze (its own venv, ``.venv/sslyze``: it pins a cryptography pyOpenSSL 26
cannot use) scans a listener left at its defaults over STARTTLS on loopback;
the only finding allowed is that it does not trust our test CA.  Outbound,
tlsmta's client context is handshaken in memory against servers that offer
one thing each: what the profile rejects must fail, what it allows must work.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, start_relay
from memory_tls import connect
from OpenSSL import SSL

from tlsmta.testing import dev_listener
from tlsmta.tls import _contexts as contexts

SSLYZE = pathlib.Path(sys.prefix) / "sslyze" / "bin" / "sslyze"
SCAN_TIMEOUT = 50  # sslyze takes a few seconds on loopback; pytest's own timeout is 60

# Mozilla intermediate 5.7, TLS 1.2 (OpenSSL names) and groups, as sslyze's profile has them.
INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
}
INTERMEDIATE_TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
INTERMEDIATE_GROUPS = {"X25519", "secp256r1", "secp384r1"}
TLS12 = frozenset({"TLSv1.2"})
TLS13 = frozenset({"TLSv1.3"})
BOTH = frozenset({"TLSv1.2", "TLSv1.3"})


@pytest.fixture(scope="module")
def short_lived(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A server certificate from the test CA that lives 90 days (the profile allows at most 366)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = pki.ca.issue_cert("localhost", "127.0.0.1", not_before=now - datetime.timedelta(days=1),
                             not_after=now + datetime.timedelta(days=90))
    directory = tmp_path_factory.mktemp("profile")
    cert, key = directory / "server.pem", directory / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


def mozilla_findings(output: str) -> dict[str, str]:
    """The issues sslyze's "COMPLIANCE AGAINST TLS CONFIGURATION" section lists, by name."""
    section = output.partition("COMPLIANCE AGAINST TLS CONFIGURATION")[2]
    assert section, f"sslyze printed no compliance section:\n{output}"
    return dict(re.findall(r"^\s+\* (\w+): (.*)$", section, re.M))


def sslyze_intermediate(port: int) -> dict[str, str]:
    assert SSLYZE.exists(), f"{SSLYZE} is missing: `make venv` installs sslyze in its own venv"
    done = subprocess.run(
        [str(SSLYZE), "--starttls=smtp", "--mozilla_config=intermediate", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=SCAN_TIMEOUT,
    )
    assert "SCANS COMPLETED" in done.stdout, done.stdout + done.stderr
    return mozilla_findings(done.stdout)


@pytest_twisted.ensureDeferred
async def test_listener_defaults_pass_mozilla_intermediate(tmp_path: Any, short_lived: tuple[str, str]) -> None:
    """sslyze --mozilla_config=intermediate finds nothing but the test CA's trust on a default listener.

    Before, it found four ECDHE-ECDSA CBC suites and the X448 and secp521r1 groups.
    """
    cert, key = short_lived
    relay = await start_relay(tmp_path, [dev_listener(tls="starttls", tls_certificate=cert, tls_key=key)])
    try:
        findings = await in_thread(sslyze_intermediate, relay.port)
    finally:
        await relay.stop()
    assert set(findings) == {"certificate_path_validation"}, findings


@pytest_twisted.ensureDeferred
async def test_sslyze_sees_what_the_groups_option_offers(tmp_path: Any, short_lived: tuple[str, str]) -> None:
    """The check can fail: a listener whose tls_groups adds secp521r1 is reported for it."""
    cert, key = short_lived
    listener = dev_listener(tls="starttls", tls_certificate=cert, tls_key=key, tls_groups=["X25519", "secp521r1"])
    relay = await start_relay(tmp_path, [listener])
    try:
        findings = await in_thread(sslyze_intermediate, relay.port)
    finally:
        await relay.stop()
    assert "secp521r1" in findings.get("tls_curves", ""), findings


# testssl.sh (Debian's testssl.sh, /usr/bin/testssl): every check, ratings from its JSON.
TESTSSL = "/usr/bin/testssl"
TESTSSL_TIMEOUT = 240  # about 35 s on loopback; it runs a few hundred handshakes through openssl
WORSE_THAN_LOW = {"MEDIUM", "HIGH", "CRITICAL"}
# Findings about the test certificate, not the TLS settings: our own CA, and no CRL or OCSP URI in it.
TEST_CERTIFICATE_FINDINGS = {"cert_chain_of_trust", "cert_revocation"}


def run_testssl(port: int, json_path: str) -> list[dict[str, str]]:
    done = subprocess.run(
        [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--jsonfile", json_path,
         "-t", "smtp", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=TESTSSL_TIMEOUT,
    )
    assert os.path.exists(json_path), done.stdout + done.stderr
    with open(json_path) as f:
        findings: list[dict[str, str]] = json.load(f)
    assert any(item["id"] == "cipher_order" for item in findings), done.stdout  # the scan ran its checks
    return findings


@pytest.mark.timeout(TESTSSL_TIMEOUT + 30)
@pytest_twisted.ensureDeferred
async def test_testssl_rates_nothing_worse_than_low(tmp_path: Any, short_lived: tuple[str, str]) -> None:
    """testssl.sh against a default STARTTLS listener: no MEDIUM, HIGH or CRITICAL finding but the test certificate's.

    Before, it rated the missing server cipher order HIGH.
    """
    cert, key = short_lived
    relay = await start_relay(tmp_path, [dev_listener(tls="starttls", tls_certificate=cert, tls_key=key)])
    try:
        findings = await in_thread(run_testssl, relay.port, str(tmp_path / "testssl.json"))
    finally:
        await relay.stop()
    bad = [(f["id"], f["severity"], f["finding"]) for f in findings
           if f["severity"] in WORSE_THAN_LOW and f["id"] not in TEST_CERTIFICATE_FINDINGS]
    assert bad == []


# -- outbound: the client context's defaults, in memory ---------------------------------------------


def server_offering(pki: Any, protocols: frozenset[str], ciphers: str | None = None,
                    groups: list[str] | None = None) -> SSL.Context:
    return contexts.server_context(pki.good.cert, pki.good.key, protocols, ciphers=ciphers, groups=groups)


def test_client_defaults_offer_only_intermediate_suites() -> None:
    """What the default client context lists for TLS 1.2 and 1.3 is within the profile."""
    offered = set(SSL.Connection(contexts.client_context(BOTH), None).get_cipher_list())
    assert offered <= INTERMEDIATE_TLS12 | INTERMEDIATE_TLS13, offered - INTERMEDIATE_TLS12 - INTERMEDIATE_TLS13
    assert offered & INTERMEDIATE_TLS12 and offered & INTERMEDIATE_TLS13


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256"])
def test_client_defaults_refuse_a_server_with_only_a_rejected_suite(pki: Any, cipher: str) -> None:
    """A TLS 1.2 server offering only a CBC or RSA key-exchange suite finds no shared cipher with us."""
    with pytest.raises(SSL.Error):
        connect(contexts.client_context(TLS12, ca=pki.ca_pem), server_offering(pki, TLS12, ciphers=cipher))


@pytest.mark.parametrize("group", ["X448", "secp521r1"])
@pytest.mark.parametrize("protocols", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_client_defaults_refuse_a_server_with_only_a_rejected_group(pki: Any, group: str, protocols: frozenset[str]) -> None:
    """A server whose only group is X448 or P-521 shares no group with tlsmta's default client."""
    with pytest.raises(SSL.Error):
        connect(contexts.client_context(protocols, ca=pki.ca_pem), server_offering(pki, protocols, groups=[group]))


@pytest.mark.parametrize("group", sorted(INTERMEDIATE_GROUPS))
def test_client_defaults_agree_each_intermediate_group(pki: Any, group: str) -> None:
    """Each of the profile's groups is offered by default and negotiated when it is the server's only one."""
    client, server = connect(contexts.client_context(BOTH, ca=pki.ca_pem), server_offering(pki, BOTH, groups=[group]))
    facts = contexts.SessionFacts.from_connection(client)
    assert facts.group == group and contexts.SessionFacts.from_connection(server).group == group


def test_default_groups_lead_with_post_quantum_where_openssl_has_it() -> None:
    """The default list is the profile's groups, after X25519MLKEM768 when this OpenSSL offers it."""
    groups = contexts.default_groups()
    assert set(groups) - {"X25519MLKEM768"} == INTERMEDIATE_GROUPS
    has_mlkem = not contexts.unsupported_groups(["X25519MLKEM768"])
    assert (groups[0] == "X25519MLKEM768") == has_mlkem


def test_default_handshake_negotiates_the_first_default_group(pki: Any) -> None:
    """Two tlsmta ends left at their defaults agree on the first default group (X25519MLKEM768 on OpenSSL 3.5+)."""
    client, server = connect(contexts.client_context(BOTH, ca=pki.ca_pem), server_offering(pki, BOTH))
    assert contexts.SessionFacts.from_connection(client).group == contexts.default_groups()[0]


def test_default_client_needs_no_retry_with_a_server_without_the_hybrid(pki: Any) -> None:
    """With X25519MLKEM768 first, the default client also sends an X25519 key share: a server
    without ML-KEM (most today) agrees at once, without a HelloRetryRequest (a second ClientHello)."""
    server_ctx = server_offering(pki, TLS13, groups=["X25519", "secp256r1"])
    hellos: list[bytes | None] = []
    server_ctx.set_tlsext_servername_callback(lambda conn: hellos.append(conn.get_servername()))
    client, _ = connect(contexts.client_context(TLS13, ca=pki.ca_pem), server_ctx, server_name=b"localhost")
    assert contexts.SessionFacts.from_connection(client).group == "X25519"
    assert hellos == [b"localhost"]
