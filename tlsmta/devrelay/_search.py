"""Search, filters and automatic tags over the dev relay's list entries, sans I/O.

The index (:mod:`tlsmta.devrelay._capture`) keeps, per message, its list
entry and one lower-cased string of what a free-text search looks through
(:func:`search_text`), made once when the message is first seen: a search
is then substring tests over strings in memory, no file read or parse.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

BODY_SEARCHED = 256 * 1024  # characters of body text a search looks through (a 10 MB log attached is not)
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE_FIELDS = ("subject", "from", "to", "body")


def search_text(entry: Mapping[str, Any], body: str) -> str:
    """What ``q`` matches in: subject, From/To/Cc, the envelope and the body text."""
    envelope = entry["envelope"]
    fields = [entry["subject"], entry["from"], entry["to"], entry["cc"], envelope["from"], *envelope["to"],
              body[:BODY_SEARCHED]]
    return "\n".join(fields).lower()


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


def auto_tags(entry: Mapping[str, Any], words: str, rules: Sequence[tuple[str, str, str]]) -> tuple[str, ...]:
    """The automatic tags: plus-addresses of the envelope recipients, and each
    ``(tag, field, text)`` rule whose field contains text (case-insensitive)."""
    tags = _plus_tags(entry["envelope"]["to"])
    fields = {
        "subject": entry["subject"].lower(),
        "from": f"{entry['from']}\n{entry['envelope']['from']}".lower(),
        "to": "\n".join([entry["to"], entry["cc"], *entry["envelope"]["to"]]).lower(),
        "body": words,
    }
    tags.update(tag for tag, field, text in rules if text.lower() in fields[field])
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


def matches(entry: Mapping[str, Any], words: str, to: str | None = None, sender: str | None = None,
            subject: str | None = None, text: str | None = None, tag: str | None = None,
            since: float | None = None, until: float | None = None, unread: bool | None = None) -> bool:
    """Every given term holds: ``to``, ``sender``, ``subject`` are case-insensitive
    substrings of their fields; each word of ``text`` is somewhere in :func:`search_text`;
    ``tag`` is one of the entry's tags; ``since`` <= received < ``until``."""

    def has(term: str | None, *fields: str) -> bool:
        return term is None or any(term.lower() in field.lower() for field in fields)

    envelope = entry["envelope"]
    return (
        has(to, *envelope["to"], entry["to"], entry["cc"])
        and has(sender, envelope["from"], entry["from"])
        and has(subject, entry["subject"])
        and (text is None or all(word in words for word in text.lower().split()))
        and (tag is None or tag.lower() in entry.get("tags", ()))
        and (since is None or entry["received_ts"] >= since)
        and (until is None or entry["received_ts"] < until)
        and (unread is None or entry.get("read", False) is not unread)
    )
