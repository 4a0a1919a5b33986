"""Start a throw-away tlsmta for a benchmark, and read a process's memory.

Used by bench/idle_connections.py and bench/big_message.py (stdlib only,
so the scripts run with any python3; tlsmta itself runs from the venv).

    with TlsmtaProcess(listener_extra={"max_message_size": 104857600}) as mta:
        mta.port, mta.pid, mta.maildir, mta.log_path

The process runs `twistd -n --pidfile= tlsmta --config FILE` in a temp dir
on a free 127.0.0.1 port, under a `bash -c 'ulimit -Sn ...; exec ...'`
wrapper so its open-files limit is raised; leaving the block (or any
exception, or SIGTERM/SIGINT) stops it by its PID and removes the temp dir.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
NOFILE_WANTED = 65536

# Raise the soft limit as far as the hard one allows (root without
# CAP_SYS_RESOURCE, e.g. in a container, cannot raise the hard limit).
RAISE_NOFILE = (
    'h=$(ulimit -Hn); if [ "$h" = unlimited ] || [ "$h" -gt %d ]; then h=%d; fi; ulimit -Sn "$h"; exec "$@"'
    % (NOFILE_WANTED, NOFILE_WANTED)
)


def raise_own_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted``; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...), as ints in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
            elif key in ("Threads", "FDSize"):
                out[key] = int(parts[0])
    return out


def rss_kb(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``; Linux, root)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class TlsmtaProcess:
    """A tlsmta on 127.0.0.1:<free port> in a temp dir, stopped and removed on exit."""

    def __init__(
        self,
        listener_extra: dict[str, object] | None = None,
        keep: bool = False,
        start_timeout: float = 30,
        endpoint_options: str = "",
    ):
        self.listener_extra = listener_extra or {}
        self.endpoint_options = endpoint_options  # e.g. "backlog=1024", appended to the endpoint string
        self.keep = keep or os.environ.get("KEEP") == "1"
        self.start_timeout = start_timeout
        self.tmp: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._old_handlers: dict[int, object] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def maildir(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "maildir"

    @property
    def log_path(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "tlsmta.log"

    def config_text(self) -> str:
        assert self.tmp is not None
        listener = {
            "name": "bench",
            "endpoint": f"tcp:{self.port}:interface=127.0.0.1" + (f":{self.endpoint_options}" if self.endpoint_options else ""),
            "tls": "starttls",
            "tls_certificate": "auto",
            "relay_networks": ["127.0.0.0/8"],
            "max_connections": 20000,
            **self.listener_extra,
        }
        lines = [
            "[global]",
            'hostname = "bench.local"',
            f"state_dir = {_toml_value(str(self.tmp / 'state'))}",
            f"route = {_toml_value('maildir:' + str(self.maildir))}",
            "",
            "[[listener]]",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in listener.items()]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> TlsmtaProcess:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @staticmethod
    def _on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through __exit__

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tlsmta-bench-"))
        (self.tmp / "state").mkdir()
        self.port = free_port()
        config = self.tmp / "bench.toml"
        config.write_text(self.config_text())
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                ["bash", "-c", RAISE_NOFILE, "_", str(VENV / "bin" / "twistd"), "-n", "--pidfile=", "tlsmta", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if "listening on" in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"tlsmta did not start; its log:\n{self.log_path.read_text(errors='replace')}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.tmp else ""

    def suspicious_log_lines(self) -> list[str]:
        words = ("traceback", "unhandled", "error", "#critical", "#warn", "#error")
        return [line for line in self.log_text().splitlines() if any(w in line.lower() for w in words)]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"tlsmta {proc.pid} ignored SIGTERM for 15 s; killing it")
                proc.kill()
                proc.wait()
        if self.tmp is not None and self.tmp.exists():
            if self.keep:
                print(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
