"""Best-effort appends off the reactor thread (storage.appender), as TLS-RPT recording uses them:
the caller only hands lines over, a disk thread writes them, in order, and a clean stop loses none."""

from __future__ import annotations

import datetime
import json
import os
import threading
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred

from tlsmta.reporting._tlsrpt import TLSRPTStore
from tlsmta.storage import _appender as appender
from tlsmta.storage._appender import LineAppender
from tlsmta.storage._diskio import DiskIO

DAY = datetime.date(2026, 11, 24)
DOMAIN = "example.test"


class HeldDisk:
    """A DiskIO.run that keeps the work until ``run_all`` (a disk thread that has not got to it yet)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.tasks.append((fn, args, d))
        return d

    def run_all(self) -> None:
        tasks, self.tasks = self.tasks, []
        for fn, args, d in tasks:
            maybeDeferred(fn, *args).chainDeferred(d)


@pytest.fixture
def written_from(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(thread name, path) of every file the appender opens."""
    seen: list[tuple[str, str]] = []

    def recording_open(path: str, *args: Any, **kwargs: Any) -> Any:
        seen.append((threading.current_thread().name, os.path.basename(path)))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(appender, "open", recording_open, raising=False)
    return seen


def lines_of(path: Any) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_recording_only_hands_the_line_to_the_disk_thread(tmp_path: Any) -> None:
    disk = HeldDisk()
    store = TLSRPTStore(str(tmp_path), run=disk.run)
    for mx in ("a.mx.test", "b.mx.test", "c.mx.test"):
        store.record(DOMAIN, DAY, "no-policy-found", [], mx, True)
    day_file = tmp_path / f"{DAY.isoformat()}.jsonl"
    assert not day_file.exists()  # nothing written by the caller
    assert len(disk.tasks) == 1  # one task writes all that is pending
    disk.run_all()
    assert [json.loads(line)["mx_host"] for line in lines_of(day_file)] == ["a.mx.test", "b.mx.test", "c.mx.test"]
    store.record(DOMAIN, DAY, "no-policy-found", [], "d.mx.test", True)
    assert len(disk.tasks) == 1  # the next line gets a task of its own


def test_readers_see_outcomes_the_disk_thread_has_not_written_yet(tmp_path: Any) -> None:
    disk = HeldDisk()
    store = TLSRPTStore(str(tmp_path), run=disk.run)
    store.record(DOMAIN, DAY, "no-policy-found", [], "mx.test", True)
    store.record(DOMAIN, DAY, "no-policy-found", [], "mx.test", False, "starttls-not-supported")
    assert store.days() == [DAY]
    [stats] = store.aggregate(DAY)[DOMAIN]
    assert (stats.successes, stats.failures) == (1, 1)
    disk.run_all()  # the queued task finds nothing left: no line twice
    assert len(lines_of(tmp_path / f"{DAY.isoformat()}.jsonl")) == 2


def test_a_real_disk_thread_writes_in_order_and_a_clean_stop_loses_nothing(
    tmp_path: Any, written_from: list[tuple[str, str]]
) -> None:
    disk = DiskIO(reactor, threads=8)
    store = TLSRPTStore(str(tmp_path), run=disk.run)
    days = (DAY, DAY + datetime.timedelta(days=1))
    for n in range(600):
        store.record(DOMAIN, days[n % 2], "no-policy-found", [], "mx.test", False, "validation-failure", reason=str(n))
    disk.stop()  # what DiskService does last at shutdown
    for index, day in enumerate(days):
        reasons = [json.loads(line)["reason"] for line in lines_of(tmp_path / f"{day.isoformat()}.jsonl")]
        assert reasons == [str(n) for n in range(index, 600, 2)]
    assert written_from, "nothing was written through the appender"
    assert {name.startswith("tlsmta-disk-") for name, _ in written_from} == {True}, written_from


def test_without_a_disk_thread_the_line_is_written_at_once(tmp_path: Any, written_from: list[tuple[str, str]]) -> None:
    """What `tlsmta tlsrpt show` and other tools get: no thread, nothing pending."""
    path = str(tmp_path / "log")
    LineAppender().append(path, "one\n")
    assert lines_of(path) == ["one"]
    assert written_from == [(threading.current_thread().name, "log")]


def test_a_failed_write_loses_its_batch_only(tmp_path: Any) -> None:
    disk = HeldDisk()
    lines = LineAppender(disk.run)
    lines.append(str(tmp_path / "missing" / "log"), "lost\n")
    disk.run_all()  # fails (no such directory): logged, best effort
    good = str(tmp_path / "log")
    lines.append(good, "kept\n")
    disk.run_all()
    assert lines_of(good) == ["kept"]
