"""``[spool] commit = "syncfs"``: the messages that finish together are committed together
(storage.groupcommit), no name appearing before its content is synced, and a failed sync
failing exactly the messages it covered, which their writers then discard."""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
import pytest_twisted
from e2e import eventually, in_thread, maildir_messages, send_smtplib
from outbound_lab import start_receiver
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from tlsmta.app._preflight import syncfs_problem
from tlsmta.config import ConfigError, from_dict
from tlsmta.config._routes import parse_route
from tlsmta.storage._diskio import DiskIO
from tlsmta.storage._filepool import KEEP_BYTES
from tlsmta.storage._groupcommit import GroupCommit, syncfs
from tlsmta.storage._interfaces import Envelope, Recipient, StoreError
from tlsmta.storage._maildir import LocalSink, MaildirFile, ensure_maildir
from tlsmta.testing import RunningRelay, build_config, dev_listener


class RecordingSync:
    """A filesystem sync that notes what ``new/`` held at each call, and may fail some calls."""

    def __init__(self, new: Any, failing: Callable[[int], bool] = lambda call: False):
        self.new = new
        self.failing = failing
        self.seen: list[list[str]] = []

    def __call__(self, fd: int) -> None:
        self.seen.append(sorted(os.listdir(self.new)))
        if self.failing(len(self.seen)):
            raise OSError(errno.EIO, "Input/output error")
        syncfs(fd)


def maildir_file(box: Any) -> MaildirFile:
    return MaildirFile(str(box), b"Return-Path: <a@x.test>\n", ensure_maildir)


def test_messages_finishing_together_share_two_syncs_and_appear_only_after_the_first(tmp_path: Any) -> None:
    box = tmp_path / "box"
    ensure_maildir(str(box))
    clock = Clock()
    sync = RecordingSync(box / "new")
    group = GroupCommit(clock, sync)
    first, second = maildir_file(box), maildir_file(box)
    first.append(b"Subject: one\n\n")
    done = [group.commit([first], b"body one\n"), group.commit([second], b"Subject: two\n\nbody two\n")]
    assert os.listdir(box / "new") == [] and sync.seen == []  # nothing before the batch runs
    clock.advance(0)
    assert sync.seen == [[], sorted([first.name, second.name])]  # content synced with no name yet; then the names
    assert [(d.called, d.result) for d in done] == [(True, None), (True, None)] and group.batches == 1
    assert (box / "new" / first.name).read_bytes() == b"Return-Path: <a@x.test>\nSubject: one\n\nbody one\n"
    assert (box / "new" / second.name).read_bytes() == b"Return-Path: <a@x.test>\nSubject: two\n\nbody two\n"
    group.close()


def test_a_message_after_the_batch_ran_makes_a_batch_of_its_own(tmp_path: Any) -> None:
    box = tmp_path / "box"
    ensure_maildir(str(box))
    clock = Clock()
    group = GroupCommit(clock, RecordingSync(box / "new"))
    group.commit([maildir_file(box)], b"one\n")
    clock.advance(0)
    later = group.commit([maildir_file(box)], b"two\n")
    assert not later.called
    clock.advance(0)
    assert later.called and group.batches == 2 and len(os.listdir(box / "new")) == 2
    group.close()


class Turns:
    """The reactor's timed calls one turn at a time: a callLater(0) made in a turn runs in the next."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def callLater(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        assert delay == 0
        self.calls.append((fn, args))

    def turn(self) -> None:
        calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)


def test_a_batch_takes_in_the_messages_of_the_next_two_turns_then_commits(tmp_path: Any) -> None:
    box = tmp_path / "box"
    ensure_maildir(str(box))
    turns = Turns()
    sync = RecordingSync(box / "new")
    group = GroupCommit(turns, sync)  # type: ignore[arg-type]
    opening = group.commit([maildir_file(box)], b"one\n")
    turns.turn()
    second = group.commit([maildir_file(box)], b"two\n")
    turns.turn()
    third = group.commit([maildir_file(box)], b"three\n")
    assert not any(d.called for d in (opening, second, third)) and sync.seen == []
    turns.turn()
    assert all(d.called for d in (opening, second, third)) and group.batches == 1 and len(sync.seen) == 2
    assert len(os.listdir(box / "new")) == 3
    later = group.commit([maildir_file(box)], b"four\n")
    turns.turn()
    turns.turn()
    assert not later.called
    turns.turn()
    assert later.called and group.batches == 2 and len(os.listdir(box / "new")) == 4
    group.close()


def test_a_message_that_cannot_be_sealed_fails_alone(tmp_path: Any) -> None:
    box = tmp_path / "box"
    ensure_maildir(str(box))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    clock = Clock()
    sync = RecordingSync(box / "new")
    group = GroupCommit(clock, sync)
    bad = group.commit([maildir_file(blocker / "box")], b"never\n")  # its Maildir cannot be made
    good_file = maildir_file(box)
    good = group.commit([good_file], b"fine\n")
    clock.advance(0)
    failures: list[Any] = []
    bad.addErrback(failures.append)
    assert len(failures) == 1 and isinstance(failures[0].value, OSError)
    assert good.called and good.result is None and os.listdir(box / "new") == [good_file.name]
    assert len(sync.seen) == 2
    group.close()


def test_many_maildirs_on_one_filesystem_keep_one_descriptor_open(tmp_path: Any) -> None:
    """A descriptor per filesystem, not per Maildir: a host with thousands of mailboxes keeps one."""
    clock = Clock()
    group = GroupCommit(clock, syncfs)
    before = len(os.listdir("/proc/self/fd"))
    boxes = [tmp_path / f"box{n}" for n in range(30)]
    for box in boxes:
        ensure_maildir(str(box))
        group.commit([maildir_file(box)], b"hello\n")
    clock.advance(0)
    assert all(len(os.listdir(box / "new")) == 1 for box in boxes)
    assert len(os.listdir("/proc/self/fd")) - before == 1
    group.close()
    assert len(os.listdir("/proc/self/fd")) == before


def envelope(box: Any, message_id: str) -> Envelope:
    return Envelope(message_id=message_id, sender="a@example.org",
                    recipients=(Recipient("b@local.test", parse_route(f"maildir:{box}")),),
                    received_at=datetime(2026, 1, 2, tzinfo=timezone.utc))


@pytest.fixture
def disk() -> Any:
    disk = DiskIO(reactor, threads=2)
    yield disk
    disk.stop()


@pytest.mark.parametrize("failing_call", [1, 2], ids=["content sync", "names sync"])
@pytest_twisted.ensureDeferred
async def test_a_failed_sync_is_a_451_for_its_batch_and_leaves_no_file(tmp_path: Any, disk: DiskIO,
                                                                       failing_call: int) -> None:
    box = tmp_path / "box"
    ensure_maildir(str(box))
    group = GroupCommit(reactor, RecordingSync(box / "new", failing=lambda call: call == failing_call))
    disk.group_commit = group.commit
    sink = LocalSink(disk)
    writers = [sink.open(envelope(box, f"m{n}.node")) for n in range(2)]
    for writer in writers:
        writer.write(b"Subject: hi\r\n\r\nhello\r\n")
    outcomes = [writer.commit() for writer in writers]
    for outcome in outcomes:
        with pytest.raises(StoreError) as e:
            await outcome
        assert e.value.reply.code == 451
    assert group.batches == 1
    # the writers' discards run as disk jobs: the next job finishing means they have too
    await disk.run(lambda: None)
    assert os.listdir(box / "new") == [] and os.listdir(box / "tmp") == []
    # and the next message commits as usual
    writer = sink.open(envelope(box, "m3.node"))
    writer.write(b"Subject: again\r\n\r\n")
    await writer.commit()
    [name] = os.listdir(box / "new")
    assert (box / "new" / name).read_bytes().endswith(b"Subject: again\n\n")
    group.close()


def test_syncfs_raises_the_kernels_error() -> None:
    with pytest.raises(OSError) as e:
        syncfs(-1)
    assert e.value.errno == errno.EBADF


def test_the_commit_option_takes_fsync_or_syncfs_only(tmp_path: Any) -> None:
    assert from_dict({"spool": {"path": str(tmp_path), "commit": "syncfs"}}).spool["commit"] == "syncfs"
    with pytest.raises(ConfigError) as e:
        from_dict({"spool": {"path": str(tmp_path), "commit": "fdatasync"}}, path="t.toml")
    assert "[spool] commit" in str(e.value) and "fsync" in str(e.value)


@pytest.mark.parametrize(("sysname", "release", "problem"), [
    ("Linux", "6.1.0-13-amd64", None),
    ("Linux", "5.8.0", None),
    ("Linux", "5.4.0-150-generic", "Linux 5.8 or later"),
    ("FreeBSD", "14.0-RELEASE", "this is FreeBSD"),
])
def test_syncfs_needs_a_kernel_that_reports_write_errors(sysname: str, release: str, problem: str | None) -> None:
    uname = os.uname_result((sysname, "host", release, "#1", "x86_64"))
    why = syncfs_problem(uname)
    assert why is None if problem is None else problem in str(why)


@pytest.mark.parametrize("where", ["maildir", "spool"])
@pytest_twisted.ensureDeferred
async def test_a_relay_with_commit_syncfs_stores_what_it_answers_250_for(tmp_path: Any, where: str) -> None:
    # "spool": a smarthost on a port nothing listens on, so the messages stay queued
    route = f"maildir:{tmp_path / 'maildir'}" if where == "maildir" else "smtp:[127.0.0.1]:1"
    relay = await RunningRelay(build_config({
        "global": {"hostname": "relay.test", "state_dir": str(tmp_path / "state"), "route": route},
        "listener": [dev_listener()],
        "spool": {"path": str(tmp_path / "spool"), "commit": "syncfs"},
        "dns": {},
    })).start()
    try:
        bodies = [f"Subject: n{n}\r\n\r\nmessage {n}\r\n" for n in range(4)]
        refused = await gatherResults([in_thread(send_smtplib, relay.port, body=body) for body in bodies])
        assert refused == [{}] * 4
        group = relay.service.disk.group_commit
        assert group is not None and getattr(group, "__self__").batches >= 1
        if where == "maildir":
            stored = [m.get_payload() for m in maildir_messages(str(tmp_path / "maildir"))]
        else:
            queue = tmp_path / "spool" / "q"
            stored = [(queue / name).read_text() for name in os.listdir(queue) if name.endswith(".msg")]
        assert sorted(re.findall(r"message \d", "".join(stored))) == [f"message {n}" for n in range(4)]
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_a_relay_with_commit_syncfs_removes_small_messages_on_the_reactor_and_large_ones_in_a_disk_thread(
        tmp_path: Any) -> None:
    receiver = await start_receiver(tmp_path)
    relay = await RunningRelay(build_config({
        "global": {"hostname": "relay.test", "state_dir": str(tmp_path / "state"),
                   "route": f"smtp:[127.0.0.1]:{receiver.port}"},
        "listener": [dev_listener()],
        "spool": {"path": str(tmp_path / "spool"), "commit": "syncfs"},
        "dns": {},
    })).start()
    try:
        disk = relay.service.disk
        assert disk.group_commit is not None
        removed_in: dict[str, str] = {}  # subject -> the thread that removed it
        remove = relay.service.spool.remove_blocking

        def noting_thread(message: Any) -> None:
            subject = re.search(rb"Subject: (\w+)", relay.service.spool.read_body_blocking(message, 4096))
            assert subject is not None
            removed_in[subject.group(1).decode()] = threading.current_thread().name
            remove(message)

        relay.service.spool.remove_blocking = noting_thread  # type: ignore[method-assign]
        # "large": its file is emptied when retired (filepool.KEEP_BYTES), milliseconds of work
        bodies = {f"small{n}": f"m{n}\r\n" for n in range(3)}
        bodies["large"] = ("x" * 78 + "\r\n") * (KEEP_BYTES // 80 + 10)
        refused = await gatherResults([in_thread(send_smtplib, relay.port, body=f"Subject: {subject}\r\n\r\n{text}")
                                       for subject, text in bodies.items()])
        assert refused == [{}] * 4
        await eventually(lambda: len(removed_in) == 4)
        assert {subject: removed_in[subject] for subject in bodies if subject != "large"} == {
            f"small{n}": threading.main_thread().name for n in range(3)}
        assert removed_in["large"].startswith("tlsmta-disk-")
        assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 4
        assert [name for name in os.listdir(tmp_path / "spool" / "q") if name.endswith(".msg")] == []
    finally:
        await relay.stop()
        await receiver.stop()
