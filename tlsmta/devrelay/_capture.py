"""The dev relay's captured messages: one Maildir, read and pruned (blocking I/O).

Used from a thread by the web API and directly by :mod:`tlsmta.testing`.
A message's id is its Maildir file name (without the ``:2,`` info suffix);
ids are only ever matched against names found in the directory, so an id
from a request never becomes a path.  Its facts of receipt are the record
stored beside it (:mod:`tlsmta.storage._receipts`), which goes with it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from tlsmta.devrelay import _mailview as mailview
from tlsmta.errors import TlsmtaError
from tlsmta.storage import ensure_maildir, read_receipt, receipt_path, remove_if_present


class MessageNotFound(TlsmtaError, KeyError):
    """No message with that id in the Maildir."""


class CapturedMail:
    """The messages in one Maildir (``new/`` and ``cur/``), newest first."""

    def __init__(self, path: str):
        self.path = path
        self._summaries: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._lock = threading.Lock()  # the cache is shared by the web threads

    def _entries(self) -> dict[str, str]:
        """id -> path of every message file."""
        found = {}
        for sub in ("new", "cur"):
            directory = os.path.join(self.path, sub)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith("."):
                    found[name.split(":", 1)[0]] = os.path.join(directory, name)
        return found

    def _path(self, message_id: str) -> str:
        path = self._entries().get(message_id)
        if path is None:
            raise MessageNotFound(message_id)
        return path

    def summaries(self) -> list[dict[str, Any]]:
        """Every message's list entry, newest first (parsed once per file, then cached)."""
        out = []
        seen = set()
        for key, path in self._entries().items():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # deleted meanwhile
            cache_key = (key, st.st_mtime_ns, st.st_size)
            seen.add(cache_key)
            with self._lock:
                entry = self._summaries.get(cache_key)
            if entry is None:
                try:
                    with open(path, "rb") as f:
                        entry = mailview.summary(key, f.read(), st.st_mtime, self._receipt(key))
                except FileNotFoundError:
                    continue
                with self._lock:
                    self._summaries[cache_key] = entry
            out.append(entry)
        with self._lock:
            for stale in set(self._summaries) - seen:
                del self._summaries[stale]
        out.sort(key=lambda e: (e["received_ts"], e["id"]), reverse=True)
        return out

    def search(self, **terms: str | None) -> list[dict[str, Any]]:
        """Entries matching every given term (see :func:`mailview.matches`)."""
        return [entry for entry in self.summaries() if mailview.matches(entry, **terms)]

    def raw(self, message_id: str) -> tuple[bytes, float]:
        """The stored bytes and the file's mtime."""
        path = self._path(message_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
            return data, os.stat(path).st_mtime
        except FileNotFoundError:
            raise MessageNotFound(message_id) from None

    def _receipt(self, message_id: str) -> mailview.Receipt:
        """How the message came in (all unknown when no receipt was stored with it).

        Only for an id found in the directory (see the module docstring)."""
        return mailview.receipt_of(read_receipt(self.path, message_id))

    def detail(self, message_id: str) -> dict[str, Any]:
        data, stored_at = self.raw(message_id)
        return mailview.detail(message_id, data, stored_at, self._receipt(message_id))

    def delete(self, message_id: str) -> None:
        try:
            os.unlink(self._path(message_id))
        except FileNotFoundError:
            raise MessageNotFound(message_id) from None
        remove_if_present(receipt_path(self.path, message_id))

    def clear(self) -> int:
        """Delete every message (with its receipt); returns how many went."""
        count = 0
        for message_id, path in self._entries().items():
            if remove_if_present(path):
                remove_if_present(receipt_path(self.path, message_id))
                count += 1
        return count

    def ensure(self) -> None:
        ensure_maildir(self.path)


def captured_maildir(config: Any) -> str | None:
    """The Maildir the dev relay captures into and its page shows: ``[http] maildir``,
    else the global ``maildir:`` route (None: neither)."""
    if config.http.get("maildir"):
        return str(config.http["maildir"])
    route = config.global_options.get("route")
    return route.path if route is not None and route.kind == "maildir" else None
