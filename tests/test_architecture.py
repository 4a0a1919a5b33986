"""The arrows between tlsmta's parts (docs/architecture.md) hold: import-linter's contracts in setup.cfg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--config", str(config), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_every_contract_is_kept() -> None:
    """Layers, no cycles between parts, inbound without delivery, config as data, pure protocol code,
    storage without SMTP parsing."""
    result = lint_imports(REPO / "setup.cfg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_broken_arrow_is_reported(tmp_path: Path) -> None:
    """The check reads tlsmta's real imports: a contract the code breaks (app uses config) fails it."""
    config = tmp_path / "contracts.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    tlsmta\n\n"
        "[importlinter:contract:false]\nname = app without config\ntype = forbidden\n"
        "source_modules =\n    tlsmta.app\nforbidden_modules =\n    tlsmta.config\n"
    )
    result = lint_imports(config)
    assert result.returncode != 0 and "tlsmta.app" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_every_part_is_packaged() -> None:
    """setup.cfg lists packages by name: a part missing there is absent from a real install (the
    service's /opt/tlsmta), though the editable checkout finds it. tlsmta.cluster was missed once."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    parts = {f"tlsmta.{d.name}" for d in (REPO / "tlsmta").iterdir() if (d / "__init__.py").exists()}
    assert parts - listed == set()
