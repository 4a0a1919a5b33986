"""The disk threads hand finished jobs back to the reactor in batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import succeed

from tlsmta.storage._diskio import DiskIO


class HeldCalls:
    """The reactor's side of callFromThread, held until the test runs them (the reactor busy)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((fn, args))

    def run_all(self) -> None:
        with self.lock:
            calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)


def _wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "disk threads did not finish"
        time.sleep(0.001)


def _fail() -> None:
    raise OSError(28, "No space left on device")


def test_jobs_finished_while_the_reactor_is_busy_come_back_with_one_wake_up() -> None:
    reactor = HeldCalls()
    disk = DiskIO(reactor, threads=4)
    release = threading.Event()
    results: list[Any] = []
    try:
        deferreds = [disk.run(lambda n=n: release.wait(10) and n) for n in range(4)]
        deferreds.append(disk.run(_fail))
        for d in deferreds:
            d.addCallbacks(results.append, lambda f: results.append(f.value))
        release.set()
        _wait_until(lambda: len(disk._done) + len(results) == 5)
        assert len(reactor.calls) == 1  # one hand-over for all five
        assert results == []  # nothing fires outside the reactor thread
        reactor.run_all()
        assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 2, 3]
        assert [str(r) for r in results if isinstance(r, OSError)] == ["[Errno 28] No space left on device"]
        # the next job asks for a new hand-over
        later = disk.run(lambda: "later")
        _wait_until(lambda: len(reactor.calls) == 1)
        reactor.run_all()
        assert later.result == "later"
    finally:
        release.set()
        disk.stop()


class GatedFsync:
    """The real directory fsync, each one held until the test lets it run."""

    def __init__(self, monkeypatch: Any, fail_first: bool = False) -> None:
        from tlsmta.storage import _diskio

        self.real = _diskio.fsync_directory
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.fail_first = fail_first
        self.runs = 0
        monkeypatch.setattr(_diskio, "fsync_directory", self)

    def __call__(self, path: str) -> None:
        self.runs += 1
        self.started.release()
        assert self.go.acquire(timeout=10)
        if self.fail_first and self.runs == 1:
            raise OSError(5, "Input/output error")
        self.real(path)

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=10), "no flush started"


def _in_threads(calls: int, fn: Callable[[], None]) -> tuple[list[threading.Thread], list[Any]]:
    outcomes: list[Any] = []

    def run() -> None:
        try:
            fn()
            outcomes.append("synced")
        except OSError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=run) for _ in range(calls)]
    for t in threads:
        t.start()
    return threads, outcomes


def test_a_directory_flush_is_shared_by_every_thread_that_asked_before_it_started(tmp_path: Any, monkeypatch: Any) -> None:
    fsync = GatedFsync(monkeypatch)
    disk = DiskIO(HeldCalls())
    first, first_done = _in_threads(1, lambda: disk.sync_directory_blocking(str(tmp_path)))
    fsync.wait_started()
    # asked while the first flush runs: their renames may be after its start, so they need the next one
    later, later_done = _in_threads(5, lambda: disk.sync_directory_blocking(str(tmp_path)))
    _wait_until(lambda: all(t.is_alive() for t in later))
    fsync.go.release()
    first[0].join(10)
    assert first_done == ["synced"]
    fsync.wait_started()  # the second flush, run by one of the five
    assert later_done == []  # none of them returns before a flush that started after it asked
    fsync.go.release()
    for t in later:
        t.join(10)
    assert later_done == ["synced"] * 5
    assert fsync.runs == disk._dir_syncs[str(tmp_path)].flushes == 2


def test_a_failed_directory_flush_fails_everyone_it_covers_and_the_next_caller_gets_a_new_one(
        tmp_path: Any, monkeypatch: Any) -> None:
    fsync = GatedFsync(monkeypatch, fail_first=True)
    disk = DiskIO(HeldCalls())
    waiting, outcomes = _in_threads(1, lambda: disk.sync_directory_blocking(str(tmp_path)))
    fsync.wait_started()
    fsync.go.release()
    waiting[0].join(10)
    assert [str(o) for o in outcomes] == ["[Errno 5] Input/output error"]
    fsync.go.release()  # the next flush runs for real
    disk.sync_directory_blocking(str(tmp_path))
    assert fsync.runs == 2


def test_quick_work_is_a_disk_job_unless_the_reactor_does_the_spools_file_work() -> None:
    reactor = HeldCalls()
    disk = DiskIO(reactor, threads=1)
    try:
        job = disk.run_quick(lambda: threading.current_thread().name)
        _wait_until(lambda: len(reactor.calls) == 1)
        reactor.run_all()
        assert job.result == "tlsmta-disk-0"
        disk.group_commit = lambda targets, last: succeed(None)  # [spool] commit = "syncfs"
        inline = disk.run_quick(lambda: threading.current_thread().name)
        assert inline.called and inline.result == threading.current_thread().name and reactor.calls == []
        failed = disk.run_quick(_fail)
        errors: list[Any] = []
        failed.addErrback(lambda f: errors.append(f.value))
        assert [str(e) for e in errors] == ["[Errno 28] No space left on device"]
    finally:
        disk.stop()
