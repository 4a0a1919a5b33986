"""SMTP TLS Reporting (RFC 8460): what was seen, the daily report, and its email.

:class:`TLSRPTStore` records one line per outbound TLS session outcome in a
per-day file and sums a day up; :func:`build_report` makes the section 4
JSON; :func:`report_email` wraps it as the section 5.3 multipart/report;
:func:`parse_tlsrpt_txt` reads the ``_smtp._tls`` TXT record (section 3).
Sending, scheduling and the DNS lookup belong to the caller.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import gzip
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from typing import Any

import attrs

from tlsmta.storage import LineAppender, Run, remove_if_present

# RFC 8460's vocabulary lives beside the TLS verdicts that produce it; named here too.
from tlsmta.tls import (  # noqa: F401
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_NOT_TRUSTED,
    DANE_REQUIRED,
    DNSSEC_INVALID,
    POLICY_NONE,
    POLICY_STS,
    POLICY_TLSA,
    POLICY_TYPES,
    RESULT_TYPES,
    STARTTLS_NOT_SUPPORTED,
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
    TLSA_INVALID,
    VALIDATION_FAILURE,
)

TXT_PREFIX = "_smtp._tls."  # RFC 8460 3: the record lives at _smtp._tls.DOMAIN


# -- recording and aggregating --------------------------------------------------------------


@attrs.frozen
class FailureKey:
    """What failure-details are grouped by: result type, MX and the two IPs."""

    result_type: str
    mx_host: str | None
    sending_ip: str | None
    receiving_ip: str | None


@attrs.define
class PolicyStats:
    """One policy's day: session counts and failure details (count, first reason)."""

    policy_type: str
    policy_strings: tuple[str, ...]
    mx_hosts: tuple[str, ...]
    successes: int = 0
    failures: int = 0
    details: dict[FailureKey, list[Any]] = attrs.field(factory=dict)


def _policy_mx_hosts(policy_type: str, policy_strings: Sequence[str], mx_host: str | None) -> tuple[str, ...]:
    """RFC 8460 4.4 mx-host: the policy's ``mx:`` patterns for sts; the MX itself for tlsa."""
    if policy_type == POLICY_STS:
        return tuple(line.split(":", 1)[1].strip() for line in policy_strings if line.split(":", 1)[0].strip() == "mx")
    if policy_type == POLICY_TLSA and mx_host:
        return (mx_host,)
    return ()


class TLSRPTStore:
    """Per-day JSON-lines files of session outcomes, and which reports were sent.

    ``DIR/YYYY-MM-DD.jsonl`` holds the outcomes (appended, not fsynced: a
    report that misses the last few sessions before a crash is acceptable);
    ``DIR/YYYY-MM-DD.sent`` lists the domains whose report for that day went
    out (fsynced: a day is reported once, even across restarts).

    With ``run`` (``DiskIO.run``) the outcomes are appended by the disk
    thread, in recording order; the readers below first write what is still
    pending, so they see every outcome recorded before they were called.
    """

    def __init__(self, directory: str, run: Run | None = None):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._appender = LineAppender(run)

    def _path(self, day: datetime.date, suffix: str) -> str:
        return os.path.join(self.directory, f"{day.isoformat()}.{suffix}")

    def record(
        self,
        domain: str,
        day: datetime.date,
        policy_type: str,
        policy_strings: Sequence[str],
        mx_host: str | None,
        success: bool,
        result_type: str | None = None,
        sending_ip: str | None = None,
        receiving_ip: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Note one session's outcome (cheap: one line handed to the appender, no fsync)."""
        if policy_type not in POLICY_TYPES:
            raise ValueError(f"unknown TLSRPT policy type {policy_type!r}")
        if not success and result_type not in RESULT_TYPES:
            raise ValueError(f"unknown TLSRPT result type {result_type!r}")
        line = {
            "domain": domain.lower().rstrip("."),
            "policy_type": policy_type,
            "policy_strings": list(policy_strings),
            "mx_host": mx_host,
            "success": success,
        }
        if not success:
            line.update(result_type=result_type, sending_ip=sending_ip, receiving_ip=receiving_ip, reason=reason)
        self._appender.append(self._path(day, "jsonl"), json.dumps(line, separators=(",", ":")) + "\n")

    def aggregate(self, day: datetime.date) -> dict[str, list[PolicyStats]]:
        """The day's sessions summed per domain and policy.

        Unreadable lines (a line cut short by a crash) are skipped.
        """
        self._appender.write_pending()
        out: dict[str, dict[tuple[Any, ...], PolicyStats]] = {}
        try:
            f = open(self._path(day, "jsonl"), encoding="utf-8")
        except FileNotFoundError:
            return {}
        with f:
            for text in f:
                try:
                    line = json.loads(text)
                    domain, policy_type = line["domain"], line["policy_type"]
                    strings = tuple(line["policy_strings"])
                except (ValueError, KeyError, TypeError):
                    continue
                mx_hosts = _policy_mx_hosts(policy_type, strings, line.get("mx_host"))
                stats = out.setdefault(domain, {}).setdefault(
                    (policy_type, strings, mx_hosts), PolicyStats(policy_type, strings, mx_hosts)
                )
                if line.get("success"):
                    stats.successes += 1
                    continue
                stats.failures += 1
                key = FailureKey(line.get("result_type") or VALIDATION_FAILURE, line.get("mx_host"),
                                 line.get("sending_ip"), line.get("receiving_ip"))
                entry = stats.details.setdefault(key, [0, line.get("reason")])
                entry[0] += 1
        return {domain: list(policies.values()) for domain, policies in out.items()}

    def days(self) -> list[datetime.date]:
        """Days with recorded outcomes, oldest first."""
        self._appender.write_pending()
        found = []
        for name in os.listdir(self.directory):
            if name.endswith(".jsonl"):
                try:
                    found.append(datetime.date.fromisoformat(name[: -len(".jsonl")]))
                except ValueError:
                    continue
        return sorted(found)

    def sent(self, day: datetime.date) -> set[str]:
        """Domains whose report for ``day`` has been sent."""
        try:
            with open(self._path(day, "sent"), encoding="utf-8") as f:
                return {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            return set()

    def days_pending(self, today: datetime.date | None = None) -> list[datetime.date]:
        """Complete days (before ``today``, UTC) with a domain not yet reported."""
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        return [day for day in self.days() if day < today and set(self.aggregate(day)) - self.sent(day)]

    def mark_sent(self, day: datetime.date, domain: str) -> None:
        """Remember that ``domain``'s report for ``day`` went out (durably)."""
        fd = os.open(self._path(day, "sent"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (domain.lower().rstrip(".") + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune(self, keep_days: int, today: datetime.date | None = None) -> list[datetime.date]:
        """Delete the files of days more than ``keep_days`` before ``today``; returns those days."""
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        cutoff = today - datetime.timedelta(days=keep_days)
        removed = [day for day in self.days() if day < cutoff]
        for day in removed:
            for suffix in ("jsonl", "sent"):
                remove_if_present(self._path(day, suffix))
        return removed


# -- the report (RFC 8460 4) ------------------------------------------------------------------


def day_range(day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    """The UTC start and end (last second) of a report day."""
    start = datetime.datetime.combine(day, datetime.time(0, 0, 0), datetime.timezone.utc)
    return start, start + datetime.timedelta(days=1, seconds=-1)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _policy_json(domain: str, stats: PolicyStats) -> dict[str, Any]:
    policy: dict[str, Any] = {"policy-type": stats.policy_type}
    if stats.policy_strings:
        policy["policy-string"] = list(stats.policy_strings)
    policy["policy-domain"] = domain
    if stats.mx_hosts:
        policy["mx-host"] = list(stats.mx_hosts)
    out: dict[str, Any] = {
        "policy": policy,
        "summary": {
            "total-successful-session-count": stats.successes,
            "total-failure-session-count": stats.failures,
        },
    }
    details = []
    for key, (count, reason) in sorted(stats.details.items(), key=lambda item: -item[1][0]):
        detail: dict[str, Any] = {"result-type": key.result_type}
        if key.sending_ip:
            detail["sending-mta-ip"] = key.sending_ip
        if key.mx_host:
            detail["receiving-mx-hostname"] = key.mx_host
        if key.receiving_ip:
            detail["receiving-ip"] = key.receiving_ip
        detail["failed-session-count"] = count
        if reason:
            detail["failure-reason-code"] = reason
        details.append(detail)
    if details:
        out["failure-details"] = details
    return out


def build_report(
    organization_name: str,
    contact_info: str,
    domain: str,
    day: datetime.date,
    aggregate: Mapping[str, Sequence[PolicyStats]] | Sequence[PolicyStats],
    report_id: str,
) -> dict[str, Any]:
    """The RFC 8460 section 4 report for ``domain`` on ``day``.

    ``aggregate`` is :meth:`TLSRPTStore.aggregate`'s result (or just the
    domain's list of policies).
    """
    policies = aggregate.get(domain, []) if isinstance(aggregate, Mapping) else aggregate
    start, end = day_range(day)
    return {
        "organization-name": organization_name,
        "date-range": {"start-datetime": _rfc3339(start), "end-datetime": _rfc3339(end)},
        "contact-info": contact_info,
        "report-id": report_id,
        "policies": [_policy_json(domain, stats) for stats in policies],
    }


# -- the TXT record (RFC 8460 3) -------------------------------------------------------------

_VERSION = re.compile(r"v=TLSRPTv1[ \t]*;")


def parse_tlsrpt_txt(txt_records: Iterable[str]) -> list[str]:
    """The mailto: and https: reporting URIs of a domain's ``_smtp._tls`` TXT records.

    RFC 8460 3: records not starting ``v=TLSRPTv1;`` are ignored, and
    unless exactly one is left the domain does not take reports ([]).
    Other URI schemes and unknown fields are ignored.
    """
    candidates = [t for t in txt_records if _VERSION.match(t)]
    if len(candidates) != 1:
        return []
    uris: list[str] = []
    for field in candidates[0].split(";")[1:]:
        name, sep, value = field.strip(" \t").partition("=")
        if not sep or name != "rua":
            continue
        for uri in value.split(","):
            uri = uri.strip(" \t")
            scheme = uri.split(":", 1)[0].lower()
            if (scheme == "mailto" and mailto_address(uri)) or (scheme == "https" and len(uri) > len("https://")):
                uris.append(uri)
    return uris


def mailto_address(uri: str) -> str | None:
    """The address of a ``mailto:`` URI (percent-decoded, without ``?...``), or None."""
    if not uri.lower().startswith("mailto:"):
        return None
    address = urllib.parse.unquote(uri[len("mailto:"):].split("?", 1)[0]).strip()
    return address if "@" in address and not any(c in address for c in " ,<>\r\n") else None


# -- the email (RFC 8460 5) ------------------------------------------------------------------


def report_filename(submitter: str, domain: str, day: datetime.date, report_id: str) -> str:
    """RFC 8460 5.1: ``submitter!policy-domain!begin!end!unique-id.json.gz`` (epoch seconds)."""
    start, end = day_range(day)
    unique = re.sub(r"[^A-Za-z0-9]", "", report_id)
    tail = f"!{unique}" if unique else ""
    return f"{submitter}!{domain}!{int(start.timestamp())}!{int(end.timestamp())}{tail}.json.gz"


def report_email(
    report: Mapping[str, Any],
    sender: str,
    rua_address: str,
    domain: str,
    submitter: str,
    report_id: str,
    now: datetime.datetime,
) -> bytes:
    """The report as an RFC 8460 5.3 message, CRLF line endings, ready to spool.

    A text/plain part for people and the gzipped JSON as
    application/tlsrpt+gzip inside multipart/report; report-type="tlsrpt".
    """
    day = datetime.datetime.strptime(report["date-range"]["start-datetime"], "%Y-%m-%dT%H:%M:%SZ").date()
    policies = report.get("policies", [])
    ok = sum(p["summary"]["total-successful-session-count"] for p in policies)
    failed = sum(p["summary"]["total-failure-session-count"] for p in policies)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = rua_address
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid(domain=submitter)
    msg["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain},\n"
        f"covering {day.isoformat()} (UTC): {ok} successful and {failed} failed TLS sessions.\n"
        f"The report is attached as gzipped JSON.\n"
    )
    body = gzip.compress(json.dumps(report, indent=1).encode("utf-8"), mtime=0)
    msg.add_attachment(body, maintype="application", subtype="tlsrpt+gzip",
                       filename=report_filename(submitter, domain, day, report_id))
    for part in msg.iter_parts():
        del part["MIME-Version"]  # add_attachment copies it into the parts
    # add_attachment made multipart/mixed; RFC 8460 5.3 wants multipart/report.
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes(policy=email.policy.SMTP)
