"""Logs that trace mail: a delivery line per recipient, the Message-ID, connect and disconnect
lines with TLS facts and SNI, JSON lines with only tlsmta's fields, and ``tlsmta log trace``.

Real peers: aiosmtpd refusing one recipient at RCPT, swaks sending SNI over STARTTLS, twistd
writing JSON, and the ``tlsmta`` command reading the log back.
"""

from __future__ import annotations

import io
import json
import os
import re
import smtplib
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from e2e import AIOSMTPD_READY_TIMEOUT, CLIENT_TIMEOUT, eventually, in_thread, run_process, send_smtplib, start_relay
from outbound_lab import DOMAIN, deliveries, start_sender, submit_and_settle
from postfix_lab import free_port
from processes import TlsmtaProcess
from twisted.logger import globalLogPublisher

from tlsmta.reporting import _events, parse_log_lines, trace_message
from tlsmta.testing import dev_listener

TLSMTA = os.path.join(os.path.dirname(sys.executable), "tlsmta")
ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TWISTED_KEYS = {"message", "system", "format", "isError", "log_legacy"}
MESSAGE_ID = "<trace-me.42@client.test>"
BODY = f"Subject: traced\r\nMessage-ID:\r\n {MESSAGE_ID}\r\n\r\nHello.\r\n"  # folded, as clients may


class RefuseOne:
    """An aiosmtpd handler that refuses ``nobody@`` at RCPT and keeps the rest."""

    def __init__(self) -> None:
        self.received: list[list[str]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(list(envelope.rcpt_tos))
        return "250 2.0.0 stored"


@pytest.fixture
def written_logs() -> Any:
    """What tlsmta's own text and JSON observers write during the test (twistd's loggers)."""
    text, js = io.StringIO(), io.StringIO()
    observers = [_events.text_observer(text), _events.json_observer(js)]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    yield text, js
    for observer in observers:
        globalLogPublisher.removeObserver(observer)


@pytest_twisted.ensureDeferred
async def test_mixed_result_is_a_line_per_recipient_and_trace_follows_it(tmp_path: Any, events: list, written_logs: Any) -> None:
    """One session, one recipient accepted and one refused at RCPT: two delivery lines with their own
    result, code and text, both naming the Message-ID; the refused one bounces, and trace by the
    Message-ID, the queue id or the sender's address shows received, both deliveries, the bounce and
    the DSN's own delivery, from the text log and from the JSON log alike."""
    from aiosmtpd.controller import Controller

    handler = RefuseOne()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), ready_timeout=AIOSMTPD_READY_TIMEOUT)
    controller.start()
    try:
        sender = await start_sender(tmp_path, controller.port, None, tls="ifavailable",
                                    domains={"client.test": {"route": f"maildir:{tmp_path / 'bounces'}"}})
        try:
            await submit_and_settle(sender, rcpts=(f"someone@{DOMAIN}", f"nobody@{DOMAIN}"), body=BODY)
            await sender.service.queue.wait_idle()
        finally:
            await sender.stop()
    finally:
        controller.stop()
    assert handler.received == [[f"someone@{DOMAIN}"]]
    lines = [e for e in deliveries(events) if e["domain"] == DOMAIN]
    assert [(e["to"], e["result"], e["code"], e["status"]) for e in lines] == [
        (f"<someone@{DOMAIN}>", "delivered", 250, "2.0.0"), (f"<nobody@{DOMAIN}>", "bounced", 550, "5.1.1")]
    assert lines[1]["text"] == "5.1.1 no such user here"
    assert {(e["message_id"], e["relay"], e["port"]) for e in lines} == {
        (MESSAGE_ID, f"mx.{DOMAIN}[127.0.0.1]:{controller.port}", controller.port)}
    [received] = [e for e in events if e["tlsmta_event"] == "received" and e["code"] == 250]
    assert received["message_id"] == MESSAGE_ID
    [bounce] = [e for e in events if e["tlsmta_event"] == "bounce"]
    queue_id, dsn_id = received["msgid"], bounce["dsn"]

    text, js = (stream.getvalue().splitlines() for stream in written_logs)
    for log in (text, js):
        records = parse_log_lines(log)
        for key in (MESSAGE_ID, MESSAGE_ID.strip("<>"), queue_id, "app@client.test"):
            life = [(r.event, r.get("msgid"), r.get("to")) for r in trace_message(records, key)]
            assert ("received", queue_id, None) in life
            assert ("delivery", queue_id, f"<someone@{DOMAIN}>") in life
            assert ("delivery", queue_id, f"<nobody@{DOMAIN}>") in life
            assert ("bounce", queue_id, "app@client.test") in life
            assert ("delivery", dsn_id, "<app@client.test>") in life, life  # the DSN's own delivery, linked by dsn=
            events_in_order = [event for event, _, _ in life]
            assert events_in_order.index("received") < events_in_order.index("delivery") < events_in_order.index("bounce")
            assert events_in_order[0] == "connect" and "disconnect" in events_in_order  # the session that brought it


def _tls_listener(pki: Any) -> dict[str, Any]:
    return dev_listener(tls="starttls", tls_certificate=pki.good.cert, tls_key=pki.good.key)


@pytest_twisted.ensureDeferred
async def test_connect_and_disconnect_lines_with_tls_facts_and_sni(tmp_path: Any, pki: Any, events: list) -> None:
    """Every session has a connect line (client address and port, listener, local port) and a
    disconnect line (duration, commands, messages, TLS facts with the SNI name the client sent),
    also a session that sent no mail; without TLS the disconnect line says tls=none."""
    relay = await start_relay(tmp_path, [_tls_listener(pki)])
    try:
        base = ["swaks", "--server", f"127.0.0.1:{relay.port}", "--from", "s@client.test", "--helo", "client.test",
                "--to", "a@example.com"]
        tls = await run_process(*base, "--tls", "--tls-sni", "mx.sni.test", "--quit-after", "EHLO")
        assert tls[0] == 0, tls[1] + tls[2]
        plain = await in_thread(send_smtplib, relay.port)
        assert plain == {}

        def both_closed() -> bool:
            return len([e for e in events if e["tlsmta_event"] == "disconnect"]) >= 2

        await eventually(both_closed)
    finally:
        await relay.stop()
    connects = [e for e in events if e["tlsmta_event"] == "connect"]
    first, second = [e for e in events if e["tlsmta_event"] == "disconnect"][:2]
    assert [(c["listener"], c["peer"], c["port"]) for c in connects[:2]] == [("test", "127.0.0.1", relay.port)] * 2
    assert all(isinstance(c["peer_port"], int) and c["peer_port"] > 0 for c in connects)
    assert (first["tls"], first["protocol"], first["sni"], first["messages"]) == ("tls", "TLSv1.3", "mx.sni.test", 0)
    assert first["cipher"] and first["commands"] >= 3  # EHLO, STARTTLS, EHLO, QUIT
    assert (second["tls"], second["messages"], second.get("sni")) == ("none", 1, None)
    assert isinstance(second["duration"], float) and second["duration"] >= 0
    assert second["peer_port"] == connects[1]["peer_port"]


def test_json_lines_carry_only_tlsmtas_fields_with_iso_times() -> None:
    """Twisted's legacy bridge (which twistd keeps) writes message, system, format and isError into
    every event; the JSON line has none of them, its time is ISO 8601 UTC with milliseconds, and
    numbers stay numbers."""
    from twisted.python import log as legacy

    out = io.StringIO()
    observer = _events.json_observer(out)
    seen: list[dict[str, Any]] = []

    def ignore(event: dict[str, Any]) -> None:
        seen.append(event)

    legacy.addObserver(ignore)  # an old-style observer, wrapped by the bridge as twistd's are
    globalLogPublisher.addObserver(observer)
    try:
        _events.EventBus().emit("received", msgid="m1", size=1234, code=250, peer_port=50123, text="2.0.0 Ok")
    finally:
        globalLogPublisher.removeObserver(observer)
        legacy.removeObserver(ignore)
    assert seen and "isError" in seen[-1]  # the bridge did run on this event
    [line] = [json.loads(text) for text in out.getvalue().splitlines() if '"event"' in text]
    assert set(line) == {"time", "level", "event", "msgid", "size", "code", "peer_port", "text"}
    assert ISO_MILLIS.match(line["time"]), line["time"]
    assert (line["size"], line["code"], line["peer_port"]) == (1234, 250, 50123)


def test_twistd_json_log_and_trace_command(tmp_path: Any) -> None:
    """twistd with --log-format json: every tlsmta line is tlsmta's fields only; `tlsmta log trace`
    reads that log back and prints the message's connect, received and disconnect lines."""
    config = tmp_path / "tlsmta.toml"
    config.write_text(
        f'[global]\nhostname = "json.test"\nstate_dir = "{tmp_path}/state"\nroute = "maildir:{tmp_path}/maildir"\n'
        f'[spool]\npath = "{tmp_path}/spool"\n'
        f'[[listener]]\nname = "in"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\n'
        'relay_networks = ["127.0.0.0/8"]\n'
    )
    daemon = TlsmtaProcess(str(tmp_path), "--config", str(config), "--log-format", "json")
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as client:
            client.sendmail("app@client.test", ["to@json.test"], BODY.encode())
        daemon.wait_for_log('"event": "disconnect"')
    finally:
        log = daemon.stop()
    lines = [json.loads(text) for text in log.splitlines() if text.startswith("{")]
    ours = [line for line in lines if "event" in line]
    assert {"connect", "received", "disconnect"} <= {line["event"] for line in ours}
    for line in ours:
        assert not (set(line) & TWISTED_KEYS) and not any(k.startswith("log_") for k in line), line
        assert ISO_MILLIS.match(line["time"]), line
    [received] = [line for line in ours if line["event"] == "received"]
    assert (type(received["size"]), received["code"], received["message_id"]) == (int, 250, MESSAGE_ID)
    log_file = tmp_path / "json.log"
    log_file.write_text(log)
    trace = subprocess.run([TLSMTA, "log", "trace", MESSAGE_ID, str(log_file)],
                                          capture_output=True, text=True, timeout=60)
    assert trace.returncode == 0, trace.stderr
    assert [json.loads(text)["event"] for text in trace.stdout.splitlines()] == ["connect", "received", "disconnect"]
    missing = subprocess.run([TLSMTA, "log", "trace", "<nothing@here>", str(log_file)],
                                            capture_output=True, text=True, timeout=60)
    assert (missing.returncode, missing.stdout) == (1, "")


def test_kv_line_writes_utf8_as_utf8_and_escapes_controls() -> None:
    """An SMTPUTF8 address is logged as it is; line breaks, terminal escapes and the Unicode line
    separators are still escaped, and quotes still quoted."""
    line = _events.kv_line("received", {"sender": "jörg@bücher.example", "text": 'a "b"\r\n\x1b[31m\u2028ü'})
    assert line == 'received sender=jörg@bücher.example text="a \\"b\\"\\x0d\\x0a\\x1b[31m\\xe2\\x80\\xa8ü"'


def test_twistd_text_log_has_the_utf8_sender(tmp_path: Any) -> None:
    """twistd's text log file: the received line names an SMTPUTF8 sender in UTF-8, not \\xc3\\xb6."""
    config = tmp_path / "tlsmta.toml"
    config.write_text(
        f'[global]\nhostname = "utf8.test"\nstate_dir = "{tmp_path}/state"\nroute = "maildir:{tmp_path}/maildir"\n'
        f'[spool]\npath = "{tmp_path}/spool"\n'
        f'[[listener]]\nname = "in"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\n'
        'relay_networks = ["127.0.0.0/8"]\n'
    )
    daemon = TlsmtaProcess(str(tmp_path), "--config", str(config))
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as client:
            client.sendmail("jörg@client.test", ["to@utf8.test"], BODY.encode(), mail_options=["SMTPUTF8"])
        daemon.wait_for_log(r"received .*code=250")
    finally:
        log = daemon.stop()
    [received] = [line for line in log.splitlines() if " received " in line]
    assert "sender=jörg@client.test" in received, received
