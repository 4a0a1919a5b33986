"""Receiving TLS-RPT reports (RFC 8460): the pure parser, then by mail (swaks) and HTTPS POST.

Mail for a domain routed ``tlsrpt`` is accepted (250 once spooled),
parsed and kept, one file per report under state_dir; a message that is not
a report is kept as malformed and still answered 250.  ``[tlsrpt_inbox]
endpoint`` takes ``POST /tlsrpt`` over HTTPS.  ``tlsmta tlsrpt received``
adds the reports up.
"""

from __future__ import annotations

import copy
import datetime
import gzip
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, partial_request

from tlsmta.app import _preflight as preflight
from tlsmta.reporting import Metrics
from tlsmta.reporting._tlsrpt import report_email
from tlsmta.reporting._tlsrpt_inbox import (
    GZIP_TYPE,
    JSON_TYPE,
    MAX_REPORT_BYTES,
    ReportError,
    decode_report,
    parse_report,
    reports_in_mail,
    summarize,
    summary_lines,
)
from tlsmta.testing import RunningRelay

TLSMTA = [os.path.join(os.path.dirname(sys.executable), "tlsmta")]
INBOX_DOMAIN = "tlsrpt.example.test"  # rua=mailto:reports@tlsrpt.example.test
OUR_DOMAIN = "company-y.example"

# RFC 8460 4.5, the example report (two failure-details).
EXAMPLE: dict[str, Any] = {
    "organization-name": "Company-X",
    "date-range": {"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"},
    "contact-info": "sts-reporting@company-x.example",
    "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    "policies": [{
        "policy": {
            "policy-type": "sts",
            "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example", "max_age: 86400"],
            "policy-domain": OUR_DOMAIN,
            "mx-host": ["*.mail.company-y.example"],
        },
        "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
        "failure-details": [
            {"result-type": "certificate-expired", "sending-mta-ip": "2001:db8:abcd:0012::1",
             "receiving-mx-hostname": "mx1.mail.company-y.example", "failed-session-count": 100},
            {"result-type": "starttls-not-supported", "sending-mta-ip": "2001:db8:abcd:0013::1",
             "receiving-mx-hostname": "mx2.mail.company-y.example", "receiving-ip": "203.0.113.56",
             "failed-session-count": 200, "additional-information": "https://reports.company-x.example/"},
            {"result-type": "validation-failure", "sending-mta-ip": "198.51.100.62", "receiving-ip": "203.0.113.58",
             "receiving-mx-hostname": "mx-backup.mail.company-y.example", "failed-session-count": 3,
             "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"},
        ],
    }],
}


def example(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    doc.update(changes)
    return doc


def as_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- the pure parser ----------------------------------------------------------------------------


def test_rfc_example_parses() -> None:
    """RFC 8460's example: organization, range, policy domain, counts and each failure-detail."""
    report = parse_report(as_bytes(EXAMPLE))
    assert (report.organization, report.report_id, report.day) == ("Company-X", EXAMPLE["report-id"], datetime.date(2016, 4, 1))
    [policy] = report.policies
    assert (policy.policy_type, policy.policy_domain, policy.successful, policy.failed) == ("sts", OUR_DOMAIN, 5326, 303)
    assert [(f.result_type, f.mx_host, f.failed_sessions) for f in policy.failures] == [
        ("certificate-expired", "mx1.mail.company-y.example", 100),
        ("starttls-not-supported", "mx2.mail.company-y.example", 200),
        ("validation-failure", "mx-backup.mail.company-y.example", 3),
    ]
    assert policy.failures[2].reason_code == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"


def _without(key: str) -> dict[str, Any]:
    doc = example()
    del doc[key]
    return doc


def _policy_with(**changes: Any) -> dict[str, Any]:
    doc = example()
    doc["policies"][0]["policy"].update(changes)
    return doc


def _summary_with(**changes: Any) -> dict[str, Any]:
    doc = example()
    doc["policies"][0]["summary"].update(changes)
    return doc


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "the report: must be a JSON object"),
        (as_bytes(_without("organization-name")), "organization-name: must be a non-empty string"),
        (as_bytes(_without("report-id")), "report-id: must be a non-empty string"),
        (as_bytes(example(policies=[])), "policies: must be a non-empty array"),
        (as_bytes(example(**{"date-range": {"start-datetime": "2016-04-01T00:00:00", "end-datetime": "2016-04-02T00:00:00Z"}})),
         "has no time zone offset"),
        (as_bytes(example(**{"date-range": {"start-datetime": "2016-04-02T00:00:00Z", "end-datetime": "2016-04-01T00:00:00Z"}})),
         "end-datetime is before start-datetime"),
        (as_bytes(_policy_with(**{"policy-type": "dmarc"})), "policies[0].policy.policy-type: 'dmarc' is not one of"),
        (as_bytes(_policy_with(**{"mx-host": "mx.example"})), "policies[0].policy.mx-host: must be an array of strings"),
        (as_bytes(_summary_with(**{"total-failure-session-count": -1})), "total-failure-session-count: must be a whole number"),
        (as_bytes(_summary_with(**{"total-successful-session-count": True})), "total-successful-session-count: must be"),
    ],
)
def test_malformed_reports_are_refused_with_the_field(data: bytes, reason: str) -> None:
    """Each schema violation names the field at fault."""
    with pytest.raises(ReportError) as info:
        parse_report(data)
    assert reason in str(info.value)


def test_deeply_nested_json_is_a_malformed_report() -> None:
    """A small body of nested arrays is refused like any bad report (RecursionError made the POST a 500 and a
    mailed one an internal error retried until it expired)."""
    with pytest.raises(ReportError, match="nested too deeply"):
        parse_report(b"[" * 100_000)


def test_failure_detail_needs_its_count() -> None:
    """failure-details entries need result-type and failed-session-count."""
    doc = example()
    del doc["policies"][0]["failure-details"][1]["failed-session-count"]
    with pytest.raises(ReportError, match=r"failure-details\[1\]\.failed-session-count"):
        parse_report(as_bytes(doc))


def test_gzip_bodies_are_gunzipped_within_the_limit() -> None:
    """+gzip is gunzipped, +json taken as is; a gzip bomb stops at MAX_REPORT_BYTES; junk and other types refused."""
    assert decode_report(GZIP_TYPE, gzip.compress(as_bytes(EXAMPLE))) == as_bytes(EXAMPLE)
    assert decode_report(f"{JSON_TYPE}; charset=utf-8", as_bytes(EXAMPLE)) == as_bytes(EXAMPLE)
    with pytest.raises(ReportError, match="larger than"):
        decode_report(GZIP_TYPE, gzip.compress(b" " * (MAX_REPORT_BYTES + 1)))
    with pytest.raises(ReportError, match="does not gunzip"):
        decode_report(GZIP_TYPE, b"not gzip")
    with pytest.raises(ReportError, match="neither"):
        decode_report("application/json", as_bytes(EXAMPLE))


def test_the_report_parts_of_one_mail_share_the_limit() -> None:
    """Each part within MAX_REPORT_BYTES is not enough: a mail of many small gzip bombs would gunzip
    to gigabytes at once, so its parts have MAX_REPORT_BYTES between them."""
    from email.message import EmailMessage

    from tlsmta.reporting._tlsrpt_received import _mail_reports

    padded = gzip.compress(as_bytes(EXAMPLE) + b" " * (MAX_REPORT_BYTES // 4))  # a few kB each
    mail = EmailMessage()
    mail["Subject"] = "Report Domain: company-y.example"
    mail.set_content("four reports")
    for _ in range(4):
        mail.add_attachment(padded, maintype="application", subtype="tlsrpt+gzip", filename="r.json.gz")
    with pytest.raises(ReportError, match="one mail's reports"):
        _mail_reports(mail.as_bytes())
    mail.get_payload().pop()  # three fit
    assert len(_mail_reports(mail.as_bytes())) == 3


def test_tlsmtas_own_report_mail_is_read_back() -> None:
    """The inbox reads the RFC 8460 5.3 mail tlsmta's own daily sender writes (multipart/report, +gzip)."""
    mail = report_email(EXAMPLE, "noreply@x.example", f"reports@{INBOX_DOMAIN}", OUR_DOMAIN, "x.example",
                        EXAMPLE["report-id"], datetime.datetime(2016, 4, 2, tzinfo=datetime.timezone.utc))
    [(content_type, body)] = reports_in_mail(mail)
    assert content_type == GZIP_TYPE
    assert parse_report(decode_report(content_type, body)).report_id == EXAMPLE["report-id"]
    with pytest.raises(ReportError, match="no application/tlsrpt"):
        reports_in_mail(b"Subject: hello\r\n\r\nnot a report\r\n")


def test_summary_adds_up_per_domain_and_filters() -> None:
    """Two reports for one domain add up; a resent report counts once in the report count; filters work."""
    first = parse_report(as_bytes(EXAMPLE))
    second = parse_report(as_bytes(example(**{"organization-name": "Other", "report-id": "r2"})))
    summaries = summarize([first, second, first])
    s = summaries[OUR_DOMAIN]
    assert (len(s.reports), s.successful, s.failed) == (2, 3 * 5326, 3 * 303)
    assert s.failures[("certificate-expired", "mx1.mail.company-y.example")] == 300
    assert summarize([first], domain="other.example") == {}
    assert summarize([first], day=datetime.date(2016, 4, 2)) == {}
    lines = summary_lines(summarize([first]), malformed=2)
    assert lines[0] == f"{OUR_DOMAIN}: 1 report(s) from Company-X: 5326 successful, 303 failed session(s)"
    assert lines[1].split() == ["200", "x", "starttls-not-supported", "(mx", "mx2.mail.company-y.example)"]
    assert lines[-1].startswith("2 malformed submission(s) kept")


def test_metrics_count_reported_failures_by_result_type() -> None:
    """tlsrpt_* events feed the counters; a result type outside RFC 8460's registry is 'other'."""
    metrics = Metrics()
    metrics.handle("tlsrpt_received", {})
    metrics.handle("tlsrpt_malformed", {})
    metrics.handle("tlsrpt_reported_failure", {"result_type": "certificate-expired", "sessions": 100})
    metrics.handle("tlsrpt_reported_failure", {"result_type": "made-up\nlabel", "sessions": 7})
    value = metrics.registry.get_sample_value
    assert value("tlsmta_tlsrpt_reports_received_total", {"outcome": "stored"}) == 1
    assert value("tlsmta_tlsrpt_reports_received_total", {"outcome": "malformed"}) == 1
    assert value("tlsmta_tlsrpt_reported_failures_total", {"result_type": "certificate-expired"}) == 100
    assert value("tlsmta_tlsrpt_reported_failures_total", {"result_type": "other"}) == 7


# -- by mail and by HTTPS, with a real sender ---------------------------------------------------


def receiver_toml(tmp_path: Any, pki: Any) -> str:
    path = tmp_path / "receiver.toml"
    path.write_text(
        f'[global]\nhostname = "mx.{INBOX_DOMAIN}"\nstate_dir = "{tmp_path}/state"\nroute = "discard"\n'
        f'[spool]\npath = "{tmp_path}/spool"\n'
        f'[domain."{INBOX_DOMAIN}"]\nroute = "tlsrpt"\n'
        '[[listener]]\nname = "mx"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\n'
        f'local_domains = ["{INBOX_DOMAIN}"]\n'
        f'[tlsrpt_inbox]\nendpoint = "tcp:0:interface=127.0.0.1"\ntls_certificate = "{pki.good.cert}"\n'
        f'tls_key = "{pki.good.key}"\n'
    )
    return str(path)


def swaks(port: int, *args: str) -> str:
    done = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "tlsrpt@company-x.example",
                           "--to", f"reports@{INBOX_DOMAIN}", "--helo", "company-x.example", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def post(port: int, ca: str, content_type: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"https://localhost:{port}/tlsrpt", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    context = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def tlsmta(*args: str) -> str:
    done = subprocess.run([*TLSMTA, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest_twisted.ensureDeferred
async def test_reports_by_mail_and_https_are_kept_and_summarised(tmp_path: Any, pki: Any, events: list) -> None:
    """A gzipped report mailed with swaks and a JSON one POSTed over HTTPS (trustme certificate) are stored,
    one file each; a mail without a report is answered 250 and kept as malformed; a bad POST is 400;
    `tlsmta tlsrpt received` adds them up by domain, result type and MX."""
    path = receiver_toml(tmp_path, pki)
    relay = await RunningRelay(preflight.load(path)).start()
    report_file = tmp_path / "report.json.gz"
    report_file.write_bytes(gzip.compress(as_bytes(EXAMPLE)))
    second = example(**{"organization-name": "Company-Z", "report-id": "z-1"})
    try:
        https_port = relay.service.tlsrpt_https.port.getHost().port
        sent = await in_thread(swaks, relay.port, "--attach-type", GZIP_TYPE, "--attach", f"@{report_file}")
        assert "<-  250 2.0.0 Ok: queued as" in sent
        sent = await in_thread(swaks, relay.port, "--body", "no report in here")
        assert "<-  250 2.0.0 Ok: queued as" in sent
        await relay.service.queue.wait_idle()
        status, text = await in_thread(post, https_port, pki.ca_pem, JSON_TYPE, as_bytes(second))
        assert (status, text.strip()) == (201, "stored")
        status, text = await in_thread(post, https_port, pki.ca_pem, GZIP_TYPE, gzip.compress(as_bytes(_without("organization-name"))))
        assert status == 400 and "organization-name" in text
        status, _ = await in_thread(post, https_port, pki.ca_pem, "text/plain", b"hello")
        assert status == 415
    finally:
        await relay.stop()
    received = [e for e in events if e["tlsmta_event"] == "tlsrpt_received"]
    assert [(e["organization"], e["domains"], e["failed"]) for e in received] == [
        ("Company-X", OUR_DOMAIN, 303), ("Company-Z", OUR_DOMAIN, 303)]
    malformed = [e for e in events if e["tlsmta_event"] == "tlsrpt_malformed"]
    assert [e["reason"].split(" (")[0] for e in malformed] == [
        f"no {GZIP_TYPE} or {JSON_TYPE} part in the message", "organization-name: must be a non-empty string"]
    assert all(os.path.exists(e["kept"]) for e in malformed)
    delivered = [e for e in events if e["tlsmta_event"] == "delivery"]
    assert [e["result"] for e in delivered] == ["delivered", "delivered"]
    assert len(os.listdir(tmp_path / "state" / "tlsrpt-received" / "2016-04-01")) == 2
    summary = await in_thread(tlsmta, "tlsrpt", "received", "--config", path, "--domain", OUR_DOMAIN, "--day", "2016-04-01")
    lines = summary.splitlines()
    assert lines[0] == f"{OUR_DOMAIN}: 2 report(s) from Company-X, Company-Z: 10652 successful, 606 failed session(s)"
    assert lines[1].split() == ["400", "x", "starttls-not-supported", "(mx", "mx2.mail.company-y.example)"]
    assert lines[-1].startswith("2 malformed submission(s) kept")
    assert "no TLS-RPT reports received" in await in_thread(tlsmta, "tlsrpt", "received", "--config", path, "--day", "2016-04-02")


@pytest.mark.parametrize(
    ("table", "problem"),
    [('endpoint = "tcp:0"\ntls_certificate = "{cert}"\n', "[tlsrpt_inbox] tls_key: is required with endpoint"),
     ('endpoint = "tcp:0"\ntls_certificate = "{key}"\ntls_key = "{key}"\n', "[tlsrpt_inbox] tls_certificate: cannot load"),
     ('endpoint = "tcp:0"\npath = "/x"\n', "[tlsrpt_inbox] path:")],
)
def test_check_config_names_the_tlsrpt_inbox_key(tmp_path: Any, pki: Any, table: str, problem: str) -> None:
    """An HTTPS endpoint without its key, with a file that is no certificate, or an unknown key: exit 78, file/table/key named."""
    path = tmp_path / "bad.toml"
    path.write_text(f'[global]\nstate_dir = "{tmp_path}/state"\n[tlsrpt_inbox]\n'
                    + table.format(cert=pki.good.cert, key=pki.good.key))
    done = subprocess.run([*TLSMTA, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    assert f"{path}: {problem}" in done.stderr, done.stderr


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_is_refused_as_it_arrives(tmp_path: Any, chunked: bool) -> None:
    """413 before the rest of the body is sent (a Content-Length over the limit, or that many bytes of a
    chunked body), and nothing is kept: twisted.web must not spool an unbounded body to a temp file."""
    from twisted.internet import reactor

    from tlsmta.reporting import EventBus, TLSRPTInbox, tlsrpt_site
    from tlsmta.reporting._tlsrpt_received import ReceivedReports
    from tlsmta.storage import DiskIO

    disk = DiskIO(reactor, threads=1)
    inbox = TLSRPTInbox(ReceivedReports(str(tmp_path / "received")), disk, EventBus(), reactor)
    port = reactor.listenTCP(0, tlsrpt_site(inbox), interface="127.0.0.1")
    head = f"POST /tlsrpt HTTP/1.1\r\nHost: localhost\r\nContent-Type: {JSON_TYPE}\r\n".encode()
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        chunk = b"{" * 65536
        chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_REPORT_BYTES // len(chunk) + 1)
    else:
        head += f"Content-Length: {1 << 40}\r\n\r\n".encode()
        chunks = [b"{" * 1024]
    try:
        answer = await in_thread(partial_request, port.getHost().port, head, chunks)
    finally:
        await port.stopListening()
        disk.stop()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert not (tmp_path / "received").exists()
