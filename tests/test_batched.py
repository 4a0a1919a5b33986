"""Unit tests for :mod:`tlsmta.storage._batched`: removals and such, many to one disk job."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred

from tlsmta.config._routes import parse_route
from tlsmta.storage._batched import Batched
from tlsmta.storage._diskio import DiskIO
from tlsmta.storage._spool import QueuedMessage, RecipientState, Spool


class HeldDisk:
    """A DiskIO.run that keeps each job until ``run_next`` (a disk thread busy elsewhere)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run_next(self) -> None:
        fn, args, d = self.jobs.pop(0)
        maybeDeferred(fn, *args).chainDeferred(d)


def outcomes(deferreds: list[Deferred[None]]) -> list[Any]:
    """What each Deferred fired with: None, an exception, or "pending"."""
    seen: list[Any] = ["pending"] * len(deferreds)
    for i, d in enumerate(deferreds):
        d.addCallbacks(lambda _, i=i: seen.__setitem__(i, None), lambda f, i=i: seen.__setitem__(i, f.value))
    return seen


def test_items_submitted_while_a_job_runs_share_the_next_job():
    disk, done = HeldDisk(), []
    batched = Batched(disk, done.append)
    seen = outcomes([batched.submit(x) for x in "abc"])
    assert len(disk.jobs) == 1 and done == []
    disk.run_next()
    assert done == ["a"] and seen == [None, "pending", "pending"]
    assert len(disk.jobs) == 1  # b and c, together
    later = outcomes([batched.submit("d")])  # while b and c's job waits: it goes with the job after
    disk.run_next()
    assert done == ["a", "b", "c"] and seen == [None] * 3 and later == ["pending"]
    disk.run_next()
    assert done == ["a", "b", "c", "d"] and later == [None] and disk.jobs == []


def test_one_items_failure_is_its_own():
    disk = HeldDisk()

    def each(item: str) -> None:
        if item == "bad":
            raise OSError(5, "Input/output error")

    batched = Batched(disk, each)
    first = outcomes([batched.submit("first")])
    seen = outcomes([batched.submit(x) for x in ("ok", "bad", "ok too")])
    disk.run_next()
    disk.run_next()
    assert first == [None]
    assert seen[0] is None and seen[2] is None
    assert isinstance(seen[1], OSError) and seen[1].errno == 5


class BrokenDisk:
    """A DiskIO.run whose job never ran (the thread pool was stopped, say)."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.calls += 1
        return fail(RuntimeError("disk threads stopped"))


def test_a_job_that_fails_whole_fails_its_items_and_the_next_batch_still_starts():
    disk = BrokenDisk()
    batched = Batched(disk, lambda item: None)
    seen = outcomes([batched.submit("a")]) + outcomes([batched.submit("b")])
    assert [type(x) for x in seen] == [RuntimeError, RuntimeError]
    assert disk.calls == 2


@pytest_twisted.ensureDeferred
async def test_a_spool_removes_many_messages_in_few_disk_jobs(tmp_path: Any):
    """With real disk threads: every message goes, and the ones asked for together share jobs."""
    disk = DiskIO(reactor, threads=8)
    spool = Spool(str(tmp_path / "spool"), disk)
    spool.ensure()
    messages = []
    for n in range(200):
        m = QueuedMessage(id=f"m{n}", sender="a@example.org",
                          recipients=[RecipientState("b@example.com", parse_route("mx"))], received_at=0.0)
        spool.store_blocking(m, b"Subject: x\r\n\r\nbody\r\n")
        messages.append(m)
    jobs = []
    real_run = disk.run

    def counted(fn: Any, *args: Any) -> Deferred[Any]:
        jobs.append(fn)
        return real_run(fn, *args)

    disk.run = counted  # type: ignore[method-assign]
    try:
        await DeferredList([spool.remove(m) for m in messages], fireOnOneErrback=True, consumeErrors=True)
    finally:
        disk.stop()
    assert os.listdir(spool.queue_dir) == []
    assert 1 <= len(jobs) <= 2  # the first alone, the other 199 together
