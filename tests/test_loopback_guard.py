"""The guard that keeps every test on loopback and away from the system resolver can refuse."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from guard import loopback_only


@pytest.fixture
def refusals() -> Iterator[list[str]]:
    """The refusals this test provokes, taken out of the log so the autouse check passes."""
    path = os.environ[loopback_only.LOG_VARIABLE]
    size = os.path.getsize(path)
    provoked: list[str] = []
    yield provoked
    with open(path, "r+") as log:
        log.seek(size)
        provoked.extend(log.read().splitlines())
        log.truncate(size)
    assert provoked, "the test expected the guard to refuse something"


def test_traffic_off_loopback_is_refused(refusals: list[str]) -> None:
    with socket.socket() as s, pytest.raises(OSError) as raised:
        s.connect(("192.0.2.1", 25))
    assert raised.value.errno == errno.ENETUNREACH and "off loopback" in str(raised.value)


def test_dns_port_is_refused_even_on_loopback(refusals: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError, match="DNS query"):
        s.sendto(b"\0" * 12, ("127.0.0.53", 53))


def test_name_lookups_are_refused(refusals: list[str]) -> None:
    with pytest.raises(socket.gaierror, match="system resolver"):
        socket.getaddrinfo("mx.example.test", 25)


def test_loopback_peers_are_allowed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname(), timeout=5):
        server.accept()[0].close()
    assert socket.getaddrinfo("localhost", 25)


def test_child_python_processes_are_guarded(refusals: list[str]) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 25), timeout=5)"],
        capture_output=True, text=True, timeout=30,
    )
    assert child.returncode != 0 and loopback_only.MARKER in child.stderr
