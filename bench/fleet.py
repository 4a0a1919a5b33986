#!/usr/bin/env python3
"""Fleet throughput on one Redis: 1, 2 and 3 tlsmta nodes delivering to one sink (docs/scaling.md).

    .venv/bin/python bench/fleet.py [--messages 3000] [--nodes 1,2,3] [--cap 30] [--size 2048]

For each fleet size N: a private ``redis-server`` (UNIX socket only, no
persistence) and Postfix's ``smtp-sink`` on a free 127.0.0.1 port; N
spools filled offline with MESSAGES/N messages each (bench/lib/spool_fill.py,
route ``smtp:127.0.0.1:SINK``), then N twistd nodes started at once, each
timed by bench/lib/tlsmta_run.py from ``queue_loaded`` to its last
``queue_done``.  Every node has ``[cluster]`` with its own node_id,
``cluster_max_connections = --cap`` for the sink (the fleet shares it) and
``max_messages_per_connection = --per-conn``.  Printed per N: the
slowest node's loaded-to-done time, fleet messages/s, and the Redis
commands per message (``INFO commandstats`` after minus before, heartbeats
included).  Everything is stopped by its PID; the temp dir is removed.
"""

from __future__ import annotations

import argparse
import os
import re
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
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for a helper to start")
        time.sleep(0.05)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def redis_calls(sock: str) -> int:
    """All commands Redis has run (EVAL counted once, its redis.call()s too)."""
    out = subprocess.run(["redis-cli", "-s", sock, "INFO", "commandstats"], capture_output=True, text=True, check=True).stdout
    return sum(int(m) for m in re.findall(r"calls=(\d+)", out))


def node_config(dir: Path, name: str, sock: str, sink_port: int, cap: int, per_conn: int) -> str:
    return f"""[global]
hostname = "{name}.bench"
state_dir = "{dir}/state"
route = "smtp:127.0.0.1:{sink_port}"
max_connections = {cap}
max_messages_per_connection = {per_conn}
cluster_max_connections = {cap}

[queue]
retry_schedule = [60]

[spool]
path = "{dir}/spool"

[[listener]]
endpoint = "tcp:{free_port()}:interface=127.0.0.1"
tls = "no"

[cluster]
redis = "unix:{sock}"
node_id = "{name}"
heartbeat = "1s"
"""


def run_fleet(top: Path, nodes: int, messages: int, cap: int, per_conn: int, size: int) -> tuple[float, float, float]:
    sock = str(top / "redis.sock")
    redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no",
                              "--dir", str(top)], stdout=subprocess.DEVNULL)
    sink_port = free_port()
    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{sink_port}", "256"], stdout=subprocess.DEVNULL)
    runs: list[subprocess.Popen[str]] = []
    try:
        wait_for(lambda: os.path.exists(sock))
        wait_for(lambda: accepts(sink_port))
        share = messages // nodes
        for i in range(1, nodes + 1):
            d = top / f"node{i}"
            (d / "state").mkdir(parents=True)
            subprocess.run([str(VENV / "bin/python"), str(HERE / "lib/spool_fill.py"), str(d / "spool"), "-n", str(share),
                            "--size", str(size), "--rcpt", "user@sink.bench", "--route", f"smtp:127.0.0.1:{sink_port}"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            (d / "bench.toml").write_text(node_config(d, f"node{i}", sock, sink_port, cap, per_conn))
        before = redis_calls(sock)
        for i in range(1, nodes + 1):
            d = top / f"node{i}"
            runs.append(subprocess.Popen([sys.executable, str(HERE / "lib/tlsmta_run.py"), "--config", str(d / "bench.toml"),
                                          "--log", str(d / "tlsmta.log"), "--done", str(share), "--timeout", "600"],
                                         stdout=subprocess.PIPE, text=True))
        slowest = 0.0
        for run in runs:
            out, _ = run.communicate(timeout=700)
            if run.returncode != 0:
                raise SystemExit(f"a node failed: {out}")
            slowest = max(slowest, float(re.search(r"loaded_to_done=([\d.]+)", out).group(1)))
        ops = redis_calls(sock) - before
        return slowest, share * nodes / slowest, ops / (share * nodes)
    finally:
        for proc in [*runs, sink, redis]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--cap", type=int, default=30, help="cluster_max_connections to the sink (fleet-wide)")
    parser.add_argument("--per-conn", type=int, default=100, help="max_messages_per_connection")
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.messages} messages of {args.size} bytes, "
          f"cap {args.cap}, {args.per_conn} per connection")
    print("nodes  seconds  messages/s  redis_ops/message")
    for nodes in (int(n) for n in args.nodes.split(",")):
        top = Path(tempfile.mkdtemp(prefix=f"tlsmta-fleet-{nodes}-"))
        try:
            seconds, rate, ops = run_fleet(top, nodes, args.messages, args.cap, args.per_conn, args.size)
        finally:
            shutil.rmtree(top, ignore_errors=True)
        print(f"{nodes:>5}  {seconds:>7.2f}  {rate:>10.0f}  {ops:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
