"""Unit tests for :mod:`tlsmta.storage._spool`: the on-disk format and the blocking operations.

The blocking methods run directly in the test (no disk thread) against a
real directory under ``tmp_path``; the ``disk`` they are given is never
used by them.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import attrs
import pytest

from tlsmta.config._routes import parse_route
from tlsmta.smtp._reply import Reply
from tlsmta.storage import _filepool as filepool_module
from tlsmta.storage import _filewriter as filewriter_module
from tlsmta.storage import _spool as spool_module
from tlsmta.storage._interfaces import Envelope, Recipient
from tlsmta.storage._spool import (
    BOUNCED,
    DELIVERED,
    FORMAT,
    PENDING,
    TRAILER_LENGTH,
    QueuedMessage,
    RecipientState,
    Spool,
    read_record,
)

BODY = b"Received: from a by b\r\nSubject: hi\r\n\r\nhello\r\n"


class UnusedDisk:
    """A DiskIO stand-in that fails the test if the blocking methods use it."""

    def __getattr__(self, name):
        raise AssertionError(f"blocking spool method used disk.{name}")


def body_of(spool: Spool, message_id: str) -> bytes:
    """A spooled message's body, as the disk thread reads it for delivery."""
    return spool.read_body_blocking(read_record(spool.message_path(message_id)))


def spool_two_files(spool: Spool, m: QueuedMessage, body: bytes) -> None:
    """A message as a version before the one-file layout spooled it: q/ID.eml and q/ID.json."""
    with open(os.path.join(spool.queue_dir, m.id + ".eml"), "wb") as f:
        f.write(body)
    with open(os.path.join(spool.queue_dir, m.id + ".json"), "wb") as f:
        f.write(attrs.evolve(m, size=len(body)).to_json())


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(str(tmp_path / "spool"), UnusedDisk())
    s.ensure()
    return s


def message(message_id: str = "m1", **overrides) -> QueuedMessage:
    fields = dict(
        id=message_id,
        sender="alice@example.org",
        recipients=[
            RecipientState("bob@example.com", parse_route("mx")),
            RecipientState("carol@Example.NET", parse_route("smtp:[2001:db8::25]:2525"), "out1", DELIVERED,
                           "250 2.0.0 ok"),
            RecipientState("dave@local.test", parse_route("maildir:/var/mail/dev"), status=BOUNCED,
                           last="550 5.1.1 no such user (from mx.local.test)"),
            RecipientState("eve@example.com", parse_route("discard")),
        ],
        received_at=1_700_000_000.25,
        size=len(BODY),
        attempts=3,
        next_attempt=1_700_000_900.5,
        smtputf8=True,
        body_type="8BITMIME",
        helo="client.example.org",
        peer="192.0.2.7",
        listener="mx",
        tls={"protocol": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "verified": False},
    )
    fields.update(overrides)
    return QueuedMessage(**fields)


def listing(directory: str) -> set[str]:
    return set(os.listdir(directory))


def scan_all(spool: Spool, batch: int = 2000):
    """(messages by id, [(path, reason)], [batch sizes]) from a start-up scan: prepare, then load in batches."""
    ids = spool.prepare_blocking()
    messages, bad, sizes = {}, [], []
    for first in range(0, len(ids), batch):
        loaded, problems = spool.load_blocking(ids[first : first + batch])
        bad += problems
        if loaded:
            sizes.append(len(loaded))
        messages.update((m.id, m) for m in loaded)
    return messages, bad, sizes


# -- QueuedMessage JSON ---------------------------------------------------------------------


def test_json_round_trip_keeps_every_field():
    """to_json/from_json give back an equal message: envelope, routes, per-recipient state, TLS facts."""
    original = message()
    copy = QueuedMessage.from_json(original.to_json())
    assert copy == original
    assert copy is not original
    assert [str(r.route) for r in copy.recipients] == ["mx", "smtp:[2001:db8::25]:2525", "maildir:/var/mail/dev",
                                                      "discard"]


def test_json_is_versioned():
    """The record carries the format version."""
    assert json.loads(message().to_json())["v"] == FORMAT


@pytest.mark.parametrize("version", [None, 0, FORMAT + 1, "1"])
def test_unknown_format_version_rejected(version):
    """A record of another (or no) format version is refused with ValueError, not misread."""
    data = json.loads(message().to_json())
    if version is None:
        del data["v"]
    else:
        data["v"] = version
    with pytest.raises(ValueError):
        QueuedMessage.from_json(json.dumps(data).encode())


@pytest.mark.parametrize("raw", [b"[]", b"null", b"42", b'"text"'])
def test_json_that_is_not_an_object_rejected(raw):
    """Valid JSON that is not an object is refused with ValueError (so a scan can report it)."""
    with pytest.raises(ValueError):
        QueuedMessage.from_json(raw)


def test_pending_and_is_bounce():
    """pending lists only recipients still to do; a null sender marks a bounce."""
    m = message()
    assert [r.address for r in m.pending] == ["bob@example.com", "eve@example.com"]
    assert not m.is_bounce
    assert message(sender="").is_bounce
    assert m.recipients[1].domain == "example.net"


def test_from_envelope():
    """A new message starts pending for every recipient, due at its arrival time."""
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    envelope = Envelope(
        message_id="abc.node", sender="a@example.org",
        recipients=(Recipient("b@example.com", parse_route("mx")), Recipient("c@local.test", parse_route("discard"), "out1")),
        received_at=when, helo="h", peer="192.0.2.1", listener="mx", smtputf8=True, body_type="8BITMIME",
        tls={"protocol": "TLSv1.3"},
    )
    m = QueuedMessage.from_envelope(envelope)
    assert m.id == "abc.node" and m.sender == "a@example.org"
    assert [(r.address, str(r.route), r.binding, r.status) for r in m.recipients] == [
        ("b@example.com", "mx", "default", PENDING), ("c@local.test", "discard", "out1", PENDING)]
    assert m.received_at == m.next_attempt == when.timestamp()
    assert m.attempts == 0
    assert (m.helo, m.peer, m.listener, m.smtputf8, m.body_type, m.tls) == (
        "h", "192.0.2.1", "mx", True, "8BITMIME", {"protocol": "TLSv1.3"})


# -- SpoolFile ----------------------------------------------------------------------------------


def test_spool_file_appears_in_queue_only_after_finish(spool):
    """While a message is written it lives in tmp/; q/ sees it only after finish()."""
    m = message(size=0)
    target = spool.writer(m)[1]
    target.append(BODY[:10])
    target.append(BODY[10:])
    assert listing(spool.queue_dir) == set()
    assert "m1.msg" in listing(spool.tmp_dir)
    target.finish()
    assert listing(spool.queue_dir) == {"m1.msg"}
    assert listing(spool.tmp_dir) == set()
    assert body_of(spool, "m1") == BODY
    assert m.size == len(BODY)
    assert read_record(spool.message_path("m1")) == m


def test_a_reused_longer_file_is_cut_to_the_new_message(spool):
    """A finished message's file is reused for the next one (storage.filepool): whatever of the
    old content lies past the new message's end must not stay in the file."""
    long = message("m1", size=0)
    target = spool.writer(long)[1]
    target.append(BODY * 50)
    target.finish()
    spool.remove_blocking(long)  # its file goes to free/, bytes and all
    short = message("m2", size=0)
    target = spool.writer(short)[1]
    target.append(BODY[:10])
    target.finish()
    with open(spool.message_path("m2"), "rb") as f:
        raw = f.read()
    record = short.to_json()
    assert raw == BODY[:10] + record + b"\n%010d tlsmta-spool\n" % len(record)


def test_a_message_file_is_the_body_then_the_record_then_the_trailer(spool):
    m = message(size=0)
    spool.store_blocking(m, BODY)
    with open(spool.message_path("m1"), "rb") as f:
        raw = f.read()
    record = m.to_json()
    assert raw == BODY + record + b"\n%010d tlsmta-spool\n" % len(record)
    assert len(raw) == len(BODY) + len(record) + TRAILER_LENGTH


def test_a_record_longer_than_one_read_of_the_tail_loads(spool):
    m = message(size=0, recipients=[RecipientState(f"r{i}@example.com", parse_route("mx")) for i in range(300)])
    spool.store_blocking(m, BODY * 1000)
    assert len(m.to_json()) > 4096
    assert read_record(spool.message_path("m1")) == m


def test_finish_renames_a_message_into_the_queue_once_and_its_hold_first(spool, monkeypatch):
    """A message's file enters q/ with one rename, after its fsync; a hold's state before it."""
    real_rename, real_fsync = os.rename, os.fsync
    steps = []

    def rename(src, dst):
        real_rename(src, dst)
        steps.append(os.path.basename(dst))

    def fsync(fd):
        real_fsync(fd)
        steps.append("fsync")

    monkeypatch.setattr(spool_module.os, "rename", rename)
    monkeypatch.setattr(filewriter_module.os, "fsync", fsync)
    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    target = spool.writer(message())[1]
    target.append(BODY)
    target.finish()
    held = spool.writer(message("m2", held=True))[1]
    held.append(BODY)
    held.finish()
    assert steps == ["fsync", "m1.msg", "fsync", "fsync", "m2.state", "m2.msg"]


def test_failed_rename_into_the_queue_leaves_no_queued_message(spool, monkeypatch):
    """If finish() dies before the message is in q/, the message is not queued."""
    real_rename = os.rename

    def failing_rename(src, dst):
        if dst.endswith(".msg"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    target = spool.writer(message())[1]
    target.append(BODY)
    monkeypatch.setattr(spool_module.os, "rename", failing_rename)
    with pytest.raises(OSError):
        target.finish()
    monkeypatch.undo()
    target.discard()
    messages, bad, _ = scan_all(spool)
    assert messages == {} and bad == []
    assert listing(spool.queue_dir) == set()


def test_finish_without_data_stores_empty_body(spool):
    """A message finished without any append still gets a (empty) body file."""
    target = spool.writer(message(size=0))[1]
    target.finish()
    assert body_of(spool, "m1") == b""


def test_discard_leaves_nothing(spool):
    """discard() removes the partial body and nothing reaches q/."""
    target = spool.writer(message())[1]
    target.append(BODY)
    target.discard()
    target.discard()  # twice is harmless
    assert listing(spool.tmp_dir) == set()
    assert listing(spool.queue_dir) == set()


# -- store, save, remove --------------------------------------------------------------------


def test_store_blocking_is_complete_on_return(spool):
    """store_blocking writes body and metadata into q/ and leaves tmp/ empty."""
    m = message("dsn1", size=0)
    spool.store_blocking(m, BODY)
    assert listing(spool.queue_dir) == {"dsn1.msg"}
    assert listing(spool.tmp_dir) == set()
    assert body_of(spool, "dsn1") == BODY
    assert m.size == len(BODY)


def test_store_blocking_failure_cleans_up(spool, monkeypatch):
    """If storing fails, the error propagates and no partial files remain."""

    def no_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module.os, "fsync", no_fsync)
    with pytest.raises(OSError):
        spool.store_blocking(message("dsn1"), BODY)
    monkeypatch.undo()
    assert listing(spool.tmp_dir) == set()
    assert listing(spool.queue_dir) == set()


def test_save_blocking_records_state_and_leaves_the_record(spool):
    """save_blocking writes ID.state (what a restart loads over the record); ID.msg stays as received."""
    m = message(attempts=0)
    spool.store_blocking(m, BODY)
    with open(spool.message_path(m.id), "rb") as f:
        received = f.read()
    m.attempts = 1
    m.next_attempt = 1_700_000_060.0
    m.recipients[0].last = "451 4.7.5 certificate name does not match mx.example.com"
    spool.save_blocking(m)
    with open(spool.message_path(m.id), "rb") as f:
        assert f.read() == received
    [loaded], problems = spool.load_blocking([m.id])
    assert loaded == m and problems == []
    assert loaded.attempts == 1 and loaded.next_attempt == 1_700_000_060.0
    assert listing(spool.tmp_dir) == set()
    assert body_of(spool, m.id) == BODY


def test_remove_blocking(spool):
    """remove_blocking takes a message's file and state away and tolerates files already gone."""
    first, second = message(), message("m2")
    spool.store_blocking(first, BODY)
    spool.store_blocking(second, BODY)
    spool.save_blocking(first)
    spool.remove_blocking(first)
    assert listing(spool.queue_dir) == {"m2.msg"}
    spool.remove_blocking(first)
    os.unlink(spool.message_path("m2"))
    spool.remove_blocking(second)
    assert listing(spool.queue_dir) == set()


def test_removing_a_message_never_saved_touches_only_its_file(spool, monkeypatch):
    """No attempt at an ID.state that was never written: one rename into free/, nothing else."""
    m = message()
    spool.store_blocking(m, BODY)
    calls = []
    for name in ("rename", "unlink"):  # the os module every spool file operation goes through
        real = getattr(os, name)
        monkeypatch.setattr(filepool_module.os, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    spool.remove_blocking(m)
    assert calls == ["rename"] and listing(spool.queue_dir) == set()
    reloaded = message("m2")
    spool.store_blocking(reloaded, BODY)
    spool.save_blocking(reloaded)
    [reloaded] = spool.load_blocking(["m2"])[0]  # a restart finds the state file
    calls.clear()
    spool.remove_blocking(reloaded)
    assert calls == ["rename", "rename"] and listing(spool.queue_dir) == set()


# -- scan -------------------------------------------------------------------------------------------


def test_scan_creates_missing_directories(tmp_path):
    """Scanning a spool that does not exist yet creates it and finds nothing."""
    s = Spool(str(tmp_path / "new"), UnusedDisk())
    assert s.prepare_blocking() == []
    assert os.path.isdir(s.tmp_dir) and os.path.isdir(s.queue_dir)


def test_scan_finds_stored_messages(spool):
    """Every stored message comes back from a scan, equal to what was stored."""
    stored = {f"m{i}": message(f"m{i}", attempts=i) for i in range(5)}
    for m in stored.values():
        spool.store_blocking(m, BODY)
    messages, bad, _ = scan_all(spool)
    assert messages == stored
    assert bad == []


def test_scan_clears_tmp_and_orphan_bodies(spool):
    """tmp/ (never acknowledged) is emptied and a body without metadata is removed; queued messages stay."""
    spool.store_blocking(message("kept"), BODY)
    half = spool.writer(message("half"))[1]
    half.append(BODY)  # a crash while receiving: only tmp/half.msg exists
    os.close(half.file.fd)
    half.file.fd = None
    with open(os.path.join(spool.tmp_dir, "kept.json.upd"), "wb") as f:
        f.write(b"{")
    for orphan in ("orphan.eml", "orphan.state"):  # a former version's body, a state: no message
        with open(os.path.join(spool.queue_dir, orphan), "wb") as f:
            f.write(BODY)
    messages, bad, _ = scan_all(spool)
    assert set(messages) == {"kept"}
    assert bad == []
    assert listing(spool.tmp_dir) == set()
    assert listing(spool.queue_dir) == {"kept.msg"}


def test_scan_yields_batches(spool):
    """Messages come in lists of at most ``batch``, covering all of them once."""
    for i in range(7):
        spool.store_blocking(message(f"m{i}"), BODY)
    messages, _, sizes = scan_all(spool, batch=3)
    assert sorted(sizes) == [1, 3, 3]
    assert len(messages) == 7


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"\xff\xfe", b"[]", b'{"v": 99}', b'{"v": 1, "id": "x"}',
     b'{"v": 1, "id": "x", "sender": "", "rcpts": [{"a": "b@c", "r": "bogus:route", "b": "d", "s": "pending", "l": ""}],'
     b' "received_at": 0, "size": 0, "attempts": 0, "next_attempt": 0, "smtputf8": false, "body": "7BIT",'
     b' "helo": "", "peer": "", "listener": "", "tls": {}}'],
)
@pytest.mark.parametrize("two_files", [False, True])
def test_scan_reports_corrupt_records_and_continues(spool, raw, two_files):
    """An unreadable record is reported as (path, reason), its files go to corrupt/, and the
    other messages still load (either layout)."""
    spool.store_blocking(message("good"), BODY)
    if two_files:
        path = os.path.join(spool.queue_dir, "bad.json")
        with open(path, "wb") as f:
            f.write(raw)
        with open(os.path.join(spool.queue_dir, "bad.eml"), "wb") as f:
            f.write(BODY)
    else:
        path = spool.message_path("bad")
        with open(path, "wb") as f:
            f.write(BODY + raw + b"\n%010d tlsmta-spool\n" % len(raw))
    messages, bad, _ = scan_all(spool)
    assert set(messages) == {"good"}
    assert len(bad) == 1
    assert bad[0][0] == path and isinstance(bad[0][1], str)
    assert listing(spool.queue_dir) == {"good.msg"}
    assert listing(os.path.join(spool.path, "corrupt")) == ({"bad.json", "bad.eml"} if two_files else {"bad.msg"})


@pytest.mark.parametrize("cut", [1, TRAILER_LENGTH, TRAILER_LENGTH + 5, 200])
def test_a_message_file_cut_short_is_reported_not_misread(spool, cut):
    """A file without its whole trailer, or whose body is not the record's size, is corrupt."""
    spool.store_blocking(message("bad"), BODY)
    path = spool.message_path("bad")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:-cut] if cut != 200 else BODY[:-1] + raw[len(BODY):])  # 200: a body one byte short
    messages, bad, _ = scan_all(spool)
    assert messages == {} and [p for p, _ in bad] == [path]


def test_a_message_spooled_as_two_files_loads_delivers_and_goes(spool):
    """A queue spooled by a version before the one-file layout is read and emptied as before."""
    old = message("old", size=0)
    spool_two_files(spool, old, BODY)
    spool.store_blocking(message("new"), BODY * 2)
    messages, bad, _ = scan_all(spool)
    assert bad == [] and set(messages) == {"old", "new"}
    assert messages["old"].two_files and not messages["new"].two_files
    assert spool.read_body_blocking(messages["old"]) == BODY
    assert spool.read_body_blocking(messages["new"]) == BODY * 2
    assert spool.read_body_blocking(messages["new"], 10) == BODY[:10]
    spool.save_blocking(messages["old"])
    spool.remove_blocking(messages["old"])
    assert listing(spool.queue_dir) == {"new.msg"}


def test_prepare_leaves_directories_in_tmp_alone(spool):
    """A stray directory in tmp/ does not stop the start-up cleanup."""
    os.mkdir(os.path.join(spool.tmp_dir, "stray"))
    with open(os.path.join(spool.tmp_dir, "half.eml"), "wb") as f:
        f.write(b"never acknowledged")
    assert spool.prepare_blocking() == []
    assert os.listdir(spool.tmp_dir) == ["stray"]


@pytest.mark.parametrize("torn", [b"", b'{"id": "x"', b'{"id":"other","attempts":1,"next_attempt":0,"rcpts":[]}'])
def test_torn_state_is_ignored_never_loses_the_message(spool, torn):
    """A state file torn by a crash (empty, cut, not ours) is ignored: the message loads as received."""
    m = message(attempts=0)
    spool.store_blocking(m, BODY)
    with open(spool.state_path(m.id), "wb") as f:
        f.write(torn)
    [loaded], problems = spool.load_blocking([m.id])
    assert loaded.id == m.id and loaded.attempts == 0
    assert problems and problems[0][1].startswith("ignored:")


def test_state_without_record_removed_at_start(spool):
    """A state file whose record is gone (finished message, crash mid-removal) is removed at start."""
    with open(spool.state_path("gone"), "wb") as f:
        f.write(b"{}")
    assert spool.prepare_blocking() == []
    assert listing(spool.queue_dir) == set()


# -- RFC 8689: REQUIRETLS and TLS-Required: No -------------------------------------------------


def test_requiretls_fields_round_trip():
    """requiretls and tls_required_no are part of the record and survive to_json/from_json."""
    for flags in ({"requiretls": True}, {"tls_required_no": True}, {"requiretls": True, "tls_required_no": True}):
        original = message(**flags)
        copy = QueuedMessage.from_json(original.to_json())
        assert copy == original
        assert (copy.requiretls, copy.tls_required_no) == (flags.get("requiretls", False),
                                                          flags.get("tls_required_no", False))


def test_old_record_without_requiretls_fields_loads():
    """A record written before RFC 8689 support (no such keys) loads with both flags off."""
    data = json.loads(message().to_json())
    del data["requiretls"], data["tls_required_no"]
    loaded = QueuedMessage.from_json(json.dumps(data).encode())
    assert loaded.requiretls is False and loaded.tls_required_no is False
    assert loaded == message()


def test_message_id_header_round_trips_and_old_records_load_without_it():
    """The Message-ID the log lines name is in the record; one written before it loads with none."""
    original = message(message_id_header="<m@example.org>")
    assert QueuedMessage.from_json(original.to_json()) == original
    data = json.loads(message().to_json())
    del data["message_id_header"]
    assert QueuedMessage.from_json(json.dumps(data).encode()) == message()


def test_from_envelope_lifts_requiretls_out_of_the_tls_facts():
    """The inbound session passes REQUIRETLS in the facts of receipt; the record keeps it as its own field."""
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    rcpts = (Recipient("b@example.com", parse_route("mx")),)
    facts = {"tls": "tls", "protocol": "TLSv1.3", "requiretls": True}
    m = QueuedMessage.from_envelope(Envelope("id1", "a@example.org", rcpts, when, tls=facts))
    assert m.requiretls is True
    assert m.tls == {"tls": "tls", "protocol": "TLSv1.3"}
    assert facts["requiretls"] is True  # the envelope's own facts are left alone
    plain = QueuedMessage.from_envelope(Envelope("id2", "a@example.org", rcpts, when, tls={"tls": "none"}))
    assert plain.requiretls is False and plain.tls_required_no is False


def written(spool: Spool, m: QueuedMessage, chunks: list[bytes]) -> None:
    """Write ``m`` in the given chunks through a SpoolFile."""
    target = spool.writer(m)[1]
    for chunk in chunks:
        target.append(chunk)
    target.finish()


def stored_record(spool: Spool, chunks: list[bytes], **overrides) -> dict:
    """Write a message in the given chunks through a SpoolFile; return its metadata as stored."""
    m = message(size=0, **overrides)
    written(spool, m, chunks)
    with open(spool.message_path(m.id), "rb") as f:
        raw = f.read()
    return json.loads(raw[m.size:-TRAILER_LENGTH])


@pytest.mark.parametrize("flag", [False, True])
def test_metadata_records_the_message_as_written(spool, flag):
    """The metadata holds the size as streamed and the tls_required_no flag the inbound side
    set (it scans the header section; tests/test_smtp_data.py), without re-reading the body."""
    chunks = [b"Received: x\r\nTLS-Req", b"uired: No\r\n\r\nbody\r\n"]
    record = stored_record(spool, chunks, tls_required_no=flag)
    assert record["tls_required_no"] is flag
    assert record["size"] == sum(map(len, chunks))


def test_header_scan_keeps_memory_flat():
    """A header line of 1 MiB fed in small pieces keeps the scanner's buffer bounded."""
    from tlsmta.smtp._data import HeaderScanner

    scanner = HeaderScanner()
    scanner.feed(b"X-Long: ")
    for _ in range(1024):
        scanner.feed(b"z" * 1024)
        assert len(scanner._partial) <= scanner.KEEP
    scanner.feed(b"\r\nTLS-Required: No\r\n\r\n")
    assert scanner.tls_required_no and scanner.done


# -- the last result as a value ------------------------------------------------------------


def test_last_result_is_a_reply_and_its_host_a_field_of_its_own(spool):
    """record() keeps the Reply and the host that gave it apart; both survive a save and a load,
    and the text people read still names the host."""
    m = message(attempts=0)
    spool.store_blocking(m, BODY)
    reply = Reply.of(451, "4.7.5", "certificate name does not match mx.example.com")
    m.recipients[0].record(PENDING, reply, "mx.example.com")
    spool.save_blocking(m)
    [loaded], problems = spool.load_blocking([m.id])
    rcpt = loaded.recipients[0]
    assert problems == []
    assert rcpt.last_reply == reply and rcpt.last_reply.enhanced == "4.7.5"
    assert rcpt.remote == "mx.example.com"
    assert rcpt.last_shown == "451 4.7.5 certificate name does not match mx.example.com (from mx.example.com)"
    assert loaded.recipients[3].last_reply is None and loaded.recipients[3].last_shown == ""


def test_state_keeps_the_format_older_versions_read(spool):
    """Per-recipient entries stay [status, last] pairs; the hosts are a separate key, which
    a version that predates them ignores."""
    m = message()
    m.recipients[0].record(PENDING, Reply.of(451, "4.4.1", "timeout"), "mx.example.com")
    state = json.loads(m.state_json())
    assert state["rcpts"][0] == [PENDING, "451 4.4.1 timeout"]
    assert all(len(entry) == 2 for entry in state["rcpts"])
    assert state["remotes"] == ["mx.example.com", "", "", ""]


def test_state_written_by_the_old_format_loads(spool):
    """A state file from before the host had its own field (the host inside ``last``)
    loads with the result text as it was."""
    m = message(attempts=0)
    spool.store_blocking(m, BODY)
    old = {"id": m.id, "attempts": 2, "next_attempt": 1_700_000_300.0,
           "rcpts": [[PENDING, "451 4.7.5 bad certificate (from mx.example.com)"], [DELIVERED, "250 2.0.0 ok"],
                     [BOUNCED, "550 5.1.1 no such user (from mx.local.test)"], [PENDING, ""]]}
    with open(spool.state_path(m.id), "w") as f:
        json.dump(old, f)
    [loaded], problems = spool.load_blocking([m.id])
    assert problems == [] and loaded.attempts == 2
    rcpt = loaded.recipients[0]
    assert (rcpt.last, rcpt.remote) == ("451 4.7.5 bad certificate (from mx.example.com)", "")
    assert rcpt.last_shown == "451 4.7.5 bad certificate (from mx.example.com)"
    assert rcpt.last_reply.code == 451 and rcpt.last_reply.enhanced == "4.7.5"


def test_state_with_hosts_for_other_recipients_is_refused(spool):
    """A remotes list that does not match the recipients is a torn record, like a short rcpts list."""
    m = message()
    state = json.loads(m.state_json())
    state["remotes"] = ["mx.example.com"]
    with pytest.raises(ValueError):
        m.apply_state(json.dumps(state).encode())


def test_old_record_without_remote_host_loads():
    """A received record from before the host field (no "f" key) loads with no host."""
    data = json.loads(message().to_json())
    for rcpt in data["rcpts"]:
        del rcpt["f"]
    loaded = QueuedMessage.from_json(json.dumps(data).encode())
    assert loaded == message()


# -- the pool of emptied files --------------------------------------------------------------


def test_a_finished_messages_files_are_reused_for_the_next(spool):
    """remove_blocking moves the files (message, state) into free/ as they are; new, shorter
    content is written into them (the same inodes, no inode created), exactly its own bytes."""
    first = message("m1")
    spool.store_blocking(first, BODY * 50)
    spool.save_blocking(first)
    paths = (spool.message_path("m1"), spool.state_path("m1"))
    inodes, sizes = {os.stat(p).st_ino for p in paths}, {os.path.getsize(p) for p in paths}
    spool.remove_blocking(first)
    assert listing(spool.queue_dir) == set()
    free = [os.path.join(spool.files.directory, n) for n in os.listdir(spool.files.directory)]
    assert {os.stat(p).st_ino for p in free} == inodes and {os.path.getsize(p) for p in free} == sizes

    spool.store_blocking(message("m2"), BODY)
    assert os.stat(spool.message_path("m2")).st_ino in inodes
    assert len(os.listdir(spool.files.directory)) == 1
    assert body_of(spool, "m2") == BODY
    assert os.stat(spool.message_path("m2")).st_mode & 0o777 == 0o600
    assert spool.load_blocking(["m2"])[0][0].id == "m2"


def test_a_large_finished_file_is_emptied_when_retired(spool):
    from tlsmta.storage._filepool import KEEP_BYTES

    big = message("big")
    spool.store_blocking(big, BODY * (KEEP_BYTES // len(BODY) + 1))
    spool.remove_blocking(big)
    [kept] = os.listdir(spool.files.directory)
    assert os.path.getsize(os.path.join(spool.files.directory, kept)) == 0
    spool.store_blocking(message("small"), BODY)
    assert body_of(spool, "small") == BODY


def test_the_pool_keeps_at_most_its_limit_and_a_start_empties_it(spool):
    spool.files.limit = 2
    for n in range(3):
        m = message(f"m{n}")
        spool.store_blocking(m, BODY)
        spool.save_blocking(m)
        spool.remove_blocking(m)
    assert len(os.listdir(spool.files.directory)) == 2  # the rest was unlinked
    assert spool.prepare_blocking() == []
    assert os.listdir(spool.files.directory) == []
    spool.store_blocking(message("m9"), BODY)  # created afresh
    assert body_of(spool, "m9") == BODY


def test_removing_from_a_spool_never_prepared_still_removes(tmp_path):
    """Offline tools remove messages from a spool whose free/ may not exist yet."""
    s = Spool(str(tmp_path / "spool"), UnusedDisk())
    s.ensure()
    m = message("m1")
    s.store_blocking(m, BODY)
    os.rmdir(s.files.directory)
    s.remove_blocking(m)
    assert listing(s.queue_dir) == set()


# -- bodies kept for the first delivery (storage._fresh) ------------------------------------


def test_a_small_body_is_kept_once_and_is_the_files_body(spool):
    """The copy a delivery takes instead of a read is the body as stored, and only one reader gets it."""
    m = message(size=0)
    written(spool, m, [BODY[:7], b"", BODY[7:]])
    assert spool.take_fresh_body(m) == body_of(spool, "m1") == BODY
    assert spool.take_fresh_body(m) is None  # a retry reads the file
    assert spool.fresh.held == 0


def test_a_body_larger_than_the_limit_is_read_from_disk(spool):
    big = message("big", size=0)
    written(spool, big, [b"x" * spool.fresh.max_body, b"y"])
    exact = message("exact", size=0)
    written(spool, exact, [b"x" * (spool.fresh.max_body - 1), b"y"])
    assert spool.take_fresh_body(big) is None
    assert spool.take_fresh_body(exact) == b"x" * (spool.fresh.max_body - 1) + b"y"


def test_bodies_past_the_budget_are_not_kept_and_a_removal_frees_room(spool):
    spool.fresh.budget = 2 * len(BODY)
    first, second, third = (message(i, size=0) for i in ("m1", "m2", "m3"))
    for m in (first, second, third):
        written(spool, m, [BODY])
    assert spool.fresh.held == 2 * len(BODY)
    assert spool.take_fresh_body(third) is None
    spool.remove_blocking(first)  # delivered elsewhere (a local route): its copy goes with it
    assert spool.fresh.held == len(BODY)
    fourth = message("m4", size=0)
    written(spool, fourth, [BODY])
    assert spool.take_fresh_body(fourth) == BODY


def test_a_held_message_or_a_discarded_one_keeps_nothing(spool):
    """A hold waits for an operator, maybe for days: its body is not kept in memory."""
    written(spool, message("held", size=0, held=True), [BODY])
    assert spool.fresh.held == 0
    m = message("m2", size=0)
    target = spool.writer(m)[1]
    target.append(BODY)
    target.finish()
    target.discard()  # as the writer does when the directory's fsync after finish fails
    assert spool.fresh.held == 0 and spool.take_fresh_body(m) is None
