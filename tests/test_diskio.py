"""The disk threads hand finished jobs back to the reactor in batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

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
