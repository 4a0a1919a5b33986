"""The `tlsmta` command's output as an operator reads it (issue 16): into a pipe its reader closes
early (`tlsmta policy ... | head -1`), and `probe` naming a configured MX set as configured, not as
DNSSEC-secure."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

TLSMTA = os.path.join(os.path.dirname(sys.executable), "tlsmta")
EX_SIGPIPE = 141  # what a shell shows for a command killed by SIGPIPE (`yes | head -1`)
DOMAIN = "example.test"
MX = "mx.example.test"


def _config(tmp_path: Any, dead_port: int, extra: str = "") -> str:
    """A probe that asks no DNS server: the MX set and its address pinned, MTA-STS off, the MX down."""
    path = tmp_path / "probe.toml"
    path.write_text(
        f'[global]\nstate_dir = "{tmp_path}/state"\nmta_sts = false\nsmtp_port = {dead_port}\n{extra}'
        f'[dns.mx]\n"{DOMAIN}" = ["{MX}"]\n[dns.hosts]\n"{MX}" = ["127.0.0.1"]\n'
    )
    return str(path)


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """``tlsmta ARGV`` with stdout a pipe whose reader is already gone: the first write meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([TLSMTA, *argv], stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)


def test_policy_into_head_prints_its_first_line_and_no_traceback(tmp_path: Any, dead_port: int) -> None:
    """The operator's pipeline itself: head gets the first line; tlsmta ends quietly, exit 0 when head
    was slower than the (small) output, 141 (as if killed by SIGPIPE) when it was faster."""
    config = _config(tmp_path, dead_port)
    proc = subprocess.run(
        ["bash", "-c", f'"{TLSMTA}" policy "{config}" {DOMAIN} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout == f"# effective outbound options for domain {DOMAIN} via binding default\n"
    assert proc.stderr in ("status=0\n", f"status={EX_SIGPIPE}\n"), proc.stderr


@pytest.mark.parametrize("command", ["policy", "probe"])
def test_a_reader_that_left_is_exit_141_without_a_traceback(tmp_path: Any, dead_port: int, command: str) -> None:
    """Deterministically the fast reader: nothing on stderr (no BrokenPipeError traceback, no
    "Exception ignored" at exit, no crash logged by twisted's react for probe), exit 141."""
    config = _config(tmp_path, dead_port)
    argv = ["policy", config, DOMAIN] if command == "policy" else ["probe", DOMAIN, "--config", config]
    proc = _run_into_closed_pipe(*argv)
    assert (proc.returncode, proc.stderr.decode()) == (EX_SIGPIPE, "")


def test_cluster_status_into_a_closed_pipe_is_exit_141_without_a_traceback(tmp_path: Any, redis: Any) -> None:
    """`tlsmta cluster status` runs under react as probe does, and ends the same way when its reader left."""
    config = tmp_path / "fleet.toml"
    config.write_text(f'[global]\nstate_dir = "{tmp_path}"\n[spool]\npath = "{tmp_path}/spool"\n'
                      f'[cluster]\nredis = "{redis.url}"\n')
    proc = _run_into_closed_pipe("cluster", "status", "--config", str(config))
    assert (proc.returncode, proc.stderr.decode()) == (EX_SIGPIPE, "")


def test_probe_names_a_pinned_mx_set_as_pinned_not_dnssec_secure(tmp_path: Any, dead_port: int) -> None:
    proc = subprocess.run([TLSMTA, "probe", DOMAIN, "--config", _config(tmp_path, dead_port)],
                          capture_output=True, text=True, timeout=60)
    assert f"MX set of {DOMAIN}: pinned in config ([dns.mx]), not looked up in DNS; treated as validated\n" in proc.stdout
    assert "DNSSEC" not in proc.stdout, proc.stdout


def test_probe_names_a_smarthost_route_as_configured(tmp_path: Any, dead_port: int) -> None:
    route = f"smtp:127.0.0.1:{dead_port}"
    config = _config(tmp_path, dead_port, f'[domain."{DOMAIN}"]\nroute = "{route}"\n')
    proc = subprocess.run([TLSMTA, "probe", DOMAIN, "--config", config], capture_output=True, text=True, timeout=60)
    assert f"MX set of {DOMAIN}: pinned in config (route {route}), not looked up in DNS" in proc.stdout
    assert "DNSSEC" not in proc.stdout, proc.stdout
