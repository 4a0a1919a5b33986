"""The systemd units in etc/ (issue 16): a refused configuration is not restarted in a loop, the
sandbox is tighter than @system-service alone, Documentation= names a file the README's install
puts there, and ports 465 and 587 have socket units as 25 has. The README's install steps
themselves run in CI (.ci/check-service, from .ci/run)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
ETC = REPO / "etc"
SOCKETS = {"tlsmta.socket": ("25", "smtp"), "tlsmta-submissions.socket": ("465", "submissions"),
           "tlsmta-submission.socket": ("587", "submission")}
MAX_EXPOSURE = 1.5  # systemd-analyze security: 2.0 with @system-service alone, 1.4 now


def settings(unit: str) -> dict[str, list[str]]:
    """``Key=value`` lines of one unit file, by key (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in (ETC / unit).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def installed_copies(tmp_path: Any) -> list[str]:
    """The units with ExecStart pointing at this install instead of /opt/tlsmta."""
    bin_dir = os.path.dirname(sys.executable)
    paths = []
    for name in ["tlsmta.service", *SOCKETS]:
        path = tmp_path / name
        path.write_text((ETC / name).read_text().replace("/opt/tlsmta/bin", bin_dir))
        paths.append(str(path))
    return paths


def test_a_refused_configuration_is_not_restarted() -> None:
    """twistd exits 78 for a bad configuration; the unit must not restart it every RestartSec. Only the
    main process's status counts for RestartPreventExitStatus=, so no ExecStartPre check either."""
    service = settings("tlsmta.service")
    assert service["RestartPreventExitStatus"] == ["78"] and service["Restart"] == ["on-failure"]
    assert "ExecStartPre" not in service


def test_the_sandbox_adds_the_settings_that_do_not_break_tlsmta() -> None:
    service = settings("tlsmta.service")
    for key, value in {"ProtectProc": "invisible", "ProcSubset": "pid", "PrivateMounts": "yes", "RemoveIPC": "yes"}.items():
        assert service[key] == [value], key
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_systemd_analyze_security_scores_the_service_lower(tmp_path: Any) -> None:
    service = installed_copies(tmp_path)[0]
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", service],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for tlsmta.service: (\d+\.\d+)", proc.stdout)
    assert match is not None, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_every_unit_verifies_and_the_sockets_name_their_ports(tmp_path: Any) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *installed_copies(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, (port, fdname) in SOCKETS.items():
        socket = settings(name)
        assert (socket["ListenStream"], socket["FileDescriptorName"]) == ([port], [fdname]), name
        # systemd hands every socket of the service to it; the listener finds its own by name
        assert socket.get("Service", ["tlsmta.service"]) == ["tlsmta.service"], name


def test_documentation_names_files_the_readme_install_puts_there() -> None:
    readme = (REPO / "README.md").read_text()
    steps = readme.split("### Install as a service", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    installed = set(re.findall(r"^install -D -m \d+ \S+ (\S+)", steps, re.MULTILINE))
    for name in ["tlsmta.service", *SOCKETS]:
        docs = settings(name)["Documentation"]
        assert docs and all(d.startswith("file://") and d[len("file://"):] in installed for d in docs), (name, docs)
    # the units the README copies are all there are
    copied = re.search(r"^cp (etc/tlsmta\.\S+(?: etc/\S+)*) /etc/systemd/system/$", steps, re.MULTILINE)
    assert copied is not None
    assert sorted(p.removeprefix("etc/") for p in copied.group(1).split()) == sorted(["tlsmta.service", *SOCKETS])


def test_ci_runs_the_readme_install_steps() -> None:
    """.ci/run ends with .ci/check-service, which reads its steps from the README (never a copy)."""
    assert "bash .ci/check-service" in (REPO / ".ci" / "run").read_text()
    check = (REPO / ".ci" / "check-service").read_text()
    assert "README.md" in check and "### Install as a service" in check
