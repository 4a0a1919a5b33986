"""Certificate expiry: which certificates are watched, the 30/14/7-day and expired warnings
(once per threshold per certificate, on a fake clock), the Prometheus gauge, and check-config."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from tlsmta.app._certificate_expiry import DAY, CertificateWatch, due_threshold, watched_certificates
from tlsmta.app._preflight import load
from tlsmta.app.cli import EX_OK, main
from tlsmta.reporting import Metrics

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _pair(ca: trustme.CA, directory: Path, name: str, days_left: float, key_type: trustme.KeyType) -> tuple[str, str]:
    leaf = ca.issue_cert("mx.example.test", common_name=name, key_type=key_type,
                         not_before=NOW - datetime.timedelta(days=90), not_after=NOW + datetime.timedelta(days=days_left))
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
def config_path(tmp_path: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """A listener with RSA (20 days left) and ECDSA (200 days) chains, an SNI certificate (expired
    3 days ago) and an outbound client certificate in a domain scope (10 days)."""
    ca = trustme.CA()
    files = {
        "rsa": _pair(ca, tmp_path, "rsa", 20.5, trustme.KeyType.RSA),
        "ecdsa": _pair(ca, tmp_path, "ecdsa", 200.5, trustme.KeyType.ECDSA),
        "sni": _pair(ca, tmp_path, "sni", -3.5, trustme.KeyType.ECDSA),
        "client": _pair(ca, tmp_path, "client", 10.5, trustme.KeyType.ECDSA),
    }
    path = tmp_path / "tlsmta.toml"
    path.write_text(f"""
[domain."partner.example"]
tls_certificate = "{files['client'][0]}"
tls_key = "{files['client'][1]}"
[[listener]]
name = "mx"
endpoint = "tcp:2525"
tls_certificate = ["{files['rsa'][0]}", "{files['ecdsa'][0]}"]
tls_key = ["{files['rsa'][1]}", "{files['ecdsa'][1]}"]
tls_sni = [{{ certificate = "{files['sni'][0]}", key = "{files['sni'][1]}" }}]
""")
    return str(path), files


@pytest.mark.parametrize(
    "days_left, warned, due",
    [
        (31, set(), None),
        (30, set(), 30),
        (20, {30}, None),
        (13.9, {30}, 14),
        (5, set(), 7),  # a first look at 5 days: one warning, the tightest
        (5, {30, 14, 7}, None),
        (-1, {30, 14, 7}, 0),  # expired
        (-1, {30, 14, 7, 0}, None),
    ],
)
def test_due_threshold(days_left: float, warned: set[int], due: int | None) -> None:
    """The tightest threshold crossed and not yet warned about (pure)."""
    assert due_threshold(days_left * DAY, warned) == due


def test_every_served_and_presented_certificate_is_watched(config_path: Any) -> None:
    """Listener chains (both key types), SNI certificates and outbound client certificates, with where they are set."""
    path, files = config_path
    watched = [(w.role, w.scope, w.path) for w in watched_certificates(load(path))]
    assert watched == [
        ("listener", "mx", files["rsa"][0]),
        ("listener", "mx", files["ecdsa"][0]),
        ("sni", "mx", files["sni"][0]),
        ("client", "domain.partner.example", files["client"][0]),
    ]


def watching(path: str) -> tuple[Clock, CertificateWatch]:
    """A CertificateWatch over ``path``'s certificates on a clock that reads NOW."""
    clock = Clock()
    clock.advance(NOW.timestamp())
    watch = CertificateWatch(clock)
    watch.load(load(path))
    return clock, watch


def test_warnings_come_once_per_threshold_per_certificate(config_path: Any, certificate_warnings: list[Any]) -> None:
    """At start: the RSA chain (20 days) at 30, the client certificate (10 days) at 14, the SNI one as
    expired; again the same day: nothing; a week later the RSA chain crosses 14 and the client one 7."""
    path, files = config_path
    clock, watch = watching(path)
    watch.check()
    first = sorted((w["path"], w["threshold_days"]) for w in certificate_warnings)
    assert first == sorted([(files["rsa"][0], 30), (files["client"][0], 14), (files["sni"][0], 0)])
    assert any("expired 3 day(s) ago" in w["left"] for w in certificate_warnings)
    watch.check()
    watch.load(load(path))  # a reload re-reads the same files: still warned
    watch.check()
    assert len(certificate_warnings) == 3
    clock.advance(7 * DAY)
    watch.check()
    assert sorted((w["path"], w["threshold_days"]) for w in certificate_warnings[3:]) == sorted(
        [(files["rsa"][0], 14), (files["client"][0], 7)])


def test_a_renewed_certificate_is_a_new_one(config_path: Any, certificate_warnings: list[Any]) -> None:
    """After the RSA file is replaced by one that also expires within 30 days, the reload warns for it again."""
    path, files = config_path
    _, watch = watching(path)
    watch.check()
    renewed = trustme.CA().issue_cert("mx.example.test", key_type=trustme.KeyType.RSA,
                                      not_after=NOW + datetime.timedelta(days=25))
    renewed.cert_chain_pems[0].write_to_path(files["rsa"][0])
    renewed.private_key_pem.write_to_path(files["rsa"][1])
    del certificate_warnings[:]
    watch.load(load(path))
    watch.check()
    assert [(w["path"], w["threshold_days"]) for w in certificate_warnings] == [(files["rsa"][0], 30)]


def test_the_gauge_gives_seconds_until_not_after(config_path: Any) -> None:
    """tlsmta_certificate_expiry_seconds: one sample per certificate, negative once expired."""
    path, files = config_path
    _, watch = watching(path)
    text = generate_latest(Metrics(certificates=watch.samples).registry).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "tlsmta_certificate_expiry_seconds"]
    samples = {(s.labels["role"], s.labels["path"]): s for s in family.samples}
    assert set(samples) == {("listener", files["rsa"][0]), ("listener", files["ecdsa"][0]), ("sni", files["sni"][0]),
                            ("client", files["client"][0])}
    assert samples["listener", files["rsa"][0]].value == pytest.approx(20.5 * DAY, abs=2)
    assert samples["sni", files["sni"][0]].value == pytest.approx(-3.5 * DAY, abs=2)
    client = samples["client", files["client"][0]].labels
    assert client["scope"] == "domain.partner.example" and client["key_type"] == "ecdsa" and "CN=client" in client["subject"]


def test_check_config_warns_and_exits_0(config_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config: ok, exit 0, and a warning on stderr for each certificate within 30 days or expired,
    naming file, table and key; the ECDSA chain with 200 days left is not mentioned."""
    path, files = config_path
    assert main(["check-config", path]) == EX_OK
    out, err = capsys.readouterr()
    assert ": ok (" in out
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith(f"warning: {path}: [listener.\"mx\"] tls_certificate: certificate '{files['rsa'][0]}'")
    assert "expires in 20 day(s)" in lines[0]
    assert "[listener.\"mx\"] tls_sni:" in lines[1] and "expired 3 day(s) ago" in lines[1]
    assert "[domain.\"partner.example\"] tls_certificate:" in lines[2] and "expires in 10 day(s)" in lines[2]
