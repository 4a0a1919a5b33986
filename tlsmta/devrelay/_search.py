"""Search, filters and automatic tags over the dev relay's list entries, sans I/O.

The index (:mod:`tlsmta.devrelay._capture`) keeps, per message, its list
entry and its :class:`Searchable` fields, lower-cased once when the message
is first seen, and a :class:`WordIndex` of the words in them: a free-text
search first takes the messages whose words contain the query's words (a
scan of the vocabulary, not of every body), then checks the query's text
as substrings of those few.
"""

from __future__ import annotations

import datetime
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from tlsmta.config import TAG_PATTERN

BODY_SEARCHED = 256 * 1024  # characters of body text a search looks through (a 10 MB log attached is not)
TAG = re.compile(TAG_PATTERN)  # as [http] tag_rules names them (config)


WORD = re.compile(r"\w+")


@attrs.frozen
class Searchable:
    """One message's fields as the filters compare them, lower-cased."""

    to: str  # envelope recipients, To and Cc
    sender: str  # envelope sender and From
    subject: str
    words: str  # what ``q`` looks through: all of the above and the body text


def searchable(entry: Mapping[str, Any], body: str) -> Searchable:
    envelope = entry["envelope"]
    to = "\n".join([*envelope["to"], entry["to"], entry["cc"]]).lower()
    sender = f"{envelope['from']}\n{entry['from']}".lower()
    subject = entry["subject"].lower()
    return Searchable(to, sender, subject, "\n".join([subject, sender, to, body[:BODY_SEARCHED].lower()]))


class WordIndex:
    """Which messages (by key) have which words, for a free-text query's candidates."""

    def __init__(self) -> None:
        self._postings: dict[str, set[str]] = defaultdict(set)

    def add(self, key: str, text: str) -> None:
        for word in set(WORD.findall(text)):
            self._postings[word].add(key)

    def remove(self, key: str, text: str) -> None:
        for word in set(WORD.findall(text)):
            keys = self._postings.get(word)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._postings[word]

    def candidates(self, query: str) -> set[str] | None:
        """Keys of the messages that may match ``query`` (each of its words is part of one of
        theirs); None when the query has no word characters (then every message may)."""
        found: set[str] | None = None
        for part in set(WORD.findall(query.lower())):
            keys: set[str] = set()
            for word, posting in self._postings.items():
                if part in word:
                    keys |= posting
            found = keys if found is None else found & keys
            if not found:
                return set()
        return found


def _plus_tags(recipients: Sequence[str]) -> set[str]:
    """``bob+signup@example.org`` is tagged ``signup``."""
    found = set()
    for address in recipients:
        local = address.rpartition("@")[0]
        if "+" in local:
            tag = local.partition("+")[2].lower()
            if TAG.fullmatch(tag):
                found.add(tag)
    return found


def auto_tags(entry: Mapping[str, Any], fields: Searchable, rules: Sequence[tuple[str, str, str]]) -> tuple[str, ...]:
    """The automatic tags: plus-addresses of the envelope recipients, and each
    ``(tag, field, text)`` rule whose field contains text (case-insensitive)."""
    tags = _plus_tags(entry["envelope"]["to"])
    by_name = {"subject": fields.subject, "from": fields.sender, "to": fields.to, "body": fields.words}
    tags.update(tag for tag, field, text in rules if text.lower() in by_name[field])
    return tuple(sorted(tags))


def parse_instant(text: str, end_of_day: bool = False) -> float:
    """``2026-12-03`` (that day's start, or its end) or an ISO 8601 time (UTC unless it
    says otherwise) as a POSIX timestamp; ValueError for anything else."""
    when = datetime.datetime.fromisoformat(text)
    if len(text) == 10 and end_of_day:
        when += datetime.timedelta(days=1)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def matches(entry: Mapping[str, Any], fields: Searchable, to: str | None = None, sender: str | None = None,
            subject: str | None = None, text: str | None = None, tag: str | None = None,
            since: float | None = None, until: float | None = None, unread: bool | None = None) -> bool:
    """Every given term holds: ``to``, ``sender``, ``subject`` are case-insensitive
    substrings of their fields; each space-separated part of ``text`` is somewhere in the
    subject, addresses or body; ``tag`` is one of the entry's tags; ``since`` <= received < ``until``."""

    def has(term: str | None, field: str) -> bool:
        return term is None or term.lower() in field

    return (
        has(to, fields.to)
        and has(sender, fields.sender)
        and has(subject, fields.subject)
        and (text is None or all(part in fields.words for part in text.lower().split()))
        and (tag is None or tag.lower() in entry.get("tags", ()))
        and (since is None or entry["received_ts"] >= since)
        and (until is None or entry["received_ts"] < until)
        and (unread is None or entry.get("read", False) is not unread)
    )
