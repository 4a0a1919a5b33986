"""tlsmta's annotations hold: mypy with the zope plugin over the package and the twistd plugin (setup.cfg [mypy])."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

REPO = Path(__file__).resolve().parent.parent


def run_mypy(monkeypatch: pytest.MonkeyPatch, where: Path, cache: Path, *targets: str) -> tuple[str, int]:
    """mypy with setup.cfg's [mypy] configuration, run from ``where`` (it resolves the targets there)."""
    monkeypatch.chdir(where)
    stdout, stderr, status = api.run(["--config-file", str(REPO / "setup.cfg"), "--cache-dir", str(cache), *targets])
    return stdout + stderr, status


def test_the_package_type_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No error anywhere; strict in tlsmta.smtp, tlsmta.tls and tlsmta.config."""
    output, status = run_mypy(monkeypatch, REPO, tmp_path, "tlsmta", "twisted/plugins/tlsmta_plugin.py")
    assert status == 0 and "Success: no issues found" in output, output


def test_a_type_error_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The check reads the real configuration: in a strict module an unannotated function fails it."""
    package = tmp_path / "tlsmta" / "smtp"
    package.mkdir(parents=True)
    (tmp_path / "tlsmta" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("def untyped(x):\n    return x\n\n\ndef wrong() -> int:\n    return 'text'\n")
    output, status = run_mypy(monkeypatch, tmp_path, tmp_path / "cache", "tlsmta")
    assert status == 1, output
    assert "bad.py:1: error: Function is missing a type annotation" in output, output
    assert "bad.py:6: error: Incompatible return value type" in output, output
