"""A configuration tlsmta cannot run is one line naming file, table and key, and exit 78:
at check-config where it can be known then, else at start (twistd), never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from processes import START_TIMEOUT, TWISTD

TLSMTA = os.path.join(os.path.dirname(sys.executable), "tlsmta")


def write(tmp_path: Any, listeners: str, extra: str = "") -> str:
    path = tmp_path / "tlsmta.toml"
    path.write_text(
        f'[global]\nhostname = "start.test"\nstate_dir = "{tmp_path}/state"\nroute = "maildir:{tmp_path}/maildir"\n'
        f'[spool]\npath = "{tmp_path}/spool"\n{extra}\n{listeners}'
    )
    return str(path)


def listener(name: str, endpoint: str) -> str:
    return f'[[listener]]\nname = "{name}"\nendpoint = "{endpoint}"\ntls = "no"\n'


def run(tmp_path: Any, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=str(tmp_path), capture_output=True, text=True, timeout=START_TIMEOUT,
                          env={**os.environ, **(env or {})})


def twistd(tmp_path: Any, path: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(tmp_path, TWISTD, "-n", "--pidfile=", "tlsmta", "--config", path, env=env)


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 78, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


CONFIG_CASES = [
    (listener("mx", "tcp:31x50"), "", "[listener.\"mx\"] endpoint: 'tcp:31x50': the port must be a number"),
    (listener("mx", "tpc:3150"), "", "[listener.\"mx\"] endpoint: 'tpc:3150': unknown endpoint type 'tpc'"),
    (listener("mx", "tcp:0"), '[metrics]\nendpoint = "tcp:notaport"\n',
     "[metrics] endpoint: 'tcp:notaport': the port must be a number from 0 to 65535 (got 'notaport')"),
    (listener("mx", "tcp:2999") + listener("sub", "tcp:2999:interface=127.0.0.1"), "",
     "[listener.\"sub\"] endpoint: 'tcp:2999:interface=127.0.0.1': listener 'mx' listens on port 2999 already"),
    (listener("mx", "tcp:0"), '[dns.hosts]\n"mx.example.test" = ["mx2.example.test"]\n',
     "[dns.hosts] mx.example.test: 'mx2.example.test' is not an IP address"),
    (listener("mx", "systemd:domain=INET"), "", "[listener.\"mx\"] endpoint: 'systemd:domain=INET': systemd: needs exactly one"),
]


@pytest.mark.parametrize(("listeners", "extra", "expected"), CONFIG_CASES)
def test_check_config_and_twistd_refuse_with_one_line(tmp_path: Any, listeners: str, extra: str, expected: str) -> None:
    path = write(tmp_path, listeners, extra)
    assert_one_line(run(tmp_path, TLSMTA, "check-config", path), f"{path}: {expected}")
    started = twistd(tmp_path, path)
    assert started.returncode == 78, started.stdout + started.stderr
    assert f"{path}: {expected}" in started.stderr and "Traceback" not in started.stdout + started.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket (the test's) listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_port_in_use_exits_78_naming_the_listener(tmp_path: Any, taken_port: int) -> None:
    port = taken_port
    path = write(tmp_path, listener("mx", "tcp:0:interface=127.0.0.1") + listener("sub", f"tcp:{port}:interface=127.0.0.1"))
    assert run(tmp_path, TLSMTA, "check-config", path).returncode == 0  # known only when listening
    assert_one_line(twistd(tmp_path, path),
                    f"tlsmta: {path}: [listener.\"sub\"] endpoint: cannot listen on 'tcp:{port}:interface=127.0.0.1': "
                    "Address already in use; not starting")


def test_a_metrics_port_in_use_exits_78_naming_metrics(tmp_path: Any, taken_port: int) -> None:
    port = taken_port
    path = write(tmp_path, listener("mx", "tcp:0:interface=127.0.0.1"), f'[metrics]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n')
    assert_one_line(twistd(tmp_path, path), f"{path}: [metrics] endpoint: cannot listen on 'tcp:{port}:interface=127.0.0.1'")


def test_a_systemd_socket_not_passed_exits_78(tmp_path: Any) -> None:
    path = write(tmp_path, listener("mx", "systemd:domain=INET:name=smtp"))
    assert run(tmp_path, TLSMTA, "check-config", path).returncode == 0  # systemd passes the socket at start
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LISTEN_")}
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "tlsmta", "--config", path], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=START_TIMEOUT, env=environment)
    assert_one_line(result, f"{path}: [listener.\"mx\"] endpoint: cannot listen on 'systemd:domain=INET:name=smtp': "
                            "systemd passed no socket named 'smtp' (LISTEN_FDNAMES=unset)")
