"""Unit tests for :mod:`tlsmta.storage._batched`: removals and such, many to one disk job."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

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


def test_items_submitted_before_the_job_starts_share_it():
    disk, done = HeldDisk(), []
    batched = Batched(disk, done.append)
    seen = outcomes([batched.submit(x) for x in "abc"])
    assert len(disk.jobs) == 1 and done == [] and seen == ["pending"] * 3
    disk.run_next()
    assert done == ["a", "b", "c"] and seen == [None] * 3 and disk.jobs == []


def test_an_item_submitted_while_a_job_runs_gets_a_job_of_its_own():
    """The running job took its list when it started: a later item must not wait on nothing."""
    disk, done = HeldDisk(), []
    later: list[Deferred[None]] = []

    def each(item: str) -> None:
        done.append(item)
        if item == "a":  # the reactor submits while the disk thread is in this job
            later.append(batched.submit("late"))

    batched = Batched(disk, each)
    seen = outcomes([batched.submit(x) for x in "ab"])
    disk.run_next()
    assert done == ["a", "b"] and seen == [None, None]
    late = outcomes(later)
    assert late == ["pending"] and len(disk.jobs) == 1
    disk.run_next()
    assert done == ["a", "b", "late"] and late == [None] and disk.jobs == []


def test_one_items_failure_is_its_own():
    disk = HeldDisk()

    def each(item: str) -> None:
        if item == "bad":
            raise OSError(5, "Input/output error")

    batched = Batched(disk, each)
    seen = outcomes([batched.submit(x) for x in ("ok", "bad", "ok too")])
    disk.run_next()
    assert seen[0] is None and seen[2] is None
    assert isinstance(seen[1], OSError) and seen[1].errno == 5


def stored_messages(spool: Spool, count: int) -> list[QueuedMessage]:
    messages = []
    for n in range(count):
        m = QueuedMessage(id=f"m{n}", sender="a@example.org",
                          recipients=[RecipientState("b@example.com", parse_route("mx"))], received_at=0.0)
        spool.store_blocking(m, b"Subject: x\r\n\r\nbody\r\n")
        messages.append(m)
    return messages


def test_removals_asked_for_just_before_a_stop_are_done(tmp_path: Any):
    """A stop lets queued disk work finish; a removal must be queued work, or a delivered
    message would stay in q/ and go out again after the restart."""
    disk = DiskIO(reactor, threads=8)
    spool = Spool(str(tmp_path / "spool"), disk)
    spool.ensure()
    for m in stored_messages(spool, 50):
        spool.remove(m)
    disk.stop()  # what DiskService does at shutdown, before any result came back
    assert os.listdir(spool.queue_dir) == []


@pytest_twisted.ensureDeferred
async def test_a_spool_removes_many_messages_in_few_disk_jobs(tmp_path: Any):
    """With real disk threads: every message goes, and the ones asked for together share jobs."""
    disk = DiskIO(reactor, threads=8)
    spool = Spool(str(tmp_path / "spool"), disk)
    spool.ensure()
    messages = stored_messages(spool, 200)
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
    # Far fewer jobs than messages; how many depends on when a disk thread gets the GIL.
    assert 1 <= len(jobs) <= 20, len(jobs)
