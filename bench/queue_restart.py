#!/usr/bin/env python3
"""Restart with a big queue: 100,000 queued 4 KB messages, destination down.

    python3 bench/queue_restart.py [-n 100000] [--size 4096] [--runs 2] [--cold]

Writes N queued messages into a spool offline (bench/lib/spool_fill.py:
the spool's own record format, one sync() at the end), then starts tlsmta
on it, --runs times (before each run every record is made due now again
with ``spool_fill.py --reset``, since a run leaves them deferred).  The
only route is MX ``mx.sink.bench`` -> 127.0.0.1 on a port nothing listens
on, so every attempt is an immediate "connection refused" and the
messages stay queued.  Measured per run, on a monotonic clock from the
moment the process was started (bench/lib/tlsmta_run.py follows the log):

- the first tlsmta log line (interpreter + twistd + plugin start-up),
- the first ``delivery`` log line (target: < 15 s),
- ``queue_loaded messages=N`` (every record read and scheduled),
- VmRSS when ``queue_loaded`` is seen and 2 s later, VmHWM, and RSS per
  queued message: (RSS - RSS of the same tlsmta on an empty spool) / N.

A baseline run on an empty spool gives that empty-queue RSS.  A last
run ("load only") starts on the same records made due in an hour: no
delivery work competes with loading, so it shows the bare load time and
the memory of N scheduled messages with nothing in flight.  With every
message due at once (the runs before it), the first batches are being
tried (and deferred: log line, metadata rewrite) while later batches are
still being read, so ``queue_loaded`` comes later there.  After the
last sample tlsmta is stopped with SIGTERM by its PID (SIGKILL after 20 s).
``--cold`` drops the page cache (``echo 3 > /proc/sys/vm/drop_caches``,
root; affects the whole machine's cache, nothing else) before each run,
as after a reboot; the default is a warm cache (the spool was just
written or read).  ``--profile DIR`` runs tlsmta under cProfile.
``--keep`` keeps the temp dir.  Stdlib only; tlsmta runs from the venv
(VENV=..., default <repo>/.venv).  Loopback only, bounded (--timeout per
run), temp dir removed at the end (about 0.9 GB for 100,000 messages).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port that refuses connections (nothing listens; checked)."""
    for _ in range(20):
        port = free_port()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no closed port found")


def config_text(tmp: Path, spool: Path, port: int) -> str:
    return f"""[global]
hostname = "sender.bench"
state_dir = "{tmp / 'state'}"
route = "mx"
tls = "required"
tls_verify = "host"
smtp_port = {port}
max_connections = 20
max_messages_per_connection = 100

[queue]
max_connections = 200
retry_schedule = [600]

[spool]
path = "{spool}"

[dns.mx]
"sink.bench" = ["mx.sink.bench"]

[dns.hosts]
"mx.sink.bench" = ["127.0.0.1"]

[[listener]]
endpoint = "tcp:{free_port()}:interface=127.0.0.1"
tls = "no"
"""


def kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


class Runner:
    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None

    def run(self, argv: list[str], timeout: float) -> str:
        self.child = subprocess.Popen(argv, stdout=subprocess.PIPE)
        try:
            out, _ = self.child.communicate(timeout=timeout + 60)
        finally:
            self.stop()
        if self.child is not None and self.child.returncode:
            raise RuntimeError(f"{argv[1]} failed ({self.child.returncode})")
        return out.decode()

    def stop(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # tlsmta_run.py stops its tlsmta by PID
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    ap.add_argument("--profile", help="directory for cProfile stats files")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    runner = Runner()

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="tlsmta-bench-restart-"))
    python = str(VENV / "bin" / "python")
    try:
        (tmp / "state").mkdir()
        port = closed_port()
        cpus = os.cpu_count()
        fs = subprocess.run(["df", "-PT", str(tmp)], capture_output=True, text=True).stdout.splitlines()[-1].split()
        print(f"tlsmta-bench queue restart: {args.messages} queued messages x {args.size} bytes, destination"
              f" 127.0.0.1:{port} refusing connections; {cpus} CPUs, {fs[1]} on {fs[0]},"
              f" {'cold' if args.cold else 'warm'} page cache")

        def tlsmta(spool: Path, name: str, extra: list[str]) -> dict[str, str]:
            cfg = tmp / f"{name}.toml"
            cfg.write_text(config_text(tmp, spool, port))
            argv = [python, str(HERE / "lib" / "tlsmta_run.py"), "--config", str(cfg),
                    "--log", str(tmp / f"{name}.log"), "--timeout", str(args.timeout), "--rss", *extra]
            if args.profile:
                os.makedirs(args.profile, exist_ok=True)
                argv += ["--profile", os.path.join(args.profile, f"queue-restart-{name}.cprofile")]
            line = runner.run(argv, args.timeout).strip().splitlines()[-1]
            return kv(line)

        # baseline: the same tlsmta on an empty spool
        base = tlsmta(tmp / "empty-spool", "baseline", [])
        base_rss = int(base["rss_kb_2"])
        print(f"baseline (empty spool): queue_loaded at {float(base['start_to_loaded']):.2f} s,"
              f" RSS {base_rss / 1024:.1f} MiB")

        spool = tmp / "spool"
        t0 = time.monotonic()
        subprocess.run([python, str(HERE / "lib" / "spool_fill.py"), str(spool), "-n", str(args.messages),
                        "--size", str(args.size)], check=True)
        print(f"spool written in {time.monotonic() - t0:.1f} s")

        for run in range(1, args.runs + 1):
            if run > 1:
                subprocess.run([python, str(HERE / "lib" / "spool_fill.py"), str(spool), "--reset"], check=True)
            if args.cold:
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            r = tlsmta(spool, f"run{run}", ["--first-delivery"])
            loaded = int(r["loaded_messages"])
            rss0, rss2, hwm2 = int(r["rss_kb_0"]), int(r["rss_kb_2"]), int(r["hwm_kb_2"])
            per_msg = (rss2 - base_rss) * 1024 / max(loaded, 1)
            print(f"run {run}: first log line {float(r['start_to_log']):.2f} s, first delivery attempt"
                  f" {float(r['start_to_first_delivery']):.2f} s, queue_loaded ({loaded} messages)"
                  f" {float(r['start_to_loaded']):.2f} s after process start;"
                  f" RSS at queue_loaded {rss0 / 1024:.1f} MiB, 2 s later {rss2 / 1024:.1f} MiB"
                  f" (peak {hwm2 / 1024:.1f} MiB); {per_msg:.0f} bytes per queued message over the empty-spool"
                  f" baseline; {r['delivery']} delivery attempts logged by then; tlsmta CPU {float(r['cpu']):.1f} s")
            first = float(r["start_to_first_delivery"])
            print(f"  first delivery attempt < 15 s: {'yes' if first < 15 else 'NO'} ({first:.2f} s)")
            # one machine-readable line per run (bench/compare.sh reads these)
            print(f"RESULT restart run={run} messages={args.messages} loaded={loaded} first_log={float(r['start_to_log']):.3f}"
                  f" first_delivery={first:.3f} loaded_at={float(r['start_to_loaded']):.3f} rss_loaded_kb={rss0}"
                  f" rss_2s_kb={rss2} hwm_kb={hwm2} baseline_kb={base_rss}")
            if loaded != args.messages:
                print(f"  MISMATCH: queue_loaded says {loaded}, expected {args.messages}")
                return 1
        # load only: nothing due for an hour
        subprocess.run([python, str(HERE / "lib" / "spool_fill.py"), str(spool), "--reset", "--due-in", "3600"], check=True)
        if args.cold:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        r = tlsmta(spool, "load-only", [])
        loaded = int(r["loaded_messages"])
        rss0, rss2, hwm2 = int(r["rss_kb_0"]), int(r["rss_kb_2"]), int(r["hwm_kb_2"])
        print(f"load only (nothing due): queue_loaded ({loaded} messages) {float(r['start_to_loaded']):.2f} s after"
              f" process start ({float(r['start_to_loaded']) - float(r['start_to_log']):.2f} s after its first log line);"
              f" RSS at queue_loaded {rss0 / 1024:.1f} MiB, 2 s later {rss2 / 1024:.1f} MiB (peak {hwm2 / 1024:.1f} MiB);"
              f" {(rss2 - base_rss) * 1024 / max(loaded, 1):.0f} bytes per queued message over the baseline;"
              f" {r['delivery']} delivery attempts; tlsmta CPU {float(r['cpu']):.1f} s")
        print(f"RESULT restart run=load-only messages={args.messages} loaded={loaded} loaded_at={float(r['start_to_loaded']):.3f}"
              f" rss_loaded_kb={rss0} rss_2s_kb={rss2} hwm_kb={hwm2} baseline_kb={base_rss}")
        return 0
    finally:
        runner.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
