"""Following one message through tlsmta's logs (``tlsmta log trace``), pure.

Reads both formats the observers write: the text lines (``... [tlsmta#info]
event key=value key="quoted value"``, also behind a journald or syslog
prefix) and the JSON lines (``{"time": ..., "event": ..., ...}``). Lines that
are neither are skipped.

What is one message's life: every line whose ``msgid`` is the message's queue
id, found by that id, by the Message-ID (``<...>`` or without the brackets) or
by an address (sender, or a recipient's ``to=``). A ``bounce`` line links the
DSN's own queue id (``dsn=``), so the DSN's delivery follows; a DSN's id leads
back to its original the same way. The ``connect`` and ``disconnect`` lines of
the session that brought a message (same client address and port, before and
after its ``received`` line) come with it. Lines keep their input order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

_TEXT_EVENT = re.compile(r"\[tlsmta#\w+\] (?P<event>[A-Za-z_][\w-]*)(?P<rest>(?: .*)?)$")
_PAIR = re.compile(r'(?P<key>[A-Za-z_]\w*)=(?P<value>"(?:[^"\\]|\\.)*"|\S*)')
_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|.)')
_ADDRESS_FIELDS = ("sender", "to", "rcpt")


@attrs.frozen
class LogRecord:
    """One tlsmta event read back from a log line."""

    event: str
    fields: dict[str, Any]
    line: str  # as it was read, without its line end

    def get(self, key: str) -> str | None:
        """A field as text; None when absent or written as ``-`` (nothing)."""
        value = self.fields.get(key)
        if value is None or value == "" or value == "-":
            return None
        return str(value)


def unquote(value: str) -> str:
    """The text of a value the key=value format wrote (see ``events.kv_line``)."""
    if not (len(value) >= 2 and value.startswith('"') and value.endswith('"')):
        return value
    out = bytearray()
    pos = 0
    inner = value[1:-1]
    for escape in _ESCAPE.finditer(inner):
        out += inner[pos : escape.start()].encode("utf-8")
        code = escape.group(1)
        out += bytes([int(code[1:], 16)]) if code.startswith("x") and len(code) == 3 else code.encode("utf-8")
        pos = escape.end()
    out += inner[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


def parse_line(line: str) -> LogRecord | None:
    """The tlsmta event on a text or JSON log line, or None."""
    line = line.rstrip("\r\n")
    brace = line.find("{")
    if brace >= 0 and line.rstrip().endswith("}"):
        try:
            data = json.loads(line[brace:])
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("event"), str):
            fields = {k: v for k, v in data.items() if k not in ("event", "level")}
            return LogRecord(data["event"], fields, line)
    found = _TEXT_EVENT.search(line)
    if found is None:
        return None
    fields = {m.group("key"): unquote(m.group("value")) for m in _PAIR.finditer(found.group("rest"))}
    return LogRecord(found.group("event"), fields, line)


def parse_log_lines(lines: Iterable[str]) -> list[LogRecord]:
    return [record for record in map(parse_line, lines) if record is not None]


def _bare(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">").lower()


def _matches(record: LogRecord, key: str) -> bool:
    if record.get("msgid") == key:
        return True
    bare = _bare(key)
    if (message_id := record.get("message_id")) is not None and _bare(message_id) == bare:
        return True
    return any((value := record.get(name)) is not None and _bare(value) == bare for name in _ADDRESS_FIELDS)


def _linked_ids(records: Sequence[LogRecord], ids: set[str]) -> set[str]:
    """``ids`` grown by the bounce lines: an original and its DSN belong together."""
    links = [(r.get("msgid"), r.get("dsn")) for r in records if r.event == "bounce"]
    while True:
        more = {b for a, b in links if a in ids and b} | {a for a, b in links if b in ids and a}
        if more <= ids:
            return ids
        ids = ids | more


def _session_of(records: Sequence[LogRecord], index: int) -> list[int]:
    """The connect and disconnect lines around the ``received`` line at ``index``."""
    received = records[index]
    client = (received.get("peer"), received.get("peer_port"))
    if client[1] is None:
        return []
    found = []
    for i in range(index - 1, -1, -1):
        r = records[i]
        if r.event == "connect" and (r.get("peer"), r.get("peer_port")) == client:
            found.append(i)
            break
    for i in range(index + 1, len(records)):
        r = records[i]
        if r.event == "disconnect" and (r.get("peer"), r.get("peer_port")) == client:
            found.append(i)
            break
    return found


def trace_message(records: Sequence[LogRecord], key: str) -> list[LogRecord]:
    """Every record of the life of the message(s) ``key`` names (a queue id, a
    Message-ID or an address), in input order."""
    direct = {i for i, r in enumerate(records) if _matches(r, key)}
    ids = _linked_ids(records, {msgid for i in direct if (msgid := records[i].get("msgid")) is not None})
    chosen = direct | {i for i, r in enumerate(records) if r.get("msgid") in ids or r.get("dsn") in ids}
    for i in list(chosen):
        if records[i].event == "received":
            chosen.update(_session_of(records, i))
    return [records[i] for i in sorted(chosen)]
