"""tlsmta as a real process (twistd), for tests that signal or kill it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START_TIMEOUT = 30


class TlsmtaProcess:
    """``twistd -n tlsmta ARGS`` in ``cwd``, logging to a file; ``ports`` from its log."""

    def __init__(self, cwd: str, *args: str, listeners: int = 1):
        self.log_path = os.path.join(cwd, f"twistd-{time.monotonic_ns()}.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "tlsmta", *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )
        self.ports = self._wait_for_ports(listeners)
        self.port = self.ports[0]

    def _wait_for_ports(self, count: int) -> list[int]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ports = [int(p) for p in re.findall(r"listening on [\d.:\[\]a-f]+?:(\d+) ", self.log())]
            if len(ports) >= count:
                return ports
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("tlsmta did not start:\n" + self.log())

    def wait_for_log(self, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting (bounded) for it to be written."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match is not None:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the log:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> str:
        """SIGTERM and wait; returns the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=START_TIMEOUT)
        return self.log()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=START_TIMEOUT)
