"""kill -9 under load loses nothing that was answered 250.

A real tlsmta process takes mail from several concurrent clients for a
smarthost that is down (so everything stays in the spool), and is killed
with SIGKILL in the middle.  A new process on the same spool, with the
smarthost now up, must deliver every message a client saw 250 for.
Duplicates are allowed; losses are not.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from e2e import eventually, in_thread, maildir_messages
from processes import TlsmtaProcess

from tlsmta.testing import RunningRelay, build_config, dev_listener

CLIENTS = 6
LOAD_SECONDS = 1.5  # how long the clients run before the kill (bounded load)


def config_text(tmp_path: Any, smarthost_port: int, commit: str = "fsync") -> str:
    return f"""
[global]
hostname = "crash.test"
state_dir = "{tmp_path}/state"
route = "smtp:127.0.0.1:{smarthost_port}"
[spool]
path = "{tmp_path}/spool"
commit = "{commit}"
[queue]
retry_schedule = [1]
[[listener]]
endpoint = "tcp:0:interface=127.0.0.1"
tls = "no"
relay_networks = ["127.0.0.0/8"]
"""


class Load:
    """Clients sending numbered messages until told to stop; records every 250."""

    def __init__(self, port: int):
        self.port = port
        self.acked: set[int] = set()
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def client(self, first: int) -> None:
        seq = first
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                    while not self.stop.is_set():
                        body = f"Subject: crash test\r\nX-Seq: {seq}\r\n\r\nmessage {seq}\r\n"
                        smtp.sendmail("load@client.test", ["r@example.test"], body)
                        with self.lock:
                            self.acked.add(seq)  # smtplib returned: the server said 250
                        seq += CLIENTS
            except (OSError, smtplib.SMTPException):
                return  # the server died: stop this client

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)


@pytest.mark.parametrize("commit", ["fsync", "syncfs"])
@pytest_twisted.ensureDeferred
async def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Any, reserved_port: int, commit: str) -> None:
    smarthost_port = reserved_port  # refuses connections (down) until the receiver listens on it
    config = tmp_path / "tlsmta.toml"
    config.write_text(config_text(tmp_path, smarthost_port, commit))
    first = await in_thread(TlsmtaProcess, str(tmp_path), "--config", str(config))
    load = Load(first.port)
    runner = in_thread(load.run)
    await eventually(lambda: len(load.acked) >= 20, timeout=30)  # under load for real
    await in_thread(time.sleep, LOAD_SECONDS)  # not a sync point: how long the load runs before the kill
    first.kill9()
    load.stop.set()
    await runner
    acked = set(load.acked)
    assert len(acked) >= 20

    receiver_raw = {
        "global": {"hostname": "smarthost.test", "state_dir": str(tmp_path / "rstate"), "route": f"maildir:{tmp_path / 'received'}"},
        "spool": {"path": str(tmp_path / "rspool")},
        "listener": [dev_listener(endpoint=f"reuseport:{smarthost_port}:interface=127.0.0.1")],
    }
    receiver = await RunningRelay(build_config(receiver_raw)).start()
    second = await in_thread(TlsmtaProcess, str(tmp_path), "--config", str(config))
    try:
        def delivered() -> set[int]:
            return {int(m["X-Seq"]) for m in maildir_messages(str(tmp_path / "received"))}

        await eventually(lambda: acked <= delivered(), timeout=90)
    finally:
        log = await in_thread(second.stop)
        await receiver.stop()
    missing = acked - delivered()
    assert missing == set(), f"lost {len(missing)} acknowledged messages: {sorted(missing)[:20]}"
    assert re.search(r"queue_loaded messages=\d+", log)
