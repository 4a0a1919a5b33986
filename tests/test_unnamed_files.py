"""Maildir files written unnamed (O_TMPFILE) and linked into new/ once durable, and the spare
unnamed files made ahead of need (storage.filewriter.NewFile, storage.spares).

Real files in pytest's tmp_path; the thread making spares is real and waited for with a bound.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e import open_names_under

from tlsmta.storage import _filewriter as filewriter
from tlsmta.storage import _spares as spares
from tlsmta.storage._filewriter import NewFile
from tlsmta.storage._spares import SpareFiles


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.005)


@pytest.fixture
def box(tmp_path: Any) -> Any:
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_an_unnamed_file_has_no_name_until_it_is_published(box: Any) -> None:
    target = NewFile(str(box / "new" / "m1"), str(box / "tmp"), b"Return-Path: <a@x.test>\n")
    target.append(b"Subject: s\n\nbody\n")
    assert target.unnamed
    assert os.listdir(box / "tmp") == [] and os.listdir(box / "new") == []
    [open_file] = open_names_under(box / "tmp")
    assert open_file.endswith("(deleted)")
    target.publish()
    assert (box / "new" / "m1").read_bytes() == b"Return-Path: <a@x.test>\nSubject: s\n\nbody\n"
    assert os.stat(box / "new" / "m1").st_mode & 0o777 == 0o600
    assert open_names_under(box) == [] and os.listdir(box / "tmp") == []


def test_the_content_is_durable_before_the_name_and_the_link_count_after_it(box: Any, monkeypatch: Any) -> None:
    """fsync, link, fsync: without a journal a directory's fsync does not write the file's
    inode, and fsck removes a name whose inode still counts no links (a lost message)."""
    calls: list[str] = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "link", lambda *a, **k: (calls.append("link"), real_link(*a, **k))[1])
    target = NewFile(str(box / "new" / "m1"), str(box / "tmp"))
    target.append(b"x\n")
    target.publish()
    assert calls == ["fsync", "link", "fsync"]


def test_discarding_leaves_nothing_before_or_after_publishing(box: Any) -> None:
    unpublished = NewFile(str(box / "new" / "m1"), str(box / "tmp"))
    unpublished.append(b"half a message")
    unpublished.discard()
    published = NewFile(str(box / "new" / "m2"), str(box / "tmp"))
    published.append(b"x\n")
    published.publish()
    published.discard()  # another target failed later: this copy must go
    assert os.listdir(box / "new") == [] and os.listdir(box / "tmp") == [] and open_names_under(box) == []


def test_without_unnamed_files_a_named_one_is_renamed_into_place(box: Any, monkeypatch: Any) -> None:
    def unsupported(directory: str) -> int:
        raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")

    monkeypatch.setattr(filewriter, "open_unnamed", unsupported)
    target = NewFile(str(box / "new" / "m1"), str(box / "tmp"))
    target.append(b"x\n")
    assert not target.unnamed and os.listdir(box / "tmp") == ["m1"]
    target.publish()
    assert os.listdir(box / "tmp") == [] and (box / "new" / "m1").read_bytes() == b"x\n"


def test_other_errors_opening_the_file_are_not_hidden(box: Any) -> None:
    target = NewFile(str(box / "nowhere" / "m1"), str(box / "missing-tmp"))
    with pytest.raises(FileNotFoundError):
        target.append(b"x\n")


def test_a_ready_spare_is_used_and_the_message_allocates_nothing(box: Any, monkeypatch: Any) -> None:
    pool = SpareFiles()
    try:
        assert pool.take(str(box / "tmp")) is None  # none ready yet: the caller makes one; one is ordered
        wait_until(lambda: pool.ready(str(box / "tmp")) == 1)

        def must_not_allocate(directory: str) -> int:
            raise AssertionError("allocated on the message's way")

        monkeypatch.setattr(filewriter, "open_unnamed", must_not_allocate)
        target = NewFile(str(box / "new" / "m1"), str(box / "tmp"), take_spare=pool.take)
        target.append(b"from a spare\n")
        target.publish()
        assert (box / "new" / "m1").read_bytes() == b"from a spare\n"
    finally:
        pool.stop()


def test_each_file_taken_orders_one_more_up_to_the_limit_per_directory(box: Any) -> None:
    directory = str(box / "tmp")
    pool = SpareFiles(per_directory=3)
    try:
        for _ in range(5):  # a burst, none ready: three orders (the limit), not five
            assert pool.take(directory) is None
        wait_until(lambda: pool.made == 3)
        assert pool.ready(directory) == 3
        taken = pool.take(directory)
        assert taken is not None and os.fstat(taken).st_nlink == 0
        os.close(taken)
        wait_until(lambda: pool.made == 4)  # the replacement
        assert pool.ready(directory) == 3
    finally:
        pool.stop()
    assert open_names_under(box) == []  # stop closed them


def test_the_least_recently_used_directories_spares_go_first(tmp_path: Any) -> None:
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    pool = SpareFiles(per_directory=2, total=4)
    try:
        for d in dirs:
            pool.take(str(d))
            pool.take(str(d))
            wait_until(lambda d=d: pool.ready(str(d)) == 2)
        assert [pool.ready(str(d)) for d in dirs] == [0, 2, 2]
        assert len(open_names_under(tmp_path)) == 4
    finally:
        pool.stop()


def test_a_filesystem_without_unnamed_files_is_not_asked_again(box: Any, monkeypatch: Any) -> None:
    tried: list[str] = []
    asked = threading.Event()

    def unsupported(directory: str) -> int:
        tried.append(directory)
        asked.set()
        raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")

    monkeypatch.setattr(spares, "open_unnamed", unsupported)
    pool = SpareFiles()
    try:
        pool.take(str(box / "tmp"))
        assert asked.wait(10)
        wait_until(lambda: str(box / "tmp") in pool.unsupported)
        for _ in range(3):
            assert pool.take(str(box / "tmp")) is None
        pool.stop()  # joins the thread: anything ordered has been tried
        assert tried == [str(box / "tmp")]
    finally:
        pool.stop()


def test_a_missing_directory_is_tried_again_later(tmp_path: Any) -> None:
    """tmp/ not there yet (or removed meanwhile) is not 'unsupported'."""
    directory = tmp_path / "tmp"
    pool = SpareFiles()
    try:
        pool.take(str(directory))
        wait_until(lambda: pool.failed == 1)
        assert pool.made == 0 and str(directory) not in pool.unsupported
        directory.mkdir()
        pool.take(str(directory))
        wait_until(lambda: pool.ready(str(directory)) == 1)
    finally:
        pool.stop()
