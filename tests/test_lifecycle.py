"""A real tlsmta process: SIGHUP certificate rotation, SIGTERM shutdown, JSON logs, systemd."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from e2e import client_context, send_smtplib
from postfix_lab import free_port
from processes import START_TIMEOUT, TWISTD, TlsmtaProcess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_config(tmp_path: Any, listener_extra: str = "", global_extra: str = "", route: str | None = None) -> str:
    path = tmp_path / "tlsmta.toml"
    path.write_text(
        f"""
[global]
hostname = "mx.example.test"
state_dir = "{tmp_path}/state"
route = "{route or f'maildir:{tmp_path}/maildir'}"
{global_extra}
[spool]
path = "{tmp_path}/spool"
[queue]
retry_schedule = [3600]
[control]
shutdown_grace = 20
[[listener]]
name = "mx"
endpoint = "tcp:0:interface=127.0.0.1"
relay_networks = ["127.0.0.0/8"]
{listener_extra}
"""
    )
    return str(path)


def served_certificate(port: int) -> str:
    """The leaf certificate openssl s_client -starttls smtp is shown, as PEM."""
    proc = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-servername", "mx.example.test"],
        input=b"QUIT\r\n", capture_output=True, timeout=30,
    )
    out = proc.stdout.decode("utf-8", "replace")
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert match, out + proc.stderr.decode()
    return match.group(0)


def first_pem(path: str) -> str:
    with open(path) as f:
        text = f.read()
    return re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S).group(0)


class Prober:
    """Connects again and again while something happens; counts sessions that did not get a 220."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    banner = s.makefile("rb").readline()
                    s.sendall(b"QUIT\r\n")
                if banner.startswith(b"220"):
                    self.ok += 1
                else:
                    self.failed.append(repr(banner))
            except OSError as e:
                self.failed.append(repr(e))

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_sighup_rotates_certificate_without_refusing_connections(tmp_path: Any, pki: Any) -> None:
    """Replace the certificate files, SIGHUP: openssl s_client sees the new one; no connection fails meanwhile;
    a broken config on the next SIGHUP is refused and the service keeps running."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.good.cert, cert)
    shutil.copy(pki.good.key, key)
    config = write_config(tmp_path, f'tls = "starttls"\ntls_certificate = "{cert}"\ntls_key = "{key}"')
    proc = TlsmtaProcess(str(tmp_path), "--config", config)
    try:
        assert served_certificate(proc.port) == first_pem(pki.good.cert)
        with Prober(proc.port) as prober:
            shutil.copy(pki.wrong_name.cert, cert)
            shutil.copy(pki.wrong_name.key, key)
            proc.proc.send_signal(signal.SIGHUP)
            proc.wait_for_log(r"reload result=ok")
            time.sleep(0.3)  # keep probing a moment after the reload (not a synchronisation)
        assert served_certificate(proc.port) == first_pem(pki.wrong_name.cert)
        assert prober.failed == [] and prober.ok > 0

        with open(config, "a") as f:
            f.write('\n[domain."x.test"]\ntls_verify = "maybe"\n')
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"reload result=refused")
        assert "reload refused, keeping the running configuration" in proc.log()
        assert served_certificate(proc.port) == first_pem(pki.wrong_name.cert)
        send_smtplib(proc.port, starttls=client_context(None))
    finally:
        proc.stop()


def test_sigterm_lets_sessions_finish_and_exits_0(tmp_path: Any, dead_port: int) -> None:
    """SIGTERM: new connections are refused, a session in the middle of DATA finishes and gets 250,
    the process exits 0 and what was queued stays in the spool."""
    config = write_config(tmp_path, 'tls = "no"', route=f"smtp:127.0.0.1:{dead_port}")
    proc = TlsmtaProcess(str(tmp_path), "--config", config)
    session = smtplib.SMTP("127.0.0.1", proc.port, timeout=30)
    session.ehlo("client.test")
    session.mail("a@client.test")
    session.rcpt("b@example.test")
    code, _ = session.docmd("DATA")
    assert code == 354
    session.send(b"Subject: in flight\r\n\r\nstarted before SIGTERM\r\n")
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            socket.create_connection(("127.0.0.1", proc.port), timeout=2).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    assert refused, "still accepting connections after SIGTERM"
    session.send(b".\r\n")
    code, text = session.getreply()
    assert code == 250, text
    session.quit()
    assert proc.proc.wait(timeout=START_TIMEOUT) == 0, proc.log()
    queued = [n for n in os.listdir(tmp_path / "spool" / "q") if n.endswith(".msg")]
    assert len(queued) == 1


def test_json_log_format(tmp_path: Any) -> None:
    """--log-format json writes one JSON object per line; a received event keeps its fields."""
    config = write_config(tmp_path, 'tls = "no"')
    proc = TlsmtaProcess(str(tmp_path), "--config", config, "--log-format", "json")
    try:
        send_smtplib(proc.port)
        proc.wait_for_log(r'"event": "received"')
    finally:
        log = proc.stop()
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    [received] = [r for r in records if r.get("event") == "received"]
    assert received["code"] == 250 and received["tls"] == "none" and received["sender"] == "app@client.test"
    assert any("listening on" in r.get("text", "") for r in records)


def _units(tmp_path: Any) -> list[str]:
    bin_dir = os.path.dirname(sys.executable)
    paths = []
    for name in ("tlsmta.service", "tlsmta.socket"):
        with open(os.path.join(REPO, "etc", name)) as f:
            text = f.read().replace("/opt/tlsmta/bin", bin_dir)
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    return paths


def test_systemd_units_verify(tmp_path: Any) -> None:
    """systemd-analyze verify accepts etc/tlsmta.service and etc/tlsmta.socket (binaries pointed at this install)."""
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *_units(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    service = pathlib.Path(REPO, "etc", "tlsmta.service").read_text()
    for hardening in ("ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "CAP_NET_BIND_SERVICE",
                      "StateDirectory=tlsmta", "ExecReload=/bin/kill -HUP $MAINPID", "User=tlsmta"):
        assert hardening in service


def test_socket_activation(tmp_path: Any) -> None:
    """Under systemd-socket-activate a systemd: listener takes the inherited socket and serves mail."""
    port = free_port()
    config = write_config(tmp_path, 'tls = "no"')
    path = pathlib.Path(config)
    path.write_text(path.read_text().replace('endpoint = "tcp:0:interface=127.0.0.1"', 'endpoint = "systemd:domain=INET:index=0"'))
    log = open(tmp_path / "activate.log", "w")
    proc = subprocess.Popen(
        # --fdname: Twisted only takes inherited sockets that come with LISTEN_FDNAMES (systemd always sets it).
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=smtp", TWISTD, "-n", "--pidfile=", "tlsmta", "--config", config],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Listening on" not in (tmp_path / "activate.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        send_smtplib(port)  # the first connection starts tlsmta on the passed socket
        from e2e import maildir_messages

        assert len(maildir_messages(str(tmp_path / "maildir"))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=START_TIMEOUT)
        log.close()
    assert "listening on" in (tmp_path / "activate.log").read_text()



def test_processes_share_a_port_with_reuseport_and_one_drains(tmp_path: Any) -> None:
    """Scaling out (docs/architecture.md): several processes on one port (endpoint reuseport:), each with its own
    state dir and spool.  The kernel spreads connections over both; after one stops (drains),
    the other takes every new connection and nothing is lost."""
    holder = socket.socket()  # reserves the port: bound with SO_REUSEPORT, never listening
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    procs = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            config = pathlib.Path(write_config(tmp_path / name, 'tls = "no"', route=f"maildir:{tmp_path}/maildir"))
            config.write_text(config.read_text().replace("tcp:0:interface=127.0.0.1", f"reuseport:{port}:interface=127.0.0.1"))
            procs.append(TlsmtaProcess(str(tmp_path / name), "--config", str(config)))
        for _ in range(60):
            send_smtplib(port)
        both_running = [p.log().count(" code=250 ") for p in procs]
        procs[0].stop()
        for _ in range(10):
            send_smtplib(port)
        after_drain = procs[1].log().count(" code=250 ")
    finally:
        for p in procs:
            p.stop()
        holder.close()
    from e2e import maildir_messages

    messages = maildir_messages(str(tmp_path / "maildir"))
    assert len(messages) == 70
    ids = [m["Received"].split(" id ")[1].split()[0] for m in messages]
    assert len(set(ids)) == 70  # ids stay unique across processes
    assert all(n > 0 for n in both_running) and sum(both_running) == 60, both_running
    assert after_drain == both_running[1] + 10
