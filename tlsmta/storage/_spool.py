"""The durable spool: one file per message, and its progress beside it.

Layout under ``[spool] path``::

    tmp/ID.msg                 being written
    q/ID.msg                   the message as received (CRLF, Received: first), then its
                               envelope record (JSON, written once) and a trailer
    q/ID.state                 progress since (attempts, next attempt, per-recipient results)
    free/N                     files of finished messages, reused for new ones
                               (``filepool``: no inode created or deleted per message)
    q/ID.eml, q/ID.json        a message spooled by a version before the one-file layout:
                               its body and its envelope record (read, delivered and
                               removed as before; nothing new is written this way)

``ID.msg`` is the body's ``size`` bytes, the record, and the 25-byte trailer
``\n`` + the record's length in ten digits + `` tlsmta-spool\n``: the body
streams to disk as it arrives, and the record, known only at the end of
DATA, goes after it.  One file costs one fsync and one rename per message
where a body and a record cost two of each (and the disk threads' system
calls, each a trip for the GIL, were the relay's dearest part:
bench/profile-issue13.md).  A reader of the body reads ``size`` bytes
(:meth:`Spool.read_body_blocking`, :meth:`Spool.body_path`).

A message exists once ``q/ID.msg`` does.  Commit order: the file's fsync,
its rename into ``q/``, fsync ``q/`` (shared between concurrent messages);
only then is 250 sent.  The record is never rewritten, so nothing
acknowledged can be lost to a torn update.  ``ID.state`` is rewritten
after each attempt through ``tmp/`` and a rename without fsync: after a
crash it may be older than the truth (or unreadable, then ignored), which
costs at most a duplicate delivery, never a loss, and spares a disk flush
per deferral.  At start, ``q/*.msg`` (and a former version's ``q/*.json``)
is the queue; a state or body without its message was never acknowledged
and is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from tlsmta.config import Route, parse_route
from tlsmta.smtp import Reply, domain_of
from tlsmta.storage._diskio import DiskIO, fsync_directory
from tlsmta.storage._filepool import KEEP_BYTES, FilePool
from tlsmta.storage._filewriter import StreamingWriter, TempFile, write_all
from tlsmta.storage._fresh import FreshBodies
from tlsmta.storage._interfaces import NO_THROTTLE, Envelope, Throttle

FORMAT = 1  # the envelope record's version (the "v" key)
TRAILER_LENGTH = 25  # b"\n" + ten digits + b" tlsmta-spool\n"
_TRAILER_END = b" tlsmta-spool\n"

PENDING, DELIVERED, BOUNCED = "pending", "delivered", "bounced"


@attrs.define(slots=True)
class RecipientState:
    """Where one recipient's copy stands."""

    address: str
    # As resolved at arrival, kept for information (and for older versions, which need "r"):
    # each delivery attempt resolves route and binding from the running configuration.
    route: Route
    binding: str = "default"
    status: str = PENDING
    # The latest result as str(Reply), e.g. "451 4.7.5 certificate name does not match ...";
    # records written before ``remote`` existed end in " (from HOST)" instead.
    last: str = ""
    remote: str = ""  # the host that gave the latest result, if one did
    # The latest result is tlsmta's own verdict while talking to ``remote`` (TLS policy, a
    # timeout), not that host's reply: a DSN types it X-tlsmta, not smtp.
    ours: bool = False

    @property
    def domain(self) -> str:
        return domain_of(self.address)

    @property
    def last_reply(self) -> Reply | None:
        """The latest result as a value, None before the first attempt."""
        return Reply.parse(self.last) if self.last else None

    @property
    def last_shown(self) -> str:
        """The latest result as people read it (queue show, DSNs): ``550 5.1.1 no such user (from mx.example.com)``."""
        return self.last + (f" (from {self.remote})" if self.remote else "")

    def record(self, status: str, reply: Reply, remote: str = "", ours: bool = False) -> None:
        """An attempt's outcome for this recipient."""
        self.status, self.last, self.remote, self.ours = status, str(reply), remote, ours

    def to_json(self) -> dict[str, Any]:
        return {"a": self.address, "r": str(self.route), "b": self.binding, "s": self.status, "l": self.last,
                "f": self.remote}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecipientState:
        return cls(data["a"], parse_route(data["r"]), data["b"], data["s"], data["l"], data.get("f", ""))


def record_and_trailer(message: QueuedMessage) -> bytes:
    """What follows the body in ``ID.msg``: the envelope record and the trailer that finds it."""
    record = message.to_json()
    return b"%s\n%010d%s" % (record, len(record), _TRAILER_END)


def read_record(path: str) -> QueuedMessage:
    """The message in the ``ID.msg`` file at ``path``, from its record; ValueError if the
    file has no well-formed trailer or its body is not the record's ``size`` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        tail = os.pread(fd, min(end, 4096), max(0, end - 4096))
        trailer = tail[-TRAILER_LENGTH:]
        if len(trailer) < TRAILER_LENGTH or trailer[:1] != b"\n" or not trailer.endswith(_TRAILER_END) \
                or not trailer[1:11].isdigit():
            raise ValueError("no spool trailer: a torn or foreign file")
        length = int(trailer[1:11])
        body_size = end - TRAILER_LENGTH - length
        if body_size < 0:
            raise ValueError("the trailer names a record longer than the file")
        if length + TRAILER_LENGTH <= len(tail):
            record = tail[len(tail) - TRAILER_LENGTH - length:len(tail) - TRAILER_LENGTH]
        else:
            record = os.pread(fd, length, body_size)
    finally:
        os.close(fd)
    message = QueuedMessage.from_json(record)
    if message.size != body_size:
        raise ValueError(f"the body is {body_size} bytes, the record says {message.size}")
    return message


@attrs.define(slots=True)
class QueuedMessage:
    """A message in the spool, as the queue tracks it."""

    id: str
    sender: str
    recipients: list[RecipientState]
    received_at: float
    size: int = 0
    attempts: int = 0
    next_attempt: float = 0.0
    smtputf8: bool = False
    body_type: str = "7BIT"
    helo: str = ""
    peer: str = ""
    listener: str = ""
    tls: dict[str, Any] = attrs.field(factory=dict)
    esmtp: bool = True  # the client said EHLO (for the dev relay's receipt of a queued copy)
    authenticated: bool = False  # the client used AUTH
    # RFC 8689: MAIL FROM ... REQUIRETLS, and a "TLS-Required: No" header
    # field.  Both are recorded as received; REQUIRETLS wins when both are set.
    requiretls: bool = False
    tls_required_no: bool = False
    message_id_header: str = ""  # the Message-ID header field's <...>, for the log lines; "" when none
    held: bool = False  # `tlsmta queue hold`: never attempted until released (kept in ID.state)
    last_attempt: float = 0.0  # when the latest attempt ended (a DSN's Last-Attempt-Date); 0: never tried
    delay_warned: bool = False  # the delay warning DSN went out ([queue] delay_warning_time): never again
    # Never in the record: spooled by a version before the one-file layout (q/ID.eml and
    # q/ID.json); whether an ID.state may exist (removing one that never did costs two calls).
    two_files: bool = attrs.field(default=False, eq=False)
    state_saved: bool = attrs.field(default=False, eq=False)

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def is_bounce(self) -> bool:
        return self.sender == ""

    def to_json(self) -> bytes:
        data = {
            "v": FORMAT,
            "id": self.id,
            "sender": self.sender,
            "rcpts": [r.to_json() for r in self.recipients],
            "received_at": self.received_at,
            "size": self.size,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "smtputf8": self.smtputf8,
            "body": self.body_type,
            "helo": self.helo,
            "peer": self.peer,
            "listener": self.listener,
            "tls": self.tls,
            "esmtp": self.esmtp,
            "authenticated": self.authenticated,
            "requiretls": self.requiretls,
            "tls_required_no": self.tls_required_no,
            "message_id_header": self.message_id_header,
        }
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    def state_json(self) -> bytes:
        """Progress since receipt: what ``ID.state`` holds."""
        data = {
            "id": self.id,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "rcpts": [[r.status, r.last] for r in self.recipients],
            # A key of its own, not a third list item: a state file from this version
            # still loads in one that predates it (which ignores unknown keys).
            "remotes": [r.remote for r in self.recipients],
            "held": self.held,
            "ours": [r.ours for r in self.recipients],
            "last_attempt": self.last_attempt,
            "delay_warned": self.delay_warned,
        }
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    def apply_state(self, raw: bytes) -> None:
        """Overlay a state record (from ``state_json``) on the received record."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("id") != self.id or len(data["rcpts"]) != len(self.recipients):
            raise ValueError("state record does not belong to this message")
        statuses = [(str(status), str(last)) for status, last in data["rcpts"]]
        if any(status not in (PENDING, DELIVERED, BOUNCED) for status, _ in statuses):
            raise ValueError("unknown recipient status")
        # Absent from state written before the remote host had its own field.
        remotes = [str(remote) for remote in data.get("remotes", [""] * len(self.recipients))]
        if len(remotes) != len(self.recipients):
            raise ValueError("state record does not belong to this message")
        self.attempts = int(data["attempts"])
        self.next_attempt = float(data["next_attempt"])
        self.held = bool(data.get("held", False))
        # Absent from state written before DSNs told tlsmta's verdicts from remote replies.
        ours = [bool(flag) for flag in data.get("ours", [False] * len(self.recipients))]
        if len(ours) != len(self.recipients):
            raise ValueError("state record does not belong to this message")
        self.last_attempt = float(data.get("last_attempt", 0.0))
        self.delay_warned = bool(data.get("delay_warned", False))
        for rcpt, (status, last), remote, own in zip(self.recipients, statuses, remotes, ours):
            rcpt.status, rcpt.last, rcpt.remote, rcpt.ours = status, last, remote, own

    @classmethod
    def from_json(cls, raw: bytes) -> QueuedMessage:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("spool record is not a JSON object")
        if data.get("v") != FORMAT:
            raise ValueError(f"unknown spool format {data.get('v')!r}")
        return cls(
            id=data["id"],
            sender=data["sender"],
            recipients=[RecipientState.from_json(r) for r in data["rcpts"]],
            received_at=data["received_at"],
            size=data["size"],
            attempts=data["attempts"],
            next_attempt=data["next_attempt"],
            smtputf8=data["smtputf8"],
            body_type=data["body"],
            helo=data["helo"],
            peer=data["peer"],
            listener=data["listener"],
            tls=data["tls"],
            # Absent from records written before the dev relay kept receipts.
            esmtp=bool(data.get("esmtp", True)),
            authenticated=bool(data.get("authenticated", False)),
            # Absent from records written before RFC 8689 support.
            requiretls=bool(data.get("requiretls", False)),
            tls_required_no=bool(data.get("tls_required_no", False)),
            # Absent from records written before the log named the Message-ID.
            message_id_header=str(data.get("message_id_header", "")),
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> QueuedMessage:
        """The record of a message being received; the inbound session passes
        REQUIRETLS among the facts of receipt, and it gets its own field here."""
        tls = dict(envelope.tls)
        requiretls = bool(tls.pop("requiretls", False))
        return cls(
            id=envelope.message_id,
            sender=envelope.sender,
            recipients=[RecipientState(r.address, r.route, r.binding) for r in envelope.recipients],
            received_at=envelope.received_at.timestamp(),
            next_attempt=envelope.received_at.timestamp(),
            smtputf8=envelope.smtputf8,
            body_type=envelope.body_type,
            helo=envelope.helo,
            peer=envelope.peer,
            listener=envelope.listener,
            tls=tls,
            esmtp=envelope.esmtp,
            authenticated=envelope.authenticated,
            requiretls=requiretls,
            held=envelope.held,
        )


def _write_file(path: str, data: bytes, create: Callable[[str], int],
                sync: Callable[[int], None] = os.fsync) -> None:
    fd = create(path)
    try:
        write_all(fd, data)
        os.ftruncate(fd, len(data))  # a reused file (storage.filepool) may be longer
        sync(fd)
    finally:
        os.close(fd)


class SpoolFile:
    """The file of one new message (a FileTarget; disk thread).

    The record written at :meth:`finish` is the message's as it stands
    then (the inbound side sets ``tls_required_no`` before committing).
    """

    def __init__(self, spool: Spool, message: QueuedMessage):
        self.spool = spool
        self.message = message
        self.file = TempFile(os.path.join(spool.tmp_dir, message.id + ".msg"), create=spool.files.create, reused=True)
        self._pieces: list[bytes] | None = []  # the body while it is small enough to keep (storage._fresh)

    @property
    def directories(self) -> Sequence[str]:
        return (self.spool.queue_dir,)

    def append(self, data: bytes) -> None:
        self.file.append(data)
        self.message.size += len(data)
        if self._pieces is not None and data:
            if self.message.size <= self.spool.fresh.max_body:
                self._pieces.append(data)
            else:
                self._pieces = None

    def finish(self) -> None:
        self.seal(os.fsync)
        self.place(os.fsync)

    def seal(self, sync: Callable[[int], None]) -> None:
        self.file.append(record_and_trailer(self.message))
        self.file.sync_and_close(sync)
        if self.message.held:  # quarantined at receipt (a milter): the hold survives a restart
            _write_file(self._tmp_state_path, self.message.state_json(), self.spool.files.create, sync)

    @property
    def _tmp_state_path(self) -> str:
        return os.path.join(self.spool.tmp_dir, self.message.id + ".state")

    def place(self, sync: Callable[[int], None]) -> None:
        if self.message.held:
            os.rename(self._tmp_state_path, self.spool.state_path(self.message.id))
            self.message.state_saved = True
        os.rename(self.file.path, self.spool.message_path(self.message.id))
        if self._pieces is not None and not self.message.held:
            self.spool.fresh.keep(self.message.id, b"".join(self._pieces))

    def discard(self) -> None:
        self.spool.fresh.take(self.message.id)  # kept before a failed directory fsync
        self.file.discard()


def _queued_ids(names: Sequence[str]) -> list[str]:
    """The ids of the messages among the names in ``q/``: ``ID.msg``, or a former version's ``ID.json``."""
    ids = {n[:-4] for n in names if n.endswith(".msg")}
    return sorted(ids) + sorted(n[:-5] for n in names if n.endswith(".json") and n[:-5] not in ids)


class Spool:
    """The spool directory; blocking methods are meant for the disk thread."""

    def __init__(self, path: str, disk: DiskIO):
        self.path = path
        self.disk = disk
        self.tmp_dir = os.path.join(path, "tmp")
        self.queue_dir = os.path.join(path, "q")
        self.files = FilePool(os.path.join(path, "free"))
        self.fresh = FreshBodies()

    def ensure(self) -> None:
        for d in (self.tmp_dir, self.queue_dir, self.files.directory):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def message_path(self, message_id: str) -> str:
        return os.path.join(self.queue_dir, message_id + ".msg")

    def body_path(self, message: QueuedMessage) -> str:
        """The file whose first ``message.size`` bytes are the body (more may follow)."""
        if message.two_files:
            return os.path.join(self.queue_dir, message.id + ".eml")
        return self.message_path(message.id)

    def _two_file_paths(self, message_id: str) -> tuple[str, str]:
        """A former version's record and body."""
        return os.path.join(self.queue_dir, message_id + ".json"), os.path.join(self.queue_dir, message_id + ".eml")

    def writer(self, message: QueuedMessage, throttle: Throttle = NO_THROTTLE) -> tuple[StreamingWriter, SpoolFile]:
        """A writer for a new message; ``message.size`` is filled in as it is written."""
        target = SpoolFile(self, message)
        return StreamingWriter(self.disk, [target], throttle), target

    # -- blocking operations (disk thread) -----------------------------------------

    def store_blocking(self, message: QueuedMessage, data: bytes) -> None:
        """Write a whole message at once (DSNs); durable on return, directory included.
        ``message.size`` becomes the length of ``data``."""
        message.size = 0  # counted as written: the record's size is the body's length
        target = SpoolFile(self, message)
        try:
            target.append(data)
            target.finish()
        except BaseException:
            target.discard()
            raise
        fsync_directory(self.queue_dir)

    def state_path(self, message_id: str) -> str:
        return os.path.join(self.queue_dir, message_id + ".state")

    def save_blocking(self, message: QueuedMessage, durable: bool = False) -> None:
        """Record progress after a delivery attempt (best effort: see the module docstring);
        ``durable`` for an operator's hold or release, which a crash must not undo."""
        tmp = os.path.join(self.tmp_dir, message.id + ".state")
        # 0600 as every spool file: a retired state file may become a message's (filepool).
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(message.state_json())
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, self.state_path(message.id))
        message.state_saved = True
        if durable:
            fsync_directory(self.queue_dir)

    def take_fresh_body(self, message: QueuedMessage) -> bytes | None:
        """The body as this process received it a moment ago, if it was kept (storage._fresh);
        given up, so the next reader reads the file."""
        return self.fresh.take(message.id)

    def read_body_blocking(self, message: QueuedMessage, limit: int | None = None) -> bytes:
        """The body (its first ``limit`` bytes, if given)."""
        size = message.size if limit is None else min(limit, message.size)
        with open(self.body_path(message), "rb") as f:
            return f.read(size)

    def remove(self, message: QueuedMessage) -> Deferred[None]:
        """Forget a delivered message (:meth:`remove_blocking`) as quick work, unless its file is
        large enough to be emptied when retired: that takes milliseconds (17 ms for 50 MiB),
        too long for the reactor thread, so it stays a disk job."""
        run = self.disk.run_quick if message.size <= KEEP_BYTES else self.disk.run
        return run(self.remove_blocking, message)

    def remove_blocking(self, message: QueuedMessage) -> None:
        """Forget a finished message: the message first, so a crash leaves a state the scan removes."""
        self.fresh.take(message.id)
        state = (self.state_path(message.id),) if message.state_saved else ()
        if message.two_files:
            record, body = self._two_file_paths(message.id)
            paths: tuple[str, ...] = (record, *state, body)
        else:
            paths = (self.message_path(message.id), *state)
        for path in paths:
            self.files.retire(path)

    def list_blocking(self) -> list[str]:
        """The ids of the queued messages (either layout)."""
        return _queued_ids(os.listdir(self.queue_dir))

    def prepare_blocking(self) -> list[str]:
        """At start, before any listener accepts mail: create the directories,
        clear tmp/ (nothing there was acknowledged), remove states and bodies
        without their message (never acknowledged either), and list the queued ids."""
        self.ensure()
        self.files.clear()
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            if os.path.isfile(path):
                os.unlink(path)
        names = os.listdir(self.queue_dir)  # once: a queue at start may be 100,000 messages
        queued = _queued_ids(names)
        known = set(queued)
        for name in names:
            stem, dot, ext = name.rpartition(".")
            if dot and ext in ("eml", "state") and stem not in known:
                os.unlink(os.path.join(self.queue_dir, name))
        return queued

    def load_blocking(self, message_ids: Sequence[str]) -> tuple[list[QueuedMessage], list[tuple[str, str]]]:
        """Read the messages' records; unreadable ones are moved to corrupt/ and reported."""
        messages, problems = [], []
        for message_id in message_ids:
            path = self.message_path(message_id)
            try:
                try:
                    message = read_record(path)
                except FileNotFoundError:
                    path = self._two_file_paths(message_id)[0]
                    with open(path, "rb") as f:
                        message = QueuedMessage.from_json(f.read())
                    message.two_files = True
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                problems.append((path, str(e)))
                self._quarantine(message_id)
                continue
            try:
                with open(self.state_path(message_id), "rb") as f:
                    message.state_saved = True
                    message.apply_state(f.read())
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
                # Torn by a crash: start again from the received state (a duplicate at worst).
                problems.append((self.state_path(message_id), f"ignored: {e}"))
            messages.append(message)
        return messages, problems

    def _quarantine(self, message_id: str) -> None:
        corrupt = os.path.join(self.path, "corrupt")
        os.makedirs(corrupt, mode=0o700, exist_ok=True)
        for path in (self.message_path(message_id), *self._two_file_paths(message_id), self.state_path(message_id)):
            if os.path.exists(path):
                os.replace(path, os.path.join(corrupt, os.path.basename(path)))
