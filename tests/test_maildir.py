"""Maildir work happens in the disk thread: making a Maildir on first use, and discarding a
copy whose delivery failed, never on the reactor thread."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tlsmta.config._routes import parse_route
from tlsmta.delivery._pool import DELIVERED, PENDING, Deliverer, DeliveryJob
from tlsmta.storage import _maildir as maildir
from tlsmta.storage._diskio import DiskIO
from tlsmta.storage._interfaces import Envelope, Recipient, StoreError
from tlsmta.storage._maildir import LocalSink, MaildirFile
from tlsmta.storage._spool import QueuedMessage, Spool


@pytest.fixture
def disk() -> Any:
    disk = DiskIO(reactor, threads=2)
    yield disk
    disk.stop()


@pytest.fixture
def threads_of(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The thread names ensure_maildir and MaildirFile.discard ran in."""
    seen: dict[str, list[str]] = {"ensure_maildir": [], "discard": []}
    ensure, discard = maildir.ensure_maildir, MaildirFile.discard

    def recording_ensure(path: str) -> None:
        seen["ensure_maildir"].append(threading.current_thread().name)
        ensure(path)

    def recording_discard(self: MaildirFile) -> None:
        seen["discard"].append(threading.current_thread().name)
        discard(self)

    monkeypatch.setattr(maildir, "ensure_maildir", recording_ensure)
    monkeypatch.setattr(MaildirFile, "discard", recording_discard)
    return seen


def envelope(path: Any) -> Envelope:
    route = parse_route(f"maildir:{path}")
    return Envelope(message_id="m1.node", sender="a@example.org", recipients=(Recipient("b@local.test", route),),
                    received_at=datetime(2026, 1, 2, tzinfo=timezone.utc))


def in_disk_threads(names: list[str]) -> bool:
    return bool(names) and all(name.startswith("tlsmta-disk-") for name in names)


@pytest_twisted.ensureDeferred
async def test_a_received_message_makes_its_maildir_in_the_disk_thread(
    tmp_path: Any, disk: DiskIO, threads_of: dict[str, list[str]]
) -> None:
    box = tmp_path / "box"
    sink = LocalSink(disk)
    writer = sink.open(envelope(box))
    assert not box.exists()  # opening the message touched no directory
    writer.write(b"Subject: hi\r\n\r\nhello\r\n")
    await writer.commit()
    [name] = os.listdir(box / "new")
    assert (box / "new" / name).read_bytes().endswith(b"Subject: hi\n\nhello\n")
    second = sink.open(envelope(box))
    second.write(b"Subject: again\r\n\r\n")
    await second.commit()
    assert len(os.listdir(box / "new")) == 2
    assert in_disk_threads(threads_of["ensure_maildir"]) and len(threads_of["ensure_maildir"]) == 1, threads_of


@pytest_twisted.ensureDeferred
async def test_a_maildir_that_cannot_be_made_fails_the_commit(tmp_path: Any, disk: DiskIO) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = LocalSink(disk).open(envelope(blocker / "box"))
    writer.write(b"Subject: hi\r\n\r\n")
    with pytest.raises(StoreError) as e:
        await writer.commit()
    assert e.value.reply.code == 451 and e.value.reply.enhanced == "4.3.0"


def test_discarding_a_file_never_written_touches_nothing(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    MaildirFile(str(blocker / "box"), b"", maildir.ensure_maildir).discard()  # tmp/ cannot even exist: still no error


def test_a_message_and_its_delivery_headers_go_to_the_file_in_one_write(tmp_path: Any, monkeypatch: Any) -> None:
    """Return-Path/Delivered-To and the message are one write system call (each costs a GIL hand-over)."""
    writes: list[bytes] = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (writes.append(bytes(data)), real_write(fd, data))[1])
    box = str(tmp_path / "box")
    target = MaildirFile(box, maildir.local_headers("a@x.test", ["b@y.test"]), maildir.ensure_maildir)
    target.append(b"Subject: s\n\nbody\n")
    target.finish()
    assert writes == [b"Return-Path: <a@x.test>\nDelivered-To: b@y.test\nSubject: s\n\nbody\n"]
    [name] = os.listdir(os.path.join(box, "new"))
    with open(os.path.join(box, "new", name), "rb") as f:
        assert f.read() == writes[0]


class LinesOnly:
    """The pool as a Maildir delivery uses it: only for its delivery lines."""

    def __init__(self) -> None:
        self.logged: list[Any] = []

    def log_job(self, job: DeliveryJob, dest: Any, attempt: Any, results: list[Any], remote: bool = True) -> None:
        self.logged.append(results)


def job_for(tmp_path: Any, box: Any) -> DeliveryJob:
    message = QueuedMessage.from_envelope(envelope(box))
    return DeliveryJob(message, tuple(message.recipients), parse_route(f"maildir:{box}"), "local.test", "default")


@pytest_twisted.ensureDeferred
async def test_queue_delivery_to_a_maildir_runs_in_the_disk_thread(
    tmp_path: Any, disk: DiskIO, threads_of: dict[str, list[str]]
) -> None:
    spool = Spool(str(tmp_path / "spool"), disk)
    spool.ensure()
    box = tmp_path / "box"
    job = job_for(tmp_path, box)
    spool.store_blocking(job.message, b"Subject: queued\r\n\r\nbody\r\n")
    deliverer = Deliverer(LinesOnly(), LocalSink(disk), spool, disk, lambda domain, binding: {})  # type: ignore[arg-type]
    [result] = await deliverer.deliver(job)
    assert (result.status, str(result.reply)) == (DELIVERED, "250 2.0.0 delivered to Maildir")
    assert len(os.listdir(box / "new")) == 1
    assert in_disk_threads(threads_of["ensure_maildir"]), threads_of


@pytest_twisted.ensureDeferred
async def test_a_failed_queue_delivery_discards_in_the_disk_thread(
    tmp_path: Any, disk: DiskIO, threads_of: dict[str, list[str]]
) -> None:
    spool = Spool(str(tmp_path / "spool"), disk)
    spool.ensure()
    box = tmp_path / "box"
    job = job_for(tmp_path, box)  # no body in the spool: the copy fails
    deliverer = Deliverer(LinesOnly(), LocalSink(disk), spool, disk, lambda domain, binding: {})  # type: ignore[arg-type]
    [result] = await deliverer.deliver(job)
    assert result.status == PENDING and str(result.reply).startswith("451 4.3.0 Maildir delivery failed")
    assert in_disk_threads(threads_of["discard"]), threads_of
    assert not box.exists() or os.listdir(box / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_a_queued_copy_into_the_captured_maildir_gets_its_receipt(tmp_path: Any, disk: DiskIO) -> None:
    """A message with remote recipients too reaches the captured Maildir through the queue:
    its copy there carries the facts of receipt like one stored at once (the page shows them)."""
    from tlsmta.storage._receipts import read_receipt

    spool = Spool(str(tmp_path / "spool"), disk)
    spool.ensure()
    box = tmp_path / "box"
    job = job_for(tmp_path, box)
    job.message.tls = {"tls": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    job.message.authenticated = True
    spool.store_blocking(job.message, b"Subject: queued\r\n\r\nbody\r\n")
    local = LocalSink(disk, keeps_receipts=lambda path: path == str(box))
    [result] = await Deliverer(LinesOnly(), local, spool, disk, lambda domain, binding: {}).deliver(job)  # type: ignore[arg-type]
    [name] = os.listdir(box / "new")
    record = read_receipt(str(box), name)
    assert result.status == DELIVERED and record is not None
    assert (record["queue_id"], record["authenticated"], record["tls"]["tls"]) == ("m1.node", True, "TLSv1.3")
    assert os.listdir(box / "tmp") == []


def test_a_spool_record_keeps_how_the_client_greeted_and_whether_it_authenticated(tmp_path: Any) -> None:
    message = QueuedMessage.from_envelope(envelope(tmp_path / "box"))
    message.esmtp, message.authenticated = False, True
    again = QueuedMessage.from_json(message.to_json())
    assert (again.esmtp, again.authenticated) == (False, True)
    older = message.to_json().replace(b',"esmtp":false,"authenticated":true', b"")  # a record from before
    assert (QueuedMessage.from_json(older).esmtp, QueuedMessage.from_json(older).authenticated) == (True, False)
