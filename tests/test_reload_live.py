"""SIGHUP applies what it can live (listeners, [metrics], [http]) and says what needs a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import pytest_twisted
from e2e import in_thread
from postfix_lab import free_port
from processes import START_TIMEOUT, TlsmtaProcess

from tlsmta.app._reload_plan import Running, plan
from tlsmta.config import _loader as configuration
from tlsmta.testing import RunningRelay

TLSMTA = [os.path.join(os.path.dirname(sys.executable), "tlsmta")]


def config_text(tmp_path: Any, listeners: dict[str, int], metrics: int | None, spool: str = "spool") -> str:
    text = (
        f'[global]\nhostname = "reload.test"\nstate_dir = "{tmp_path}/state"\nroute = "maildir:{tmp_path}/maildir"\n'
        f'[spool]\npath = "{tmp_path}/{spool}"\n'
    )
    if metrics is not None:
        text += f'[metrics]\nendpoint = "tcp:{metrics}:interface=127.0.0.1"\n'
    for name, port in listeners.items():
        text += f'[[listener]]\nname = "{name}"\nendpoint = "tcp:{port}:interface=127.0.0.1"\ntls = "no"\n'
    return text


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        line = s.makefile("rb").readline()
        s.sendall(b"QUIT\r\n")
    return line


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def metrics_answer(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return bytes(response.read())


def check_against_running(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TLSMTA, "check-config", path, "--against-running"], capture_output=True, text=True,
                          timeout=START_TIMEOUT)


def test_sighup_moves_listeners_and_metrics_and_names_what_needs_a_restart(tmp_path: Any) -> None:
    """Remove a listener, add one, move [metrics], change [spool] path: after SIGHUP the removed
    port refuses, the new one answers 220, metrics answers on its new port only, and the reload
    line and check-config --against-running say "restart required: [spool] path"."""
    stay, gone, added, metrics_before, metrics_after = (free_port() for _ in range(5))
    path = tmp_path / "tlsmta.toml"
    path.write_text(config_text(tmp_path, {"mx": stay, "old": gone}, metrics_before))
    proc = TlsmtaProcess(str(tmp_path), "--config", str(path), listeners=2)
    try:
        assert b"tlsmta_" in metrics_answer(metrics_before)
        path.write_text(config_text(tmp_path, {"mx": stay, "sub": added}, metrics_after, spool="spool2"))
        before = check_against_running(str(path))
        assert before.returncode == 0, before.stdout + before.stderr
        assert f"reload applies: listener 'sub' added on tcp:{added}:interface=127.0.0.1" in before.stdout
        assert f"reload applies: listener 'old' removed from tcp:{gone}:interface=127.0.0.1" in before.stdout
        assert "reload applies: [metrics] endpoint moved" in before.stdout
        assert f"restart required: [spool] path ({tmp_path}/spool -> {tmp_path}/spool2)" in before.stdout

        proc.proc.send_signal(signal.SIGHUP)
        line = proc.wait_for_log(r"reload result=partial[^\n]*").group(0)
        assert "restart required: [spool] path" in line, line
        assert banner(added).startswith(b"220 ") and banner(stay).startswith(b"220 ")
        assert refuses(gone)
        assert b"tlsmta_" in metrics_answer(metrics_after)
        assert refuses(metrics_before)

        after = check_against_running(str(path))
        assert after.stdout.splitlines()[1:] == [f"restart required: [spool] path ({tmp_path}/spool -> {tmp_path}/spool2)"]
    finally:
        proc.stop()


def test_plan_names_each_change() -> None:
    running = Running({"a": ("tcp:25", "starttls"), "b": ("tcp:26", "no")}, "tcp:9125", {}, {"[spool] path": "/s"})
    wanted = Running({"a": ("tcp:25", "implicit"), "c": ("tcp:27", "no")}, None, {}, {"[spool] path": "/t"})
    changes = plan(running, wanted)
    assert (changes.added, changes.removed, changes.changed) == (("c",), ("b",), ("a",))
    assert changes.metrics and not changes.web and changes.restart_required == ("[spool] path",)
    assert plan(running, running) == plan(wanted, wanted) and not any(
        (plan(running, running).added, plan(running, running).changed, plan(running, running).metrics))


@pytest_twisted.ensureDeferred
async def test_a_listener_that_cannot_move_keeps_its_old_port(tmp_path: Any) -> None:
    """Moving a listener onto a port in use: the reload is partial, says why, and the old port still answers;
    moving it to another interface on the same port works (the old socket is released first)."""
    port = free_port()
    path = tmp_path / "tlsmta.toml"
    path.write_text(config_text(tmp_path, {"mx": port}, None))
    events: list[dict[str, Any]] = []
    relay = await RunningRelay(configuration.load(str(path))).start()
    relay.service.events.add_sink(lambda event, fields: events.append(fields) if event == "reload" else None)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        path.write_text(config_text(tmp_path, {"mx": taken.getsockname()[1]}, None))
        assert relay.service.reload() == []
        await relay.service.reloaded()
        assert events[-1]["result"] == "partial"
        assert "Address already in use; kept the running one" in events[-1]["not_applied"]
        assert (await in_thread(banner, port)).startswith(b"220 ")

        path.write_text(config_text(tmp_path, {"mx": port}, None).replace("interface=127.0.0.1", "interface=0.0.0.0"))
        assert relay.service.reload() == []
        await relay.service.reloaded()
        assert events[-1]["result"] == "ok", events[-1]
        assert relay.service.listeners["mx"].listener.endpoint == f"tcp:{port}:interface=0.0.0.0"
        assert (await in_thread(banner, port)).startswith(b"220 ")
        assert f"listener 'mx' moved from tcp:{port}:interface=127.0.0.1 tls=no" in events[-1]["changed"]
    finally:
        taken.close()
        await relay.stop()


def web_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return int(response.status)


@pytest_twisted.ensureDeferred
async def test_the_web_page_moves_with_its_endpoint(tmp_path: Any) -> None:
    before, after = free_port(), free_port()
    path = tmp_path / "tlsmta.toml"
    text = config_text(tmp_path, {"mx": 0}, None)
    path.write_text(text + f'[http]\nendpoint = "tcp:{before}:interface=127.0.0.1"\n')
    relay = await RunningRelay(configuration.load(str(path))).start()
    try:
        assert await in_thread(web_status, before) == 200
        path.write_text(text + f'[http]\nendpoint = "tcp:{after}:interface=127.0.0.1"\n')
        assert relay.service.reload() == []
        await relay.service.reloaded()
        assert await in_thread(web_status, after) == 200
        assert await in_thread(refuses, before)
    finally:
        await relay.stop()
