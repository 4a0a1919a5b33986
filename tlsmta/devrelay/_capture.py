"""The dev relay's captured messages: one Maildir, indexed, read and pruned (blocking I/O).

Used from the web API's disk threads and directly by :mod:`tlsmta.testing`
(and by whatever else reads captured mail).  The public surface:

- :meth:`CapturedMail.page` / :meth:`CapturedMail.summaries`: list entries, newest first;
- :meth:`CapturedMail.as_received`: one message's bytes as the client sent them;
- :meth:`CapturedMail.raw`: the Maildir file itself (with the delivery's envelope lines);
- :meth:`CapturedMail.delete`, :meth:`CapturedMail.clear`, :meth:`CapturedMail.prune`;
- :meth:`CapturedMail.mark_read`, :meth:`CapturedMail.set_tags`.

A message's id is the queue id its SMTP reply gave (``250 ... queued as
ID``, from the receipt stored beside it), or its Maildir file name (without
the ``:2,`` info) when it has no receipt.  Ids are only ever matched against
the index built from the directory, so an id from a request never becomes a
path.  Read/unread is the Maildir ``S`` flag (``cur/NAME:2,S``), which mail
clients share; manual tags live in ``MAILDIR/tlsmta-tags.json``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from tlsmta.devrelay import _mailview as mailview
from tlsmta.devrelay import _search as search
from tlsmta.errors import TlsmtaError
from tlsmta.storage import ensure_maildir, read_receipt, receipt_path, remove_if_present

TAGS_FILE = "tlsmta-tags.json"


class MessageNotFound(TlsmtaError, KeyError):
    """No message with that id in the Maildir."""


@attrs.define
class _Indexed:
    """One message file as the index knows it."""

    name: str  # the Maildir file name without its info suffix
    path: str
    summary: dict[str, Any]
    fields: search.Searchable
    auto_tags: tuple[str, ...]


@attrs.frozen
class Changes:
    """What changed in the list: entries that came, ids that went, entries that changed
    (read, tags)."""

    added: list[dict[str, Any]]
    removed: list[str]
    updated: list[dict[str, Any]] = attrs.field(factory=list)


class CapturedMail:
    """The messages in one Maildir (``new/`` and ``cur/``), newest first.

    Each file is parsed once, when the index first sees it; later calls only
    list the two directories.  ``tag_rules`` are automatic tags (see
    :func:`search.auto_tags`).
    """

    def __init__(self, path: str, tag_rules: Sequence[tuple[str, str, str]] = ()):
        self.path = path
        self.tag_rules = tuple(tag_rules)
        self._by_name: dict[str, _Indexed] = {}
        self._by_id: dict[str, _Indexed] = {}
        self._newest_first: list[_Indexed] = []
        self._words = search.WordIndex()
        self._tags: dict[str, list[str]] | None = None
        self._lock = threading.RLock()  # the index is shared by the web's disk threads

    # -- the index ------------------------------------------------------------------------

    def _files(self) -> dict[str, tuple[str, bool]]:
        """name -> (path, seen) of every message file."""
        found = {}
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(os.path.join(self.path, sub)))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.name.startswith("."):
                    name, _, info = entry.name.partition(":")
                    found[name] = (entry.path, "S" in info.partition(",")[2])
        return found

    def _index_one(self, name: str, path: str) -> _Indexed | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
            stored_at = os.stat(path).st_mtime
        except FileNotFoundError:
            return None  # deleted meanwhile
        receipt = mailview.receipt_of(read_receipt(self.path, name))
        message_id = receipt.message_id if receipt.message_id and receipt.message_id not in self._by_id else name
        message = mailview.parse_for_index(data)
        summary = mailview.summary_of(message_id, message, data, stored_at, receipt)
        fields = search.searchable(summary, mailview.body_text(message))
        return _Indexed(name, path, summary, fields, search.auto_tags(summary, fields, self.tag_rules))

    def refresh(self) -> None:
        """Bring the index up to date with the directory (a listing; only new files are read)."""
        with self._lock:
            files = self._files()
            removed = [item for name, item in self._by_name.items() if name not in files]
            for gone in removed:
                del self._by_name[gone.name]
                self._by_id.pop(gone.summary["id"], None)
                self._words.remove(gone.name, gone.fields.words)
            added = False
            for name, (path, seen) in files.items():
                known = self._by_name.get(name)
                item = known if known is not None else self._index_one(name, path)
                if item is None:
                    continue  # deleted meanwhile
                if known is None:
                    self._by_name[name] = item
                    self._by_id[item.summary["id"]] = item
                    self._words.add(name, item.fields.words)
                    self._retag(item)
                    added = True
                if item.path != path or "read" not in item.summary:  # moved by a flag change
                    item.path = path
                    item.summary["read"] = seen
            if added or removed:
                self._newest_first = sorted(self._by_name.values(), key=_age, reverse=True)

    def _retag(self, item: _Indexed) -> None:
        item.summary["tags"] = sorted({*item.auto_tags, *self._manual_tags().get(item.summary["id"], ())})

    def _item(self, message_id: str) -> _Indexed:
        with self._lock:
            item = self._by_id.get(message_id)
            if item is None:
                self.refresh()
                item = self._by_id.get(message_id)
        if item is None:
            raise MessageNotFound(message_id)
        return item

    # -- listing --------------------------------------------------------------------------

    def page(self, start: int = 0, limit: int | None = None, **terms: Any) -> tuple[int, list[dict[str, Any]]]:
        """(how many match, entries ``start`` to ``start + limit`` of them), newest first;
        ``terms`` as :func:`search.matches` takes them."""
        self.refresh()
        with self._lock:
            if not any(value is not None for value in terms.values()):
                found = [item.summary for item in self._newest_first]
            else:
                candidates = self._words.candidates(terms["text"]) if terms.get("text") else None
                items = self._newest_first if candidates is None else [i for i in self._newest_first if i.name in candidates]
                found = [item.summary for item in items if search.matches(item.summary, item.fields, **terms)]
        end = None if limit is None else start + limit
        return len(found), found[start:end]

    def summaries(self) -> list[dict[str, Any]]:
        """Every message's list entry, newest first."""
        return self.page()[1]

    def summary(self, message_id: str) -> dict[str, Any]:
        return self._item(message_id).summary

    def changes_since(self, known: set[str]) -> Changes:
        """What came (oldest first) and went since the index held the ids ``known``."""
        self.refresh()
        with self._lock:
            added = [item.summary for item in reversed(self._newest_first) if item.summary["id"] not in known]
            removed = sorted(known - self._by_id.keys())
        return Changes(added, removed)

    def ids(self) -> set[str]:
        self.refresh()
        with self._lock:
            return set(self._by_id)

    # -- one message ------------------------------------------------------------------------

    def raw(self, message_id: str) -> tuple[bytes, float]:
        """The Maildir file's bytes (the delivery's Return-Path/Delivered-To lines first) and its mtime."""
        for moved in (False, True):
            if moved:  # renamed by a flag change (new/ to cur/, by a PATCH or a mail client) since indexed
                self.refresh()
            path = self._item(message_id).path
            try:
                with open(path, "rb") as f:
                    data = f.read()
                return data, os.stat(path).st_mtime
            except FileNotFoundError:
                continue
        raise MessageNotFound(message_id)

    def as_received(self, message_id: str) -> bytes:
        """The message as the client sent it (see :func:`mailview.as_received`)."""
        return mailview.as_received(self.raw(message_id)[0])

    def detail(self, message_id: str) -> dict[str, Any]:
        item = self._item(message_id)
        data, stored_at = self.raw(message_id)
        out = mailview.detail(message_id, data, stored_at, mailview.receipt_of(read_receipt(self.path, item.name)))
        out["read"], out["tags"] = item.summary["read"], item.summary["tags"]
        return out

    # -- changes ----------------------------------------------------------------------------

    def mark_read(self, message_id: str, read: bool = True) -> dict[str, Any]:
        """Set or clear the Maildir ``S`` flag (moving the file to ``cur/``); the new summary."""
        with self._lock:
            item = self._item(message_id)
            target = os.path.join(self.path, "cur", f"{item.name}:2,{'S' if read else ''}")
            if item.path != target:
                try:
                    os.rename(item.path, target)
                except FileNotFoundError:
                    raise MessageNotFound(message_id) from None
            self.refresh()
            return item.summary

    def set_tags(self, message_id: str, tags: Iterable[str]) -> dict[str, Any]:
        """Replace the message's manual tags; the new summary."""
        with self._lock:
            item = self._item(message_id)
            stored = self._manual_tags()
            stored[message_id] = sorted(set(tags))
            if not stored[message_id]:
                del stored[message_id]
            self._write_tags(stored)
            self._retag(item)
            return item.summary

    def delete(self, message_id: str) -> None:
        with self._lock:
            self.refresh()  # a mail client may have moved it (new/ to cur/) meanwhile
            item = self._item(message_id)
            if not remove_if_present(item.path):
                raise MessageNotFound(message_id)
            self._forget([item])

    def clear(self) -> int:
        """Delete every message (with its receipt); returns how many went."""
        with self._lock:
            self.refresh()
            gone = [item for item in self._by_name.values() if remove_if_present(item.path)]
            self._forget(gone)
            return len(gone)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` messages (0: keep all); the ids deleted."""
        if keep <= 0:
            return []
        with self._lock:
            self.refresh()
            gone = [item for item in self._newest_first[keep:] if remove_if_present(item.path)]
            self._forget(gone)
            return [item.summary["id"] for item in gone]

    def _forget(self, items: list[_Indexed]) -> None:
        for item in items:
            remove_if_present(receipt_path(self.path, item.name))
        tags = self._manual_tags()
        if any(item.summary["id"] in tags for item in items):
            self._write_tags({k: v for k, v in tags.items() if k not in {item.summary["id"] for item in items}})
        self.refresh()

    def _manual_tags(self) -> dict[str, list[str]]:
        if self._tags is None:
            try:
                with open(os.path.join(self.path, TAGS_FILE), "rb") as f:
                    loaded = json.load(f)
                self._tags = {k: list(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self._tags = {}
        return self._tags

    def _write_tags(self, tags: dict[str, list[str]]) -> None:
        path = os.path.join(self.path, TAGS_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(tags, f, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        self._tags = tags

    def ensure(self) -> None:
        ensure_maildir(self.path)


def _age(item: _Indexed) -> tuple[float, str]:
    return item.summary["received_ts"], item.summary["id"]


def captured_maildir(config: Any) -> str | None:
    """The Maildir the dev relay captures into and its page shows: ``[http] maildir``,
    else the global ``maildir:`` route (None: neither)."""
    if config.http.get("maildir"):
        return str(config.http["maildir"])
    route = config.global_options.get("route")
    return route.path if route is not None and route.kind == "maildir" else None
