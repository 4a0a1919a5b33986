"""What became of each Release: queued, deferred, delivered or bounced, per captured message.

The web API records a release when the queue takes it, then follows the
queue's ``delivery`` events (one per recipient, ``msgid`` being the
release's queue id) and says what changed.  Kept in memory, for the page:
a restart forgets the states (the queue itself still delivers and logs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

QUEUED, DEFERRED, DELIVERED, BOUNCED = "queued", "deferred", "delivered", "bounced"


@attrs.define
class Release:
    """One release of a captured message to a smarthost."""

    queued_as: str
    smarthost: str  # the route, smtp:HOST[:PORT]
    recipients: dict[str, str]  # address -> state
    last: str | None = None  # the last reply or reason, e.g. "451 4.7.5 ..."
    tls: str | None = None  # "tls" or "none" on the last attempt

    @property
    def state(self) -> str:
        """delivered when every recipient is; deferred while one waits for a retry; bounced
        when none waits and one bounced; queued before the first attempt."""
        states = set(self.recipients.values())
        if states == {DELIVERED}:
            return DELIVERED
        if DEFERRED in states:
            return DEFERRED
        if QUEUED in states:
            return QUEUED
        return BOUNCED

    def as_json(self) -> dict[str, Any]:
        return {"queued_as": self.queued_as, "smarthost": self.smarthost, "state": self.state,
                "recipients": dict(self.recipients), "last": self.last, "tls": self.tls}


class ReleaseLog:
    """The releases of each captured message (by its id), fed by the queue's events."""

    def __init__(self) -> None:
        self._by_message: dict[str, list[Release]] = {}
        self._by_queue_id: dict[str, tuple[str, Release]] = {}

    def add(self, message_id: str, queued_as: str, smarthost: str, recipients: list[str]) -> None:
        release = Release(queued_as, smarthost, dict.fromkeys(recipients, QUEUED))
        self._by_message.setdefault(message_id, []).append(release)
        self._by_queue_id[queued_as] = (message_id, release)

    def of(self, message_id: str) -> list[dict[str, Any]]:
        return [release.as_json() for release in self._by_message.get(message_id, [])]

    def forget(self, message_id: str) -> None:
        for release in self._by_message.pop(message_id, []):
            self._by_queue_id.pop(release.queued_as, None)

    def on_delivery(self, fields: Mapping[str, Any]) -> str | None:
        """One ``delivery`` event; the captured message's id when it was one of its releases."""
        found = self._by_queue_id.get(str(fields.get("msgid")))
        if found is None:
            return None
        message_id, release = found
        address = str(fields.get("to", "")).removeprefix("<").removesuffix(">")
        if address in release.recipients and fields.get("result") in (DEFERRED, DELIVERED, BOUNCED):
            release.recipients[address] = str(fields["result"])
        reply = " ".join(str(fields[k]) for k in ("code", "text") if fields.get(k) not in (None, ""))
        release.last = reply or release.last
        release.tls = fields.get("tls") or release.tls
        return message_id
