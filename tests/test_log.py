"""Structured log lines: the key=value format and tlsmta's text observer."""

from __future__ import annotations

import io
import time

import pytest_twisted
from e2e import in_thread, send_smtplib, start_relay
from twisted.logger import LogLevel, formatEventAsClassicLogText, globalLogPublisher

from tlsmta.reporting import _events as log


def test_kv_line_quotes_what_would_break_a_grep() -> None:
    line = log.kv_line("received", {"msgid": "abc", "text": 'a "b" c', "empty": "", "ctl": "x\ny"})
    assert line == 'received msgid=abc text="a \\"b\\" c" empty=- ctl="x\\x0ay"'


def _events_from_emit(**fields: object) -> list[dict]:
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        log.EventBus().emit("delivery", **fields)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    return [e for e in seen if e.get("tlsmta_event") == "delivery"]


def test_text_observer_writes_what_twisteds_formatter_would() -> None:
    [event] = _events_from_emit(msgid="m1", rcpt="a@b.test", text="250 2.0.0 ok")
    out = io.StringIO()
    log.text_observer(out)(event)
    assert out.getvalue() == formatEventAsClassicLogText(event)
    assert "delivery msgid=m1 rcpt=a@b.test" in out.getvalue()


class _CountsItsText:
    """A field value that counts how often it is turned into text."""

    def __init__(self) -> None:
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "counted"


def test_an_event_line_is_formatted_when_written_and_only_once() -> None:
    value = _CountsItsText()
    [event] = _events_from_emit(msgid="m1", reason=value)
    assert value.formatted == 0  # emitted, handed to observers, not yet written
    out = io.StringIO()
    observe = log.text_observer(out)
    observe(event)
    observe(event)
    assert value.formatted == 1
    assert out.getvalue().splitlines()[0].endswith("delivery msgid=m1 reason=counted")
    assert formatEventAsClassicLogText(event) == out.getvalue().splitlines(keepends=True)[1]


def test_text_observer_reuses_the_timestamp_within_a_second_only() -> None:
    out = io.StringIO()
    observe = log.text_observer(out)
    [event] = _events_from_emit(msgid="m1")
    base = int(time.time())
    for when in (base + 0.1, base + 0.9, base + 1.2):
        observe(dict(event, log_time=when))
        assert out.getvalue().splitlines()[-1] == formatEventAsClassicLogText(dict(event, log_time=when)).rstrip("\n")


def test_text_observer_leaves_other_events_to_twisted() -> None:
    out = io.StringIO()
    event = {
        "log_format": "listening on {where}",
        "where": "127.0.0.1:25\nsecond line",
        "log_time": time.time(),
        "log_level": LogLevel.info,
        "log_namespace": "tlsmta.service",
    }
    log.text_observer(out)(event)
    assert out.getvalue() == formatEventAsClassicLogText(event)
    assert "\n\tsecond line" in out.getvalue()


def test_each_bus_hands_events_to_its_own_sinks_only() -> None:
    one, two = log.EventBus(), log.EventBus()
    seen_one: list[str] = []
    seen_two: list[str] = []
    one.add_sink(lambda event, fields: seen_one.append(event))
    two.add_sink(lambda event, fields: seen_two.append(event))
    one.emit("received", quiet=True, code=250)
    assert seen_one == ["received"] and seen_two == []


@pytest_twisted.ensureDeferred
async def test_two_relays_in_one_process_do_not_see_each_others_events(tmp_path) -> None:
    """Each service has its own event bus: mail to one relay reaches only its sinks
    (metrics, the web page's stream, a tlsmta.testing.Relay waiting for mail)."""
    first = await start_relay(tmp_path / "one")
    second = await start_relay(tmp_path / "two")
    heard: dict[str, list[str]] = {"one": [], "two": []}
    first.service.events.add_sink(lambda event, fields: heard["one"].append(event))
    second.service.events.add_sink(lambda event, fields: heard["two"].append(event))
    try:
        await in_thread(send_smtplib, first.port)
    finally:
        await first.stop()
        await second.stop()
    assert "received" in heard["one"]
    assert heard["two"] == []


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest_twisted.ensureDeferred
async def test_the_reactors_lines_are_written_together_at_the_end_of_its_iteration() -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    stream = _CountingStream()
    lines = log.BatchedLines(stream)
    for n in range(3):
        lines.write(f"line {n}\n")
    assert stream.getvalue() == ""  # kept while this iteration runs
    await deferLater(reactor, 0, lambda: None)
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"
    assert stream.writes == 1
    lines.write("kept\n")
    await in_thread(lines.write, "from a disk thread\n")  # another thread's line: at once, after the kept ones
    assert stream.getvalue().endswith("line 2\nkept\nfrom a disk thread\n")
