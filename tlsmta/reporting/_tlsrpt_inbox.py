"""Receiving TLS-RPT reports (RFC 8460): what other senders saw delivering to us, parsed.

Pure: bytes in, frozen values or a :class:`ReportError` with the reason out.

- :func:`reports_in_mail`: the report parts of a mail (section 5.3: a
  multipart/report whose part is ``application/tlsrpt+gzip`` or
  ``application/tlsrpt+json``);
- :func:`decode_report`: one part's or one HTTPS POST's body (section 5.2),
  gunzipped within :data:`MAX_REPORT_BYTES` (a gzip bomb stops there; the
  report parts of one mail share that limit);
- :func:`parse_report`: the section 4 JSON, checked field by field against
  the schema (section 4.4); unknown result types are kept (the registry
  grows, section 6.4);
- :func:`summarize`: reports added up per policy domain, as
  ``tlsmta tlsrpt received`` prints them.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import io
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from tlsmta.errors import TlsmtaError
from tlsmta.tls import POLICY_TYPES

GZIP_TYPE = "application/tlsrpt+gzip"
JSON_TYPE = "application/tlsrpt+json"
REPORT_TYPES = (GZIP_TYPE, JSON_TYPE)
MAX_REPORT_BYTES = 8 * 1024 * 1024  # decompressed JSON; large providers' daily reports are a few kB


class ReportError(TlsmtaError, ValueError):
    """A report that is not an RFC 8460 report; the message says why, for the log."""


@attrs.frozen
class FailureDetail:
    """One ``failure-details`` entry (section 4.3): a result type, where, and how many sessions."""

    result_type: str
    failed_sessions: int
    mx_host: str | None = None
    sending_ip: str | None = None
    receiving_ip: str | None = None
    reason_code: str | None = None


@attrs.frozen
class PolicyResult:
    """One ``policies`` entry: the policy applied to one domain and the sessions under it."""

    policy_type: str
    policy_domain: str
    successful: int
    failed: int
    mx_hosts: tuple[str, ...] = ()
    failures: tuple[FailureDetail, ...] = ()


@attrs.frozen
class Report:
    """A parsed report; ``start``/``end``: its date-range (UTC)."""

    organization: str
    contact: str
    report_id: str
    start: datetime.datetime
    end: datetime.datetime
    policies: tuple[PolicyResult, ...]

    @property
    def day(self) -> datetime.date:
        """The UTC day the report covers (the day its range starts; daily reports cover one)."""
        return self.start.date()

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted({p.policy_domain for p in self.policies}))


# -- mail and HTTPS bodies ---------------------------------------------------------------------


def reports_in_mail(message: bytes) -> list[tuple[str, bytes]]:
    """(content type, decoded body) of each report part; ReportError when there is none."""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    found = []
    for part in parsed.walk():
        content_type = part.get_content_type()
        if content_type in REPORT_TYPES:
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                raise ReportError(f"the {content_type} part has no body")
            found.append((content_type, payload))
    if not found:
        raise ReportError(f"no {GZIP_TYPE} or {JSON_TYPE} part in the message (RFC 8460 5.3)")
    return found


def decode_report(content_type: str, body: bytes, limit: int = MAX_REPORT_BYTES) -> bytes:
    """The JSON bytes of a report body of ``content_type`` (gunzipped for +gzip), at most ``limit``."""
    content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type == JSON_TYPE:
        data = body
    elif content_type == GZIP_TYPE:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as unzipped:
                data = unzipped.read(limit + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise ReportError(f"{GZIP_TYPE} body does not gunzip: {e}") from None
    else:
        raise ReportError(f"content type {content_type or '(none)'!r} is neither {GZIP_TYPE} nor {JSON_TYPE}")
    if len(data) > limit:
        raise ReportError(f"report larger than {limit} bytes" + ("" if limit == MAX_REPORT_BYTES else
                          f" (what is left of the {MAX_REPORT_BYTES} bytes one mail's reports may take)"))
    return data


# -- the JSON (RFC 8460 4) -------------------------------------------------------------------


def parse_report(data: bytes) -> Report:
    """The report in ``data`` (UTF-8 JSON), checked against section 4's fields."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ReportError(f"not UTF-8 JSON: {e}") from None
    except RecursionError:  # a few kB of "[[[[..." is enough; the schema nests four levels
        raise ReportError("not a report: JSON nested too deeply") from None
    top = _object(doc, "the report")
    dates = _object(top.get("date-range"), "date-range")
    start, end = _datetime(dates, "start-datetime"), _datetime(dates, "end-datetime")
    if end < start:
        raise ReportError("date-range: end-datetime is before start-datetime")
    policies = top.get("policies")
    if not isinstance(policies, list) or not policies:
        raise ReportError("policies: must be a non-empty array")
    return Report(
        organization=_text(top, "organization-name"),
        contact=_text(top, "contact-info"),
        report_id=_text(top, "report-id"),
        start=start,
        end=end,
        policies=tuple(_policy(entry, f"policies[{i}]") for i, entry in enumerate(policies)),
    )


def _policy(entry: Any, where: str) -> PolicyResult:
    body = _object(entry, where)
    policy = _object(body.get("policy"), f"{where}.policy")
    summary = _object(body.get("summary"), f"{where}.summary")
    policy_type = _text(policy, "policy-type", f"{where}.policy")
    if policy_type not in POLICY_TYPES:
        raise ReportError(f"{where}.policy.policy-type: {policy_type!r} is not one of {', '.join(sorted(POLICY_TYPES))}")
    for optional in ("policy-string", "mx-host"):
        _strings(policy.get(optional, []), f"{where}.policy.{optional}")
    details = body.get("failure-details", [])
    if not isinstance(details, list):
        raise ReportError(f"{where}.failure-details: must be an array")
    return PolicyResult(
        policy_type=policy_type,
        policy_domain=_text(policy, "policy-domain", f"{where}.policy").rstrip(".").lower(),
        successful=_count(summary, "total-successful-session-count", f"{where}.summary"),
        failed=_count(summary, "total-failure-session-count", f"{where}.summary"),
        mx_hosts=tuple(_strings(policy.get("mx-host", []), f"{where}.policy.mx-host")),
        failures=tuple(_failure(d, f"{where}.failure-details[{i}]") for i, d in enumerate(details)),
    )


def _failure(entry: Any, where: str) -> FailureDetail:
    body = _object(entry, where)
    return FailureDetail(
        result_type=_text(body, "result-type", where),
        failed_sessions=_count(body, "failed-session-count", where),
        mx_host=_optional_text(body, "receiving-mx-hostname", where),
        sending_ip=_optional_text(body, "sending-mta-ip", where),
        receiving_ip=_optional_text(body, "receiving-ip", where),
        reason_code=_optional_text(body, "failure-reason-code", where),
    )


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{where}: must be a JSON object")
    return value


def _text(body: Mapping[str, Any], key: str, where: str = "") -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ReportError(f"{where + '.' if where else ''}{key}: must be a non-empty string")
    return value


def _optional_text(body: Mapping[str, Any], key: str, where: str) -> str | None:
    return _text(body, key, where) if key in body else None


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ReportError(f"{where}: must be an array of strings")
    return value


def _count(body: Mapping[str, Any], key: str, where: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportError(f"{where}.{key}: must be a whole number, 0 or more")
    return value


def _datetime(body: Mapping[str, Any], key: str) -> datetime.datetime:
    """An RFC 3339 date-time (section 4.4: date-time); one without an offset is refused."""
    text = _text(body, key, "date-range")
    try:
        value = datetime.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"date-range.{key}: {text!r} is not an RFC 3339 date-time") from None
    if value.tzinfo is None:
        raise ReportError(f"date-range.{key}: {text!r} has no time zone offset")
    return value.astimezone(datetime.timezone.utc)


# -- adding up ---------------------------------------------------------------------------------


@attrs.define
class DomainSummary:
    """What the reports said about one of our domains: sessions and failures by (result type, MX)."""

    reports: set[tuple[str, str]] = attrs.field(factory=set)  # (organization, report-id)
    successful: int = 0
    failed: int = 0
    failures: dict[tuple[str, str], int] = attrs.field(factory=dict)


def summarize(reports: Iterable[Report], domain: str | None = None, day: datetime.date | None = None) -> dict[str, DomainSummary]:
    """Per policy domain (only ``domain`` if given), the reports covering ``day`` (any day if None)."""
    out: dict[str, DomainSummary] = {}
    for report in reports:
        if day is not None and report.day != day:
            continue
        for policy in report.policies:
            if domain is not None and policy.policy_domain != domain:
                continue
            summary = out.setdefault(policy.policy_domain, DomainSummary())
            summary.reports.add((report.organization, report.report_id))
            summary.successful += policy.successful
            summary.failed += policy.failed
            for failure in policy.failures:
                key = (failure.result_type, failure.mx_host or "-")
                summary.failures[key] = summary.failures.get(key, 0) + failure.failed_sessions
    return out


def summary_lines(summaries: Mapping[str, DomainSummary], malformed: int = 0) -> list[str]:
    """``tlsmta tlsrpt received``: per domain the sessions reported and the failures by result type and MX."""
    lines = []
    for domain in sorted(summaries):
        s = summaries[domain]
        reporters = sorted({organization for organization, _ in s.reports})
        lines.append(f"{domain}: {len(s.reports)} report(s) from {', '.join(reporters)}: "
                     f"{s.successful} successful, {s.failed} failed session(s)")
        for (result_type, mx), count in sorted(s.failures.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {count:>7} x {result_type}  (mx {mx})")
    if not summaries:
        lines.append("no TLS-RPT reports received")
    if malformed:
        lines.append(f"{malformed} malformed submission(s) kept (see the tlsrpt_malformed log lines for why)")
    return lines
