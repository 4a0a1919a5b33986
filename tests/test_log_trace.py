"""``reporting.trace``: log lines read back (text and JSON) and one message's life picked out, pure."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pytest

from tlsmta.app import cli
from tlsmta.reporting import parse_log_lines, trace_message
from tlsmta.reporting._events import iso_time, kv_line
from tlsmta.reporting._trace import parse_line, unquote

STAMP = "2026-12-03 12:00:00+0000 [tlsmta#info] "

# One message's life and its DSN's, between lines of other mail and of Twisted.
LIFE: list[tuple[str, dict[str, Any]]] = [
    ("connect", {"listener": "mx", "peer": "192.0.2.7", "peer_port": 40001, "port": 25}),
    ("connect", {"listener": "mx", "peer": "192.0.2.9", "peer_port": 40002, "port": 25}),
    ("received", {"msgid": "Q1", "message_id": "<m1@client.test>", "peer": "192.0.2.7", "peer_port": 40001,
                  "sender": "alice@client.test", "code": 250, "text": "2.0.0 Ok: queued as Q1"}),
    ("received", {"msgid": "Q2", "message_id": "<other@client.test>", "peer": "192.0.2.9", "peer_port": 40002,
                  "sender": "bob@client.test", "code": 250}),
    ("disconnect", {"listener": "mx", "peer": "192.0.2.9", "peer_port": 40002, "messages": 1, "tls": "none"}),
    ("disconnect", {"listener": "mx", "peer": "192.0.2.7", "peer_port": 40001, "messages": 1, "tls": "none"}),
    ("delivery", {"msgid": "Q1", "message_id": "<m1@client.test>", "to": "<ok@example.com>", "result": "delivered"}),
    ("delivery", {"msgid": "Q1", "message_id": "<m1@client.test>", "to": "<gone@example.com>", "result": "bounced",
                  "text": '5.1.1 "gone" – no such user'}),
    ("delivery", {"msgid": "Q2", "message_id": "<other@client.test>", "to": "<x@example.com>", "result": "delivered"}),
    ("bounce", {"msgid": "Q1", "dsn": "D1", "to": "alice@client.test", "rcpts": 1}),
    ("delivery", {"msgid": "D1", "message_id": None, "to": "<alice@client.test>", "result": "delivered"}),
    ("queue_done", {"msgid": "Q1", "attempts": 1}),
]
Q1_LIFE = ["connect", "received", "disconnect", "delivery", "delivery", "bounce", "delivery", "queue_done"]


def text_log() -> list[str]:
    lines = [f"{STAMP}{kv_line(event, fields)}" for event, fields in LIFE]
    return ["2026-12-03 12:00:00+0000 [-] Site starting on 8080"] + lines


def json_log() -> list[str]:
    lines = [json.dumps({"time": iso_time(1_796_300_000.0), "level": "info", "event": event, **fields})
             for event, fields in LIFE]
    return ['{"time": "2026-12-03T12:00:00.000Z", "level": "info", "namespace": "twisted", "text": "x"}'] + lines


def test_unquote_reads_back_what_kv_line_wrote() -> None:
    """Quotes, backslashes, control and non-ASCII characters survive the round trip."""
    for value in ['a "b" c', "back\\slash", "x\ny", "5.1.1 – ünïcode", "", "plain"]:
        [pair] = kv_line("e", {"v": value}).split(" ", 1)[1:]
        assert unquote(pair.removeprefix("v=")) == (value or "-")


@pytest.mark.parametrize("make", [text_log, json_log])
def test_lines_are_read_from_both_formats(make) -> None:
    """Text and JSON lines give the same events and fields; other lines are skipped."""
    records = parse_log_lines(make())
    assert [r.event for r in records] == [event for event, _ in LIFE]
    bounced = records[7]
    assert (bounced.get("to"), bounced.get("text"), bounced.get("msgid")) == ("<gone@example.com>", '5.1.1 "gone" – no such user', "Q1")
    assert records[10].get("message_id") is None  # written as '-' or null


def test_a_journald_prefix_is_no_obstacle() -> None:
    record = parse_line(f"Dec 03 12:00:00 mx tlsmta[812]: {STAMP}{kv_line('received', {'msgid': 'Q1'})}")
    assert record is not None and (record.event, record.get("msgid")) == ("received", "Q1")


@pytest.mark.parametrize("make", [text_log, json_log])
@pytest.mark.parametrize("key", ["Q1", "<m1@client.test>", "m1@client.test", "alice@client.test", "ALICE@client.test"])
def test_trace_by_id_message_id_or_address(make, key) -> None:
    """By queue id, Message-ID (with or without brackets) or the sender's address: the message's
    session, received, each recipient's delivery, the bounce and the DSN's own delivery, in order;
    nothing of the other message."""
    life = trace_message(parse_log_lines(make()), key)
    assert [r.event for r in life] == Q1_LIFE
    assert {r.get("msgid") for r in life} == {None, "Q1", "D1"}
    assert {r.get("peer_port") for r in life if r.event in ("connect", "disconnect")} == {"40001"}


@pytest.mark.parametrize("make", [text_log, json_log])
def test_trace_by_a_recipient_or_the_dsn_id(make) -> None:
    """A recipient's address finds its message; the DSN's id leads back to the original."""
    records = parse_log_lines(make())
    assert [r.event for r in trace_message(records, "gone@example.com")] == Q1_LIFE
    assert [r.event for r in trace_message(records, "D1")] == Q1_LIFE
    assert [r.get("msgid") for r in trace_message(records, "x@example.com") if r.event == "delivery"] == ["Q2"]
    assert trace_message(records, "nobody@nowhere.test") == []


def test_log_trace_command_reads_files_in_order_and_gz(tmp_path, capsys) -> None:
    """`tlsmta log trace KEY FILE...` prints the lines as they were; .gz is read; 1 when nothing matches,
    66 naming a file that cannot be read."""
    lines = text_log()
    old, new = tmp_path / "tlsmta.log.1.gz", tmp_path / "tlsmta.log"
    with gzip.open(old, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:6]) + "\n")
    new.write_text("\n".join(lines[6:]) + "\n", encoding="utf-8")
    assert cli.main(["log", "trace", "<m1@client.test>", str(old), str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [parse_line(line).event for line in out] == Q1_LIFE
    assert out[1] == lines[3]  # the received line, unchanged
    assert cli.main(["log", "trace", "nobody@nowhere.test", str(new)]) == 1
    assert "no log line names 'nobody@nowhere.test'" in capsys.readouterr().err
    assert cli.main(["log", "trace", "Q1", str(tmp_path / "missing.log")]) == 66
    assert "missing.log: No such file or directory" in capsys.readouterr().err


def test_log_trace_reads_standard_input(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json_log()) + "\n"))
    assert cli.main(["log", "trace", "Q2"]) == 0
    assert [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()] == [
        "connect", "received", "disconnect", "delivery"]
