"""Tests for :mod:`tlsmta.reporting._tlsrpt` (RFC 8460): the store, the JSON report, the TXT record, the email.

All pure: files in tmp_path, no reactor.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import json
import os
import re

import pytest

from tlsmta.reporting import _tlsrpt as tlsrpt
from tlsmta.reporting._tlsrpt import TLSRPTStore, build_report, parse_tlsrpt_txt, report_email

DAY = datetime.date(2026, 11, 24)
DOMAIN = "example.test"
STS = ["version: STSv1", "mode: enforce", "mx: *.mx.example.test", "mx: backup.example.test", "max_age: 86400"]
TLSA = ["3 1 1 " + "ab" * 32]
NOW = datetime.datetime(2026, 11, 25, 1, 2, 3, tzinfo=datetime.timezone.utc)


@pytest.fixture
def store(tmp_path) -> TLSRPTStore:
    return TLSRPTStore(str(tmp_path / "tlsrpt"))


def fill(store: TLSRPTStore) -> None:
    """A day for example.test: 3 sts successes, 2 expired + 1 host mismatch failures on two MXs,
    1 tlsa success; and one success for other.test."""
    for _ in range(3):
        store.record(DOMAIN, DAY, "sts", STS, "a.mx.example.test", True)
    for _ in range(2):
        store.record(DOMAIN, DAY, "sts", STS, "a.mx.example.test", False, tlsrpt.CERTIFICATE_EXPIRED,
                     "192.0.2.1", "198.51.100.7", "certificate has expired")
    store.record(DOMAIN, DAY, "sts", STS, "backup.example.test", False, tlsrpt.CERTIFICATE_HOST_MISMATCH,
                 "192.0.2.1", "198.51.100.8", "name does not match")
    store.record(DOMAIN, DAY, "tlsa", TLSA, "dane.example.test", True)
    store.record("Other.TEST.", DAY, "no-policy-found", [], "mx.other.test", True)


# -- constants -------------------------------------------------------------------------------


def test_result_and_policy_type_names_are_the_rfc_words():
    """The 11 result types of RFC 8460 4.3 and the three policy types, spelled as on the wire."""
    assert tlsrpt.RESULT_TYPES == {
        "starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
        "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
        "sts-policy-invalid", "sts-webpki-invalid",
    }
    assert tlsrpt.POLICY_TYPES == {"sts", "tlsa", "no-policy-found"}


# -- the store -------------------------------------------------------------------------------


def test_aggregate_sums_per_domain_and_policy(store):
    """Successes and failures are counted per policy; failure details grouped by (type, MX, IPs)."""
    fill(store)
    agg = store.aggregate(DAY)
    assert set(agg) == {DOMAIN, "other.test"}
    sts, tlsa = sorted(agg[DOMAIN], key=lambda p: p.policy_type)
    assert (sts.successes, sts.failures) == (3, 3)
    assert sts.mx_hosts == ("*.mx.example.test", "backup.example.test")
    details = {key.result_type: (key.mx_host, key.sending_ip, key.receiving_ip, entry[0]) for key, entry in sts.details.items()}
    assert details == {
        "certificate-expired": ("a.mx.example.test", "192.0.2.1", "198.51.100.7", 2),
        "certificate-host-mismatch": ("backup.example.test", "192.0.2.1", "198.51.100.8", 1),
    }
    assert (tlsa.successes, tlsa.failures, tlsa.mx_hosts) == (1, 0, ("dane.example.test",))
    assert agg["other.test"][0].policy_type == "no-policy-found"


def test_different_policy_strings_are_different_policies(store):
    """A policy that changed during the day is reported as two policies."""
    store.record(DOMAIN, DAY, "sts", STS, "a.mx.example.test", True)
    store.record(DOMAIN, DAY, "sts", STS[:1] + ["mode: testing"] + STS[2:], "a.mx.example.test", True)
    assert len(store.aggregate(DAY)[DOMAIN]) == 2


def test_record_rejects_unknown_types(store):
    """A typo in a policy or result type is a programming error, caught at record time."""
    with pytest.raises(ValueError, match="policy type"):
        store.record(DOMAIN, DAY, "mta-sts", STS, "mx", True)
    with pytest.raises(ValueError, match="result type"):
        store.record(DOMAIN, DAY, "sts", STS, "mx", False, "expired")


def test_aggregate_skips_a_torn_last_line(store):
    """A line cut short by a crash is skipped; the rest still counts."""
    fill(store)
    with open(os.path.join(store.directory, f"{DAY.isoformat()}.jsonl"), "a") as f:
        f.write('{"domain": "example.test", "policy_ty')
    assert store.aggregate(DAY)[DOMAIN][0].successes == 3


def test_empty_day_aggregates_to_nothing(store):
    """A day without records is an empty aggregate."""
    assert store.aggregate(DAY) == {}


def test_days_pending_and_mark_sent_survive_a_new_store(store):
    """Complete days with unreported domains are pending; marking every domain sent clears the day,
    also for a new store on the same directory (a restart)."""
    fill(store)
    store.record(DOMAIN, DAY + datetime.timedelta(days=1), "sts", STS, "a.mx.example.test", True)
    today = DAY + datetime.timedelta(days=1)
    assert store.days_pending(today) == [DAY]  # today is not complete yet
    store.mark_sent(DAY, DOMAIN)
    again = TLSRPTStore(store.directory)
    assert again.sent(DAY) == {DOMAIN}
    assert again.days_pending(today) == [DAY]  # other.test is still due
    again.mark_sent(DAY, "other.test")
    assert TLSRPTStore(store.directory).days_pending(today) == []
    assert TLSRPTStore(store.directory).days_pending(today + datetime.timedelta(days=1)) == [today]


def test_prune_removes_old_days_only(store):
    """prune(keep_days) deletes older days' records and sent marks, and keeps the recent ones."""
    old, recent = DAY - datetime.timedelta(days=10), DAY - datetime.timedelta(days=1)
    for day in (old, recent):
        store.record(DOMAIN, day, "sts", STS, "mx", True)
    store.mark_sent(old, DOMAIN)
    assert store.prune(keep_days=5, today=DAY) == [old]
    assert store.days() == [recent]
    assert sorted(os.listdir(store.directory)) == [f"{recent.isoformat()}.jsonl"]


# -- the report ------------------------------------------------------------------------------

REQUIRED_TOP = {"organization-name", "date-range", "contact-info", "report-id", "policies"}


def check_report_shape(report: dict) -> None:
    """RFC 8460 4.4's structure and field names, checked field by field."""
    assert set(report) == REQUIRED_TOP
    assert set(report["date-range"]) == {"start-datetime", "end-datetime"}
    for moment in report["date-range"].values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", moment)
    for entry in report["policies"]:
        assert set(entry) <= {"policy", "summary", "failure-details"} and {"policy", "summary"} <= set(entry)
        policy = entry["policy"]
        assert set(policy) <= {"policy-type", "policy-string", "policy-domain", "mx-host"}
        assert policy["policy-type"] in tlsrpt.POLICY_TYPES
        assert isinstance(policy["policy-domain"], str)
        assert all(isinstance(s, str) for s in policy.get("policy-string", []))
        assert all(isinstance(s, str) for s in policy.get("mx-host", []))
        summary = entry["summary"]
        assert set(summary) == {"total-successful-session-count", "total-failure-session-count"}
        assert all(isinstance(v, int) and v >= 0 for v in summary.values())
        details = entry.get("failure-details", [])
        for detail in details:
            assert set(detail) <= {
                "result-type", "sending-mta-ip", "receiving-mx-hostname", "receiving-mx-helo", "receiving-ip",
                "failed-session-count", "additional-information", "failure-reason-code",
            }
            assert detail["result-type"] in tlsrpt.RESULT_TYPES
            assert isinstance(detail["failed-session-count"], int)
        assert sum(d["failed-session-count"] for d in details) == summary["total-failure-session-count"]


def test_build_report_has_the_rfc_structure(store):
    """The report carries the day as 00:00:00Z..23:59:59Z UTC and one entry per policy,
    with summaries and failure details under the RFC's field names."""
    fill(store)
    report = build_report("Example Sender", "mailto:postmaster@sender.test", DOMAIN, DAY, store.aggregate(DAY), "r1")
    check_report_shape(report)
    assert report["date-range"] == {"start-datetime": "2026-11-24T00:00:00Z", "end-datetime": "2026-11-24T23:59:59Z"}
    assert (report["organization-name"], report["report-id"]) == ("Example Sender", "r1")
    by_type = {p["policy"]["policy-type"]: p for p in report["policies"]}
    sts = by_type["sts"]
    assert sts["policy"] == {"policy-type": "sts", "policy-string": STS, "policy-domain": DOMAIN,
                             "mx-host": ["*.mx.example.test", "backup.example.test"]}
    assert sts["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 3}
    assert sts["failure-details"][0] == {
        "result-type": "certificate-expired", "sending-mta-ip": "192.0.2.1",
        "receiving-mx-hostname": "a.mx.example.test", "receiving-ip": "198.51.100.7",
        "failed-session-count": 2, "failure-reason-code": "certificate has expired",
    }
    assert by_type["tlsa"]["policy"]["mx-host"] == ["dane.example.test"]
    assert "failure-details" not in by_type["tlsa"]
    other = build_report("o", "c", "other.test", DAY, store.aggregate(DAY), "r2")
    assert other["policies"][0]["policy"] == {"policy-type": "no-policy-found", "policy-domain": "other.test"}
    check_report_shape(other)


def test_build_report_accepts_one_domains_policies(store):
    """Passing the domain's list of policies gives the same report as passing the whole aggregate."""
    fill(store)
    agg = store.aggregate(DAY)
    assert build_report("o", "c", DOMAIN, DAY, agg[DOMAIN], "r") == build_report("o", "c", DOMAIN, DAY, agg, "r")


# -- the TXT record --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "records, uris",
    [
        (["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"], ["mailto:tlsrpt@example.test"]),
        (["v=TLSRPTv1;rua=mailto:a@example.test,https://reports.example.test/v1"],
         ["mailto:a@example.test", "https://reports.example.test/v1"]),
        (["v=TLSRPTv1 ; rua=mailto:a@example.test , mailto:b@example.test;"], ["mailto:a@example.test", "mailto:b@example.test"]),
        (["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.test"], ["mailto:a@example.test"]),
        (["v=TLSRPTv1; rua=mailto:a@example.test", "v=TLSRPTv1; rua=mailto:b@example.test"], []),  # two: none
        (["v=TLSRPTv2; rua=mailto:a@example.test"], []),
        (["v=tlsrptv1; rua=mailto:a@example.test"], []),  # the version is case-sensitive
        (["rua=mailto:a@example.test; v=TLSRPTv1"], []),  # the version must come first
        (["v=TLSRPTv1"], []),
        (["v=TLSRPTv1; ext=1; rua=ftp://x.test/r,mailto:c@example.test,mailto:,https://"], ["mailto:c@example.test"]),
        ([], []),
    ],
)
def test_parse_tlsrpt_txt(records, uris):
    """RFC 8460 3: exactly one v=TLSRPTv1 record; its rua= mailto/https URIs, others ignored."""
    assert parse_tlsrpt_txt(records) == uris


def test_mailto_address():
    """The address of a mailto URI, percent-decoded and without hfields; None for garbage."""
    assert tlsrpt.mailto_address("mailto:tls%2Brpt@example.test?subject=x") == "tls+rpt@example.test"
    assert tlsrpt.mailto_address("mailto:nobody") is None
    assert tlsrpt.mailto_address("https://example.test") is None


# -- the email -------------------------------------------------------------------------------


def test_report_email_is_an_rfc8460_message(store):
    """multipart/report; report-type=tlsrpt with a text part and the gzipped JSON named per 5.1,
    the TLS-Report-* headers and the 5.3 Subject; CRLF throughout; the JSON round-trips."""
    fill(store)
    report = build_report("Example Sender", "mailto:postmaster@sender.test", DOMAIN, DAY, store.aggregate(DAY),
                          "2026-11-24_example.test")
    raw = report_email(report, "tlsrpt@sender.test", "tlsrpt@example.test", DOMAIN, "sender.test",
                       "2026-11-24_example.test", NOW)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["Subject"] == f"Report Domain: {DOMAIN} Submitter: sender.test Report-ID: <2026-11-24_example.test>"
    assert msg["TLS-Report-Domain"] == DOMAIN
    assert msg["TLS-Report-Submitter"] == "sender.test"
    assert msg["From"] == "tlsrpt@sender.test" and msg["To"] == "tlsrpt@example.test"
    assert msg["Date"].datetime == NOW
    assert re.fullmatch(r"<[^<>@]+@sender\.test>", msg["Message-ID"])
    text, attachment = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain"
    assert "3 successful" not in text.get_content()  # the sum over the day's policies: 4
    assert "4 successful and 3 failed" in text.get_content()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    start, end = 1795478400, 1795564799  # 2026-11-24T00:00:00Z and 23:59:59Z
    assert attachment.get_filename() == f"sender.test!{DOMAIN}!{start}!{end}!20261124exampletest.json.gz"
    assert json.loads(gzip.decompress(attachment.get_content())) == report


def test_report_filename_without_alphanumerics_in_the_id():
    """An id with no letters or digits gives the 5.1 name without the optional unique-id."""
    assert tlsrpt.report_filename("s.test", DOMAIN, DAY, "--") == f"s.test!{DOMAIN}!1795478400!1795564799.json.gz"
