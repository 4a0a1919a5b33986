"""`tlsmta probe` shows the MTA-STS policy, the TLSA records and the DANE verdict per MX."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from cryptography import x509
from outbound_lab import DOMAIN, MX, start_receiver
from sts_lab import policy_text, start_policy_server, sts_dns
from twisted.internet import reactor

from tlsmta.app import _probe as probe
from tlsmta.config import _loader as configuration
from tlsmta.discovery import _dane as dane
from tlsmta.discovery._resolver import OfflineBackend, Resolver
from tlsmta.tls._policy import VerifyMode


def leaf(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0]


@pytest_twisted.ensureDeferred
async def test_probe_reports_sts_tlsa_and_dane(tmp_path: Any, pki: Any) -> None:
    """A receiver with a DANE-EE record and an enforce policy: the probe shows both and judges by DANE."""
    rx = await start_receiver(tmp_path, pki.wrong_name)
    server = start_policy_server(pki.ca, policy_text("enforce"))
    dns = {"mx": {DOMAIN: [MX]}, "hosts": {MX: ["127.0.0.1"], **sts_dns()["hosts"]}, "txt": sts_dns()["txt"],
           "tlsa": {dane.tlsa_name(MX, rx.port): [str(dane.record_for(leaf(pki.wrong_name.cert)))]}}
    config = configuration.from_dict({"global": {"tls_ca": pki.ca_pem, "smtp_port": rx.port}, "dns": dns})
    options = {k: v.value for k, v in configuration.resolve(config, DOMAIN).items()}
    try:
        results, problem, facts = await probe.run_probe(reactor, Resolver(dns, OfflineBackend()), DOMAIN, options, None, None,
                                                        "probe.test", https_port=server.port)
    finally:
        await server.stop()
        await rx.stop()
    assert problem is None
    text = "\n".join(probe.format_external(facts, DOMAIN))
    assert f"MTA-STS for {DOMAIN}: MTA-STS mode enforce, mx {MX}, max_age 86400, id 1 (fetched)" in text
    assert "DNSSEC-secure" in text
    [result] = results
    req = probe.requirement(options, facts, MX, "no", VerifyMode.NO)
    lines = "\n".join(probe.format_policies(result, facts, req, DOMAIN))
    assert "TLSA (usable, DNSSEC-secure):" in lines and "    3 1 1 " in lines
    assert "DANE:     pass (dane: DANE-EE(3) 3 1 1 matched the leaf)" in lines
    assert "MTA-STS:  enforce; this MX is listed in the policy" in lines
    assert "REQUIRETLS: offered after STARTTLS" in lines
    assert "effective (dane: DANE): deliver over TLS, certificate verified by DANE" in lines
    # Without the TLSA record, enforce judges: the certificate names another host.
    no_dane = probe.requirement(options, probe.ExternalFacts(facts.sts, facts.mx_secure, {}), MX, "no", VerifyMode.NO)
    ok, what = probe.effective_outcome(result, no_dane, DOMAIN, facts)
    assert not ok and "4.7.5 certificate name does not match mx.example.test" in what


@pytest_twisted.ensureDeferred
async def test_probe_command_judges_by_the_effective_policy(tmp_path: Any, pki: Any) -> None:
    """The real `tlsmta probe`: an enforce policy and a certificate for another name: it prints the
    policy and exits 75 (would defer), although the configured tls_verify is no."""
    import os
    import sys

    from e2e import run_process

    rx = await start_receiver(tmp_path, pki.wrong_name)
    server = start_policy_server(pki.ca, policy_text("enforce"))
    config_file = tmp_path / "probe.toml"
    config_file.write_text(
        f'[global]\ntls = "ifavailable"\ntls_ca = "{pki.ca_pem}"\nsmtp_port = {rx.port}\nmta_sts_https_port = {server.port}\n'
        f'[dns.mx]\n"{DOMAIN}" = ["{MX}"]\n[dns.hosts]\n"{MX}" = ["127.0.0.1"]\n"mta-sts.{DOMAIN}" = ["127.0.0.1"]\n'
        f'[dns.txt]\n"_mta-sts.{DOMAIN}" = ["v=STSv1; id=7"]\n'
    )
    tlsmta = os.path.join(os.path.dirname(sys.executable), "tlsmta")
    try:
        code, out, err = await run_process(tlsmta, "probe", DOMAIN, "--config", str(config_file))
    finally:
        await server.stop()
        await rx.stop()
    assert f"MTA-STS for {DOMAIN}: MTA-STS mode enforce, mx {MX}, max_age 86400, id 7 (fetched)" in out, out + err
    assert "MTA-STS:  enforce; this MX is listed in the policy" in out
    assert "effective (mta-sts-enforce: tls=required, tls_verify=host): defer: 451 4.7.5 certificate name does not match mx.example.test" in out
    assert code == 75


def test_probe_shows_ip_sans_and_fingerprints(pki: Any) -> None:
    """Each certificate in the probe's chain lists its IP address SANs and its SPKI and certificate SHA-256."""
    from cryptography.hazmat.primitives import hashes

    cert = leaf(pki.good.cert)
    lines = probe.format_certificate(0, cert)
    assert "      SANs:    localhost, mx.example.test, IP:127.0.0.1" in lines
    assert f"      SPKI:    sha256:{dane.record_for(cert).data.hex()}" in lines  # what a DANE-EE 3 1 1 record holds
    assert f"      cert:    sha256:{cert.fingerprint(hashes.SHA256()).hex()}" in lines


@pytest_twisted.ensureDeferred
async def test_probe_judges_by_tls_pins_and_dane_required(tmp_path: Any, pki: Any) -> None:
    """tls_pins: the probe judges the MX by the pins (a wrong name does not matter, another key does);
    dane = "required" without TLSA records: the MX would not be used."""
    from tlsmta.tls import spki_sha256

    rx = await start_receiver(tmp_path, pki.wrong_name)
    dns = {"mx": {DOMAIN: [MX]}, "hosts": {MX: ["127.0.0.1"]}}
    pin = f"sha256:{spki_sha256(leaf(pki.wrong_name.cert))}"
    raw = {"global": {"tls_ca": pki.ca_pem, "smtp_port": rx.port, "mta_sts": False}, "dns": dns}
    options = {k: v.value for k, v in configuration.resolve(configuration.from_dict(raw), DOMAIN).items()}
    try:
        results, _, facts = await probe.run_probe(reactor, Resolver(dns, OfflineBackend()), DOMAIN, options, None, None, "probe.test")
    finally:
        await rx.stop()
    [result] = results

    def outcome(**changes: Any) -> str:
        req = probe.requirement({**options, **changes}, facts, MX, "ifavailable", VerifyMode.HOST)
        return "\n".join(probe.format_policies(result, facts, req, DOMAIN))

    assert "effective (pinned: tls_pins): deliver over TLS, certificate verified by tls_pins" in outcome(
        tls_pins=(pin.removeprefix("sha256:"),))
    assert "is not in tls_pins (never in plain text)" in outcome(tls_pins=("00" * 32,))
    assert ("defer: 451 4.7.5 dane: DANE required (dane = required) but no DNSSEC-validated TLSA records; MX not used "
            "(this MX is not used)") in outcome(dane="required")
