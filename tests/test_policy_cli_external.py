"""`tlsmta policy ... --mx HOST` says what MTA-STS and DANE mean for the MX, from cache and pins."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tlsmta.app import cli
from tlsmta.discovery import _mtasts as mtasts

DANE_EE = "3 1 1 " + "ab" * 32


def write(tmp_path: Path, extra: str = "", domain: str = "") -> str:
    path = tmp_path / "t.toml"
    path.write_text(
        f'[global]\nstate_dir = "{tmp_path / "state"}"\ntls = "ifavailable"\n'
        f'[dns.mx]\n"example.test" = ["mx.example.test"]\n{extra}{domain}'
    )
    return str(path)


def run(capsys: Any, *argv: str) -> str:
    assert cli.main(["policy", *argv]) == 0
    return capsys.readouterr().out


def test_cached_enforce_policy_and_unlisted_mx(tmp_path: Path, capsys: Any) -> None:
    """A cached enforce policy: shown with its id and expiry; an unlisted MX is not used."""
    cache = mtasts.STSCache(str(tmp_path / "state" / "mta-sts"))
    policy = mtasts.parse_policy("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 3600\n", "abc")
    cache.write_blocking("example.test", mtasts.CachedPolicy(policy, time.time()))
    config = write(tmp_path)
    out = run(capsys, config, "example.test", "--mx", "mx.example.test")
    assert "MTA-STS: cached policy id abc, mode enforce, mx mx.example.test (valid until" in out
    assert "For MX mx.example.test, as far as known: mta-sts-enforce: STARTTLS required, certificate must chain to the trust anchors and name mx.example.test, no plain-text fallback." in out
    out = run(capsys, config, "example.test", "--mx", "mx2.example.test")
    assert "mx2.example.test is NOT listed" in out and "this MX is not used (4.7.5 MX host not listed in the MTA-STS policy)" in out


def test_pinned_tlsa_means_dane(tmp_path: Path, capsys: Any) -> None:
    """A pinned usable TLSA record: DANE, in words; without pins nothing is claimed."""
    config = write(tmp_path, f'[dns.tlsa]\n"_25._tcp.mx.example.test" = ["{DANE_EE}"]\n')
    out = run(capsys, config, "example.test", "--mx", "mx.example.test")
    assert "DANE: [dns.tlsa] _25._tcp.mx.example.test (pinned, counts as DNSSEC-secure)" in out
    assert "as far as known: dane: STARTTLS required, the certificate must match a usable TLSA record" in out
    assert "MTA-STS: unknown offline" in out


def test_unknown_offline_and_opt_out(tmp_path: Path, capsys: Any) -> None:
    """An unpinned domain: both unknown offline; opted out: said so."""
    config = write(tmp_path, domain='[domain."other.test"]\nmta_sts = false\ndane = false\n')
    out = run(capsys, config, "unpinned.test", "--mx", "mx.unpinned.test")
    assert "MTA-STS: unknown offline" in out and "DANE: unknown offline (needs a DNSSEC-validated lookup of _25._tcp.mx.unpinned.test)" in out
    out = run(capsys, config, "other.test", "--mx", "mx.other.test")
    assert "MTA-STS: opted out (mta_sts = false)" in out and "DANE: opted out (dane = false)" in out
    assert "local: STARTTLS if offered, certificate not checked, plain-text fallback after a failed handshake." in out


def test_dane_required_is_shown(tmp_path: Path, capsys: Any) -> None:
    """dane = "required": said so; with a pinned usable record DANE applies, without one the MX is not used."""
    config = write(tmp_path, f'[dns.tlsa]\n"_25._tcp.mx.example.test" = ["{DANE_EE}"]\n',
                   domain='[domain."example.test"]\ndane = "required"\n')
    out = run(capsys, config, "example.test", "--mx", "mx.example.test")
    assert "DANE: required (dane = required)" in out
    assert "as far as known: dane: STARTTLS required, the certificate must match a usable TLSA record" in out
    out = run(capsys, config, "example.test", "--mx", "mx2.example.test")
    assert ("as far as known: dane-required: this MX is not used (4.7.5 dane: DANE required (dane = required) "
            "but no DNSSEC-validated TLSA records; MX not used)") in out


def test_tls_pins_are_shown(tmp_path: Path, capsys: Any) -> None:
    """tls_pins for the domain: the pins decide, in words, even where a usable TLSA record is pinned."""
    config = write(tmp_path, f'[dns.tlsa]\n"_25._tcp.mx.example.test" = ["{DANE_EE}"]\n',
                   domain=f'[domain."example.test"]\ntls_pins = ["sha256:{"ab" * 32}"]\n')
    out = run(capsys, config, "example.test", "--mx", "mx.example.test")
    assert f"tls_pins                    = {'ab' * 32} # from domain.\"example.test\"" in out
    assert "the server key's SPKI SHA-256 must be in tls_pins (1 listed), the CA and names are not checked" in out
    assert ("as far as known: pinned: STARTTLS required, the server key must match tls_pins (no CA or name check); "
            "no plain-text fallback.") in out
