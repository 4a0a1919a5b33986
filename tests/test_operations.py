"""Operating tlsmta: the queue commands, metrics, JSON logs, probe (in-process, real sockets)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, maildir_messages, partial_request, send_smtplib
from outbound_lab import DOMAIN, start_receiver

from tlsmta.app.cli import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, main
from tlsmta.testing import RunningRelay, build_config, dev_listener


def relay_raw(tmp_path: Any, dead_port: int, **extra: Any) -> dict[str, Any]:
    """A relay whose smarthost is down, so what it accepts stays queued; DSNs to client.test go to a Maildir."""
    return {
        "global": {"hostname": "ops.test", "state_dir": str(tmp_path / "state"), "route": f"smtp:127.0.0.1:{dead_port}"},
        "domain": {"client.test": {"route": f"maildir:{tmp_path / 'bounces'}"}},
        "spool": {"path": str(tmp_path / "spool")},
        "queue": {"retry_schedule": [3600]},
        "listener": [dev_listener()],
        **extra,
    }


def cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def queued_relay(tmp_path: Any, dead_port: int, count: int = 2, **extra: Any) -> RunningRelay:
    relay = await RunningRelay(build_config(relay_raw(tmp_path, dead_port, **extra))).start()
    for i in range(count):
        await in_thread(send_smtplib, relay.port, rcpts=(f"user{i}@{DOMAIN}",))
    await relay.service.queue.wait_idle()
    return relay


@pytest_twisted.ensureDeferred
async def test_queue_list_show_flush(tmp_path: Any, capsys: Any, dead_port: int) -> None:
    """queue list shows each deferred message with its recipient and reason; show adds headers; flush retries."""
    relay = await queued_relay(tmp_path, dead_port)
    sock = relay.service.config.control["socket"]
    try:
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "list")
        assert code == EX_OK
        assert out.count(f"@{DOMAIN}") == 2 and "4.4.1 connect to" in out and "<app@client.test>" in out
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "--json", "list")
        listed = json.loads(out)
        first = listed[0]["id"]
        assert [m["attempts"] for m in listed] == [1, 1]
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "show", first)
        assert code == EX_OK and f"id:        {first}" in out and "Subject: hello" in out
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "flush", first)
        assert (code, out.strip()) == (EX_OK, "1 message(s) due now")
        await relay.service.queue.wait_idle()
        assert relay.service.queue.messages[first].attempts == 2
        code, _, err = await in_thread(cli, capsys, "queue", "--socket", sock, "show", "nonexistent")
        assert code == EX_DATAERR and "no queued message nonexistent" in err
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_queue_delete_and_bounce(tmp_path: Any, capsys: Any, dead_port: int) -> None:
    """delete removes a message silently; bounce returns it to the sender as a DSN; the spool follows."""
    relay = await queued_relay(tmp_path, dead_port)
    sock = relay.service.config.control["socket"]
    doomed, returned = sorted(relay.service.queue.messages)
    try:
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "delete", doomed)
        assert (code, out.strip()) == (EX_OK, f"{doomed}: deleted")
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "bounce", returned)
        assert (code, out.strip()) == (EX_OK, f"{returned}: returned to sender")
        await relay.service.queue.wait_idle()
        spool_files = list((tmp_path / "spool" / "q").iterdir())
    finally:
        await relay.stop()
    assert spool_files == []
    [dsn] = maildir_messages(str(tmp_path / "bounces"))
    assert dsn.get_content_type() == "multipart/report" and "returned to sender by the postmaster" in dsn.as_string()


@pytest_twisted.ensureDeferred
async def test_queue_commands_without_a_daemon(tmp_path: Any, capsys: Any, dead_port: int) -> None:
    """With tlsmta stopped, list reads the spool (read-only); flush says the daemon is not running."""
    relay = await queued_relay(tmp_path, dead_port, count=1)
    await relay.stop()
    config_file = tmp_path / "tlsmta.toml"
    dead = relay.service.config.global_options["route"]
    config_file.write_text(
        f'[global]\nstate_dir = "{tmp_path / "state"}"\nroute = "{dead}"\n[spool]\npath = "{tmp_path / "spool"}"\n'
    )
    code, out, err = await in_thread(cli, capsys, "queue", "--config", str(config_file), "list")
    assert code == EX_OK and f"user0@{DOMAIN}" in out and "not running" in err
    code, _, err = await in_thread(cli, capsys, "queue", "--config", str(config_file), "flush")
    assert code == EX_UNAVAILABLE and "no tlsmta daemon answers" in err


def _send_hostile(port: int) -> list[bytes]:
    """A client that tries escape sequences in HELO (refused) and in a header (stored as sent)."""
    import socket

    from e2e import CLIENT_TIMEOUT

    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        f = sock.makefile("rb")
        f.readline()
        replies = []
        for line in (b"HELO evil\x1b]0;OWNED-TITLE\x07\x1b[2J\r\n", b"HELO client.test\r\n", b"MAIL FROM:<a@client.test>\r\n",
                     f"RCPT TO:<user0@{DOMAIN}>\r\n".encode(), b"DATA\r\n",
                     b"Subject: \x1b[8mhidden\x1b[0m \x1b]52;c;ZWNobyBwd25lZA==\x07\r\n\r\nhi\r\n.\r\n"):
            sock.sendall(line)
            replies.append(f.readline())
        sock.sendall(b"QUIT\r\n")
        f.readline()
    return replies


@pytest_twisted.ensureDeferred
async def test_queue_show_does_not_pass_escape_sequences_to_the_terminal(tmp_path: Any, capsys: Any, dead_port: int) -> None:
    """A HELO with ESC sequences is 501; header bytes with them reach `queue show` (daemon and
    offline) escaped as \\x1b, never as raw control characters."""
    relay = await RunningRelay(build_config(relay_raw(tmp_path, dead_port))).start()
    try:
        replies = await in_thread(_send_hostile, relay.port)
        assert replies[0].startswith(b"501 5.5.2 ") and replies[-1].startswith(b"250 "), replies
        await relay.service.queue.wait_idle()
        [queued] = relay.service.queue.messages
        sock = relay.service.config.control["socket"]
        code, shown, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "show", queued)
        assert code == EX_OK
        code, listed, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "list")
        assert code == EX_OK
    finally:
        await relay.stop()
    config_file = tmp_path / "tlsmta.toml"
    config_file.write_text(f'[global]\nstate_dir = "{tmp_path / "state"}"\n[spool]\npath = "{tmp_path / "spool"}"\n')
    code, offline, _ = await in_thread(cli, capsys, "queue", "--config", str(config_file), "show", queued)
    assert code == EX_OK
    for text in (shown, listed, offline):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    for text in (shown, offline):
        assert "from client.test [127.0.0.1]" in text
        assert "Subject: \\x1b[8mhidden\\x1b[0m \\x1b]52;c;ZWNobyBwd25lZA==\\x07" in text


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


@pytest_twisted.ensureDeferred
async def test_prometheus_metrics(tmp_path: Any, pki: Any, dead_port: int) -> None:
    """The opt-in /metrics counts sessions, accepted/rejected messages, deferrals by reason class, queue size."""
    import smtplib

    relay = await queued_relay(tmp_path, dead_port, count=2, metrics={"endpoint": "tcp:0:interface=127.0.0.1"})
    try:
        with pytest.raises(smtplib.SMTPDataError):
            await in_thread(send_smtplib, relay.port, body="Subject: x\r\n\r\nbare\nLF\r\n")
        port = relay.service.metrics.port.getHost().port
        text = await in_thread(_scrape, port)
    finally:
        await relay.stop()
    assert _sample(text, "tlsmta_connections_total", listener="test") == 3
    assert _sample(text, "tlsmta_messages_received_total", result="accepted") == 2
    assert _sample(text, "tlsmta_messages_received_total", result="rejected", reason="5.5") == 1
    assert _sample(text, "tlsmta_deliveries_total", result="deferred", reason="4.4") == 2
    assert _sample(text, "tlsmta_queue_messages") == 2
    assert _sample(text, "tlsmta_queue_oldest_age_seconds") >= 0


@pytest_twisted.ensureDeferred
async def test_metrics_count_tls_and_verification(tmp_path: Any, pki: Any) -> None:
    """Deliveries over verified TLS show up as outbound handshakes and verify outcomes, with latency."""
    import attrs
    from outbound_lab import start_sender, submit_and_settle

    receiver = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(tmp_path, receiver.port, pki.ca_pem, tls="required", tls_verify="host")
    config = attrs.evolve(sender.service.config, metrics={"endpoint": "tcp:0:interface=127.0.0.1"})
    await sender.stop()
    sender = await RunningRelay(config).start()
    try:
        await submit_and_settle(sender)
        text = await in_thread(_scrape, sender.service.metrics.port.getHost().port)
    finally:
        await sender.stop()
        await receiver.stop()
    assert _sample(text, "tlsmta_tls_handshakes_total", direction="outbound", protocol="TLSv1.3", result="ok") == 1
    assert _sample(text, "tlsmta_tls_verify_total", direction="outbound", mode="host", result="verified") == 1
    assert _sample(text, "tlsmta_delivery_latency_seconds_count") == 1
    assert _sample(text, "tlsmta_tls_policy_total", policy="local", result="delivered") == 1


@pytest_twisted.ensureDeferred
async def test_probe_shows_each_verdict(tmp_path: Any, pki: Any) -> None:
    """tlsmta probe (the real command) against a TLS receiver: protocol, chain, one verdict per mode;
    its exit status follows the configured mode."""
    import os
    import sys

    from dns_lab import start_dns
    from e2e import run_process

    tlsmta = os.path.join(os.path.dirname(sys.executable), "tlsmta")
    receiver = await start_receiver(tmp_path, pki.wrong_name)
    # MX and address pinned; what the probe asks besides (MTA-STS, TLS-RPT, TLSA) goes to a zone
    # server the test runs, never to this machine's resolver.
    zone = start_dns(DOMAIN)
    config_file = tmp_path / "probe.toml"
    config_file.write_text(
        f'[global]\ntls = "required"\ntls_ca = "{pki.ca_pem}"\nsmtp_port = {receiver.port}\n'
        f'[dns]\nnameservers = ["{zone.nameserver}"]\n'
        f'[dns.mx]\n"{DOMAIN}" = ["mx.{DOMAIN}"]\n[dns.hosts]\n"mx.{DOMAIN}" = ["127.0.0.1"]\n'
    )
    try:
        runs = {}
        for mode in ("host", "optional", "ca"):
            runs[mode] = await run_process(tlsmta, "probe", DOMAIN, "--config", str(config_file), "--tls-verify", mode)
    finally:
        await receiver.stop()
        zone.stop()
    assert zone.queries.count((f"_mta-sts.{DOMAIN}", "TXT")) == 3  # one per run, answered here
    code, out, err = runs["host"]
    assert "TLS:      TLSv1.3" in out and "0 subject: " in out and "SANs:    other.example.net" in out, out + err
    assert "    no        not checked" in out and "    ca        pass" in out
    assert f"    host      FAIL (certificate name does not match {DOMAIN} or mx.{DOMAIN})" in out
    assert "    optional  soft-fail" in out
    assert (code, runs["optional"][0], runs["ca"][0]) == (EX_TEMPFAIL, EX_OK, EX_OK)


@pytest_twisted.ensureDeferred
async def test_reload_swaps_policy_and_refuses_a_bad_file(tmp_path: Any) -> None:
    """reload() takes a new file's policy for new deliveries; a broken file is refused and the old one kept."""
    from tlsmta.config import _loader as configuration

    path = tmp_path / "tlsmta.toml"
    text = (
        f'[global]\nhostname = "r.test"\nstate_dir = "{tmp_path / "state"}"\nroute = "maildir:{tmp_path / "a"}"\n'
        f'[spool]\npath = "{tmp_path / "spool"}"\n'
        '[[listener]]\nname = "test"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\nrelay_networks = ["127.0.0.0/8"]\n'
    )
    path.write_text(text)
    relay = await RunningRelay(configuration.load(str(path))).start()
    try:
        await in_thread(send_smtplib, relay.port)
        path.write_text(text.replace(str(tmp_path / "a"), str(tmp_path / "b")))
        assert relay.service.reload() == []
        await in_thread(send_smtplib, relay.port)
        path.write_text(text + '\n[domain."x.test"]\ntls_verify = "maybe"\n')
        problems = relay.service.reload()
        await in_thread(send_smtplib, relay.port)
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "a"))) == 1
    assert len(maildir_messages(str(tmp_path / "b"))) == 2  # the bad file changed nothing
    assert problems == [f'{path}: [domain."x.test"] tls_verify: must be one of no, ca, host, optional (got \'maybe\')']


@pytest_twisted.ensureDeferred
async def test_the_metrics_site_reads_no_body() -> None:
    """/metrics is a GET: a POST with a body is 413 at once, not a body kept in a temporary file."""
    from twisted.internet import reactor

    from tlsmta.reporting import Metrics, metrics_site

    port = reactor.listenTCP(0, metrics_site(Metrics()), interface="127.0.0.1")
    head = f"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: {1 << 40}\r\n\r\n".encode()
    try:
        answer = await in_thread(partial_request, port.getHost().port, head, [b"x" * 1024])
    finally:
        await port.stopListening()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
