"""TLS-RPT reports received, kept: one durable file per report, and the inbox that takes them.

``DIR/YYYY-MM-DD/<hash of organization and report-id>.json`` (the UTC day
the report covers) holds ``{"received_at", "source", "report"}``; a report
sent twice replaces itself, so it is counted once.  What does not parse is
kept too, under ``DIR/malformed/``, with its reason and the raw bytes: a
report by mail was answered 250 and must not be lost (DESIGN.md).  DIR is
``state_dir/tlsrpt-received``.

:class:`TLSRPTInbox` takes a mail (the ``tlsrpt`` route) or an HTTPS POST
body, parses it (:mod:`tlsmta.reporting._tlsrpt_inbox`), stores it on the
disk thread and emits ``tlsrpt_received`` (or ``tlsrpt_malformed``) and the
quiet ``tlsrpt_reported_failure`` events the metrics count.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from collections.abc import Iterator

import attrs
from twisted.internet.interfaces import IReactorTime

from tlsmta.reporting._events import EventBus
from tlsmta.reporting._tlsrpt_inbox import (
    MAX_REPORT_BYTES,
    Report,
    ReportError,
    decode_report,
    parse_report,
    reports_in_mail,
)
from tlsmta.storage import DiskIO, write_durably

MALFORMED = "malformed"


def received_directory(state_dir: str) -> str:
    return os.path.join(state_dir, "tlsrpt-received")


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


class ReceivedReports:
    """The files under one directory (blocking methods: call them on the disk thread or from the CLI)."""

    def __init__(self, directory: str):
        self.directory = directory

    def store(self, report: Report, data: bytes, source: str, now: float) -> str:
        """Keep ``report`` (``data``: its JSON as received); returns the file's path."""
        name = hashlib.sha256(f"{report.organization}\0{report.report_id}".encode()).hexdigest()[:32]
        path = os.path.join(self.directory, report.day.isoformat(), name + ".json")
        record = {"received_at": _iso(now), "source": source, "report": json.loads(data)}
        write_durably(path, json.dumps(record, sort_keys=True).encode("utf-8"))
        return path

    def store_malformed(self, raw: bytes, reason: str, source: str, now: float) -> str:
        """Keep what did not parse, with why (named by its digest: the same bytes twice are one file)."""
        name = f"{_iso(now)[:10]}-{hashlib.sha256(raw).hexdigest()[:32]}.json"
        record = {"received_at": _iso(now), "source": source, "reason": reason, "raw_base64": base64.b64encode(raw).decode()}
        path = os.path.join(self.directory, MALFORMED, name)
        write_durably(path, json.dumps(record, sort_keys=True).encode("utf-8"))
        return path

    def reports(self) -> Iterator[Report]:
        """Every stored report, in file order (days ascending)."""
        try:
            days = sorted(d for d in os.listdir(self.directory) if d != MALFORMED)
        except FileNotFoundError:
            return
        for day in days:
            folder = os.path.join(self.directory, day)
            for name in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
                with open(os.path.join(folder, name), "rb") as f:
                    record = json.load(f)
                yield parse_report(json.dumps(record["report"]).encode("utf-8"))

    def malformed_count(self) -> int:
        try:
            return sum(1 for n in os.listdir(os.path.join(self.directory, MALFORMED)) if n.endswith(".json"))
        except FileNotFoundError:
            return 0


@attrs.frozen
class Received:
    """What the inbox made of one submission: the reports stored, or why it was not one."""

    reports: tuple[Report, ...] = ()
    problem: str | None = None


def _mail_reports(message: bytes) -> list[tuple[Report, bytes]]:
    # One budget for all the parts: a mail of many small gzip bombs must not gunzip to gigabytes.
    budget, found = MAX_REPORT_BYTES, []
    for content_type, body in reports_in_mail(message):
        data = decode_report(content_type, body, budget)
        budget -= len(data)
        found.append((parse_report(data), data))
    return found


def _posted_report(content_type: str, body: bytes) -> list[tuple[Report, bytes]]:
    data = decode_report(content_type, body)
    return [(parse_report(data), data)]


class TLSRPTInbox:
    """Parses, stores and announces received reports; storing runs on ``disk``."""

    def __init__(self, store: ReceivedReports, disk: DiskIO, events: EventBus, clock: IReactorTime):
        self.store = store
        self.disk = disk
        self.events = events
        self.clock = clock

    async def receive_mail(self, message: bytes, source: str) -> Received:
        """A report by mail: every report part is stored; a mail with none, or a bad one, is kept as malformed."""
        try:
            # Gunzipping up to MAX_REPORT_BYTES is work for the disk thread, not the reactor.
            parsed = await self.disk.run(_mail_reports, message)
        except ReportError as e:
            return await self._malformed(message, str(e), source)
        return await self._stored(parsed, source)

    async def receive_post(self, content_type: str, body: bytes, source: str) -> Received:
        """A report POSTed over HTTPS (RFC 8460 5.2); a bad one is kept as malformed and refused."""
        try:
            parsed = await self.disk.run(_posted_report, content_type, body)
        except ReportError as e:
            return await self._malformed(body, str(e), source)
        return await self._stored(parsed, source)

    async def _stored(self, parsed: list[tuple[Report, bytes]], source: str) -> Received:
        now = self.clock.seconds()
        for report, data in parsed:
            await self.disk.run(self.store.store, report, data, source, now)
            self._announce(report, source)
        return Received(reports=tuple(report for report, _ in parsed))

    async def _malformed(self, raw: bytes, reason: str, source: str) -> Received:
        path = await self.disk.run(self.store.store_malformed, raw, reason, source, self.clock.seconds())
        self.events.emit("tlsrpt_malformed", source=source, reason=reason, kept=path)
        return Received(problem=reason)

    def _announce(self, report: Report, source: str) -> None:
        self.events.emit(
            "tlsrpt_received", source=source, organization=report.organization, report_id=report.report_id,
            day=report.day.isoformat(), domains=",".join(report.domains),
            successful=sum(p.successful for p in report.policies), failed=sum(p.failed for p in report.policies),
        )
        for policy in report.policies:
            for failure in policy.failures:
                self.events.emit("tlsrpt_reported_failure", quiet=True, domain=policy.policy_domain,
                                 result_type=failure.result_type, mx=failure.mx_host, sessions=failure.failed_sessions)
