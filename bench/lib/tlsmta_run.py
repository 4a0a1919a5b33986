"""Run one tlsmta on a prepared spool and time its log events (benchmarks only).

    python3 bench/lib/tlsmta_run.py --config FILE --log FILE --done N [--timeout S]
        [--profile FILE] [--rss] [--first-delivery]

Starts ``twistd -n --pidfile= tlsmta --config FILE`` (stdout+stderr to
--log), follows the log as it is written (polled every 5 ms, read
incrementally) and notes, on a monotonic clock relative to the moment the
process was started: the first tlsmta line, ``queue_loaded``, the first
``delivery`` line, and the N-th ``queue_done`` line (--done N; 0 = do not
wait for deliveries).  It then stops tlsmta with SIGTERM by its PID
(SIGKILL after 20 s) and prints one ``key=value`` line:

    tlsmta_run start_to_log=.. start_to_loaded=.. start_to_first_delivery=..
        start_to_done=.. loaded_to_done=.. queue_done=.. deliveries=..
        verified_yes=.. resumed_yes=.. deferred=.. cpu=.. cpu_reactor=.. [rss_kb_0=.. hwm_kb_0=.. ...]

``--rss`` samples VmRSS (and VmHWM) when ``queue_loaded`` is seen and
again at each of --rss-settle seconds after it (default "0,2"):
``rss_kb_0=.. hwm_kb_0=.. rss_kb_2=..``; the run then waits for the last
sample.  ``--profile FILE``
runs twistd with ``--profiler=cprofile --profile=FILE --savestats``.
Any exit (timeout, error, SIGTERM/SIGINT to this script) stops tlsmta by
its PID first.  Stdlib only.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tlsmta_proc import proc_status  # this directory: the same /proc reading as the other benchmarks

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """user+system CPU of a process (all threads), or of one thread (``thread``)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # a profiled twistd ignores SIGINT; SIGTERM works
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(f"tlsmta {proc.pid} ignored SIGTERM for 20 s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()

    def run(self) -> int:
        a = self.args
        cmd = [str(VENV / "bin" / "twistd"), "-n", "--pidfile="]
        if a.profile:
            cmd += ["--profiler=cprofile", f"--profile={a.profile}", "--savestats"]
        cmd += ["tlsmta", "--config", a.config]
        log = open(a.log, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        pid = self.proc.pid
        marks: dict[str, float] = {}
        counts = {"queue_done": 0, "delivery": 0, "verified_yes": 0, "resumed_yes": 0, "deferred": 0}
        rss: dict[float, dict[str, int]] = {}
        settles = [float(x) for x in a.rss_settle.split(",")] if a.rss else []
        deadline = t0 + a.timeout
        pending = b""
        with open(a.log, "rb") as f:
            while True:
                chunk = f.read()
                now = time.monotonic() - t0
                if chunk:
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        self._scan(line, now, marks, counts)
                if "loaded" in marks:
                    for settle in settles:
                        if settle not in rss and now >= marks["loaded"] + settle:
                            rss[settle] = proc_status(pid)
                if self._finished(marks, counts, len(rss) == len(settles)):
                    break
                if self.proc.poll() is not None:
                    print(f"tlsmta exited early with status {self.proc.returncode}; see {a.log}", file=sys.stderr)
                    return 1
                if time.monotonic() > deadline:
                    print(f"timeout after {a.timeout} s: {counts}; marks {marks}; see {a.log}", file=sys.stderr)
                    self.stop()
                    return 1
                time.sleep(0.005)
        cpu = cpu_seconds(pid)
        cpu_reactor = cpu_seconds(pid, pid)  # the main thread: the reactor
        self.stop()
        out = {
            "start_to_log": marks.get("log"),
            "start_to_loaded": marks.get("loaded"),
            "start_to_first_delivery": marks.get("first_delivery"),
            "start_to_done": marks.get("done"),
            "loaded_to_done": (marks["done"] - marks["loaded"]) if "done" in marks and "loaded" in marks else None,
            "loaded_messages": marks.get("loaded_messages"),
            **counts,
            "cpu": cpu,
            "cpu_reactor": cpu_reactor,
        }
        for settle, sample in rss.items():
            out[f"rss_kb_{settle:g}"] = sample["VmRSS"]
            out[f"hwm_kb_{settle:g}"] = sample["VmHWM"]
        print("tlsmta_run " + " ".join(f"{k}={_fmt(v)}" for k, v in out.items()))
        return 0

    def _finished(self, marks: dict[str, float], counts: dict[str, int], rss_done: bool) -> bool:
        a = self.args
        if not rss_done:
            return False
        if a.first_delivery and "first_delivery" not in marks:
            return False
        if a.done and counts["queue_done"] < a.done:
            return False
        return "loaded" in marks

    def _scan(self, line: bytes, now: float, marks: dict[str, float], counts: dict[str, int]) -> None:
        if b"[tlsmta" in line:
            marks.setdefault("log", now)
        if b"] queue_done " in line:
            counts["queue_done"] += 1
            if counts["queue_done"] == self.args.done:
                marks["done"] = now
        elif b"] delivery " in line:
            counts["delivery"] += 1
            marks.setdefault("first_delivery", now)
            if b" verified=yes " in line:
                counts["verified_yes"] += 1
            if b" resumed=yes" in line:
                counts["resumed_yes"] += 1
            if b" result=delivered " not in line:
                counts["deferred"] += 1
        elif b"] queue_loaded " in line:
            marks["loaded"] = now
            m = re.search(rb"messages=(\d+)", line)
            marks["loaded_messages"] = int(m.group(1)) if m else -1


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--done", type=int, default=0, help="wait for this many queue_done lines")
    ap.add_argument("--first-delivery", action="store_true", help="wait for the first delivery line")
    ap.add_argument("--rss", action="store_true", help="sample VmRSS once the queue is loaded")
    ap.add_argument("--rss-settle", default="0,2", help="seconds after queue_loaded to sample RSS at (comma-separated)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--profile", help="cProfile stats file (twistd --profiler=cprofile --savestats)")
    run = Run(ap.parse_args())

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run.run()
    finally:
        run.stop()


if __name__ == "__main__":
    sys.exit(main())
