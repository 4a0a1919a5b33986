"""Structured log events: one ``key=value`` line per event, every field kept.

Each event is emitted through twisted.logger with its fields as event keys,
so a JSON observer (``--log-format json``) gets them as data, while the
text format is a grep-friendly line.
"""

from __future__ import annotations

import atexit
import datetime
import re
import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python import threadable

from tlsmta.network import installed_reactor

_log = Logger(namespace="tlsmta")


# UTF-8 is written as UTF-8 (sender="jörg@..."); control characters (C0, DEL, C1) and the
# Unicode line and paragraph separators are escaped as \xNN bytes, so a value can never
# start a new line or move the cursor in a terminal.
_UNPRINTABLE_CHARS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
_NEEDS_QUOTES = re.compile(rf'[\s"=\\{_UNPRINTABLE_CHARS}]')
_UNPRINTABLE = re.compile(rf"[{_UNPRINTABLE_CHARS}]")


def _quote(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    if _NEEDS_QUOTES.search(text) is None:
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = _UNPRINTABLE.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode("utf-8")), text)
    return f'"{text}"'


def kv_line(event: str, fields: dict[str, Any]) -> str:
    """``event key=value key="value with spaces"``."""
    return " ".join([event] + [f"{k}={_quote(v)}" for k, v in fields.items()])


class _LazyLine:
    """An event's ``kv_line``, formatted when an observer first writes it and kept.

    Formatting is a tenth of a busy relay's Python time per message; an event
    no text observer writes (JSON logging, a level filtered out) skips it.
    """

    __slots__ = ("_event", "_fields", "_text")

    def __init__(self, event: str, fields: dict[str, Any]):
        self._event = event
        self._fields = fields
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = kv_line(self._event, self._fields)
        return self._text

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


EventSink = Callable[[str, dict[str, Any]], None]


class EventBus:
    """One service's events: to its sinks (metrics, the web page's stream, a test's
    Relay) and to the log. Each service has its own, so two relays in one process
    (two ``tlsmta.testing.Relay``s) never see each other's mail."""

    def __init__(self) -> None:
        self._sinks: list[EventSink] = []

    def add_sink(self, sink: EventSink) -> None:
        """Also hand every event to ``sink``, logged or not."""
        self._sinks.append(sink)

    def remove_sink(self, sink: EventSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def emit(self, event: str, quiet: bool = False, **fields: Any) -> None:
        """One structured event (e.g. ``received``, ``delivery``): to the sinks, and
        to the log unless ``quiet`` (events that only feed metrics)."""
        for sink in list(self._sinks):
            try:
                sink(event, fields)
            except Exception:
                _log.failure("event sink failed on {event}", event=event)
        if not quiet:
            # The text line is formatted once, by the first observer that writes it;
            # observers substitute a single field. tlsmta_fields keeps the event's own
            # fields apart from the keys Twisted's legacy-log bridge writes into the
            # same dict (message, system, time, ...).
            _log.info("{tlsmta_line}", tlsmta_line=_LazyLine(event, fields), tlsmta_event=event,
                      tlsmta_fields=fields, **fields)


def text_observer(out: Any = None) -> Callable[[dict[str, Any]], None]:
    """twisted.logger's classic text format on stdout, made cheap for tlsmta's events.

    A busy relay writes one line per message; Twisted's formatter spends
    more on the timestamp and the format-string machinery than on the
    line, so the timestamp is formatted once a second and an event's
    pre-formatted line is written as it is.  Other events go through
    Twisted's formatter unchanged.  On stdout (what twistd asks for) the
    lines are :class:`BatchedLines`; to ``out``, each is written at once.
    """
    import sys

    from twisted.logger import formatEventAsClassicLogText, formatTime

    stamp: list[Any] = [None, ""]  # [second, formatted]
    lines = BatchedLines(sys.stdout) if out is None else _Unbatched(out)

    def observe(event: dict[str, Any]) -> None:
        line = event.get("tlsmta_line")
        when = event.get("log_time")
        if line is None or when is None or event.get("log_system") is not None:
            text = formatEventAsClassicLogText(event)
            if text is None:
                return
        else:
            second = int(when)
            if stamp[0] != second:
                stamp[0], stamp[1] = second, formatTime(second)
            level = getattr(event.get("log_level"), "name", "-")
            text = f"{stamp[1]} [{event.get('log_namespace', '-')}#{level}] {line}\n"
        lines.write(text)

    return observe


def _json_default(value: Any) -> str:
    return str(value)


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-12-03T12:00:00.123Z``."""
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_record(event: dict[str, Any]) -> dict[str, Any]:
    """One log event as the JSON object ``json_observer`` writes.

    A tlsmta event is ``{"time", "level", "event"}`` and its own fields, nothing
    Twisted adds (``message``, ``system``, ``format``, ``isError``, ``log_*``);
    anything else is ``{"time", "level", "namespace", "text"}`` (and
    ``traceback`` for a failure). Numbers stay numbers.
    """
    from twisted.logger import formatEvent

    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": iso_time(when) if isinstance(when, (int, float)) else None,
        "level": getattr(event.get("log_level"), "name", None),
    }
    fields = event.get("tlsmta_fields")
    if "tlsmta_event" in event and isinstance(fields, dict):
        record["event"] = event["tlsmta_event"]
        record.update((k, v) for k, v in fields.items() if k not in record)
        return record
    record["namespace"] = event.get("log_namespace")
    record["text"] = formatEvent(event)
    if event.get("log_failure") is not None:
        record["traceback"] = event["log_failure"].getTraceback()
    return record


def json_observer(out: Any = None) -> Callable[[dict[str, Any]], None]:
    """A twisted.logger observer writing one JSON object per line (``--log-format json``):
    :func:`json_record` of each event; batched on stdout, as :func:`text_observer`."""
    import json
    import sys

    lines = BatchedLines(sys.stdout) if out is None else _Unbatched(out)

    def observe(event: dict[str, Any]) -> None:
        lines.write(json.dumps(json_record(event), default=_json_default) + "\n")

    return observe


class _Unbatched:
    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class BatchedLines:
    """Log lines to ``stream``, written together once per reactor iteration.

    A relay logs about five lines per message; a write and a flush each
    was a system call per line on the reactor thread (and a chance for a
    disk thread to take the GIL).  A line logged in the running reactor's
    thread is kept until the end of the iteration that logged it (a
    ``callLater(0)`` that runs before the reactor next waits); any other
    line (another thread, no reactor running) is written at once, after
    the kept ones, and so is everything kept when the reactor shuts down
    or the process exits.
    """

    def __init__(self, stream: Any):
        self.stream = stream
        self._kept: list[str] = []
        self._lock = threading.Lock()  # a disk thread may log while the reactor's lines are kept
        self._hooked = False

    def write(self, text: str) -> None:
        if threadable.isInIOThread():
            reactor = installed_reactor()
            if reactor.running:
                with self._lock:
                    self._kept.append(text)
                    if len(self._kept) > 1:
                        return
                if not self._hooked:
                    self._hooked = True
                    reactor.addSystemEventTrigger("after", "shutdown", self.flush)
                    atexit.register(self.flush)
                reactor.callLater(0, self.flush)
                return
        with self._lock:
            self._kept.append(text)
            self._write_kept()

    def flush(self) -> None:
        with self._lock:
            self._write_kept()

    def _write_kept(self) -> None:
        kept, self._kept = self._kept, []
        if kept:
            self.stream.write("".join(kept))
            self.stream.flush()
