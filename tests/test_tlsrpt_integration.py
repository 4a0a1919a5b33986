"""TLS-RPT wired in: every delivery attempt's TLS result is recorded under the policy that
applied, and the daily run mails each domain's report once (RFC 8460)."""

from __future__ import annotations

import datetime
import gzip
import json
import threading
from typing import Any

import pytest_twisted
import trustme
from cryptography import x509
from e2e import maildir_messages
from outbound_lab import DOMAIN, MX, start_receiver, start_sender, submit_and_settle
from sts_lab import policy_text, start_policy_server, sts_dns

from tlsmta.app import cli
from tlsmta.discovery import _dane as dane
from tlsmta.reporting import _tlsrpt as tlsrpt
from tlsmta.reporting._tlsrpt_sender import store_directory
from tlsmta.storage import _appender as appender


def today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def store(tmp_path: Any) -> tlsrpt.TLSRPTStore:
    return tlsrpt.TLSRPTStore(store_directory(str(tmp_path / "sender-state")))


async def one(tmp_path: Any, pki: Any, pair: Any, **opts: Any) -> None:
    rx = await start_receiver(tmp_path, pair)
    sender = await start_sender(tmp_path, rx.port, pki.ca_pem, **opts)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()


@pytest_twisted.ensureDeferred
async def test_sts_success_and_failures_are_recorded(tmp_path: Any, pki: Any) -> None:
    """An enforce session that verifies counts as a success under the sts policy; one whose
    certificate names another host counts as certificate-host-mismatch with the MX and IPs."""
    server = start_policy_server(pki.ca, policy_text("enforce"))
    try:
        await one(tmp_path, pki, pki.good, dns=sts_dns(), mta_sts_https_port=server.port)
        await one(tmp_path, pki, pki.wrong_name, dns=sts_dns(), mta_sts_https_port=server.port)
    finally:
        await server.stop()
    [stats] = store(tmp_path).aggregate(today())[DOMAIN]
    assert (stats.policy_type, stats.successes, stats.failures) == ("sts", 1, 1)
    assert "mode: enforce" in stats.policy_strings
    [key] = stats.details
    assert (key.result_type, key.mx_host, key.receiving_ip) == (tlsrpt.CERTIFICATE_HOST_MISMATCH, MX, "127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_policy_fetch_failure_is_recorded(tmp_path: Any, pki: Any) -> None:
    """A policy server with an untrusted certificate: sts-webpki-invalid in the domain's report."""
    server = start_policy_server(trustme.CA(), policy_text("enforce"))
    try:
        await one(tmp_path, pki, None, dns=sts_dns(), mta_sts_https_port=server.port)
    finally:
        await server.stop()
    types = {k.result_type for s in store(tmp_path).aggregate(today())[DOMAIN] for k in s.details}
    assert tlsrpt.STS_WEBPKI_INVALID in types


@pytest_twisted.ensureDeferred
async def test_dane_results_are_recorded(tmp_path: Any, pki: Any) -> None:
    """A DANE mismatch is a validation-failure under the tlsa policy, with the TLSA record as policy-string."""
    other = trustme.CA().issue_cert(MX)
    record = str(dane.record_for(x509.load_pem_x509_certificate(other.cert_chain_pems[0].bytes())))
    rx = await start_receiver(tmp_path, pki.good)
    sender = await start_sender(tmp_path, rx.port, pki.ca_pem, dns={"tlsa": {dane.tlsa_name(MX, rx.port): [record]}})
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
    [stats] = store(tmp_path).aggregate(today())[DOMAIN]
    assert (stats.policy_type, stats.policy_strings, stats.failures) == ("tlsa", (record,), 1)
    assert [k.result_type for k in stats.details] == [tlsrpt.VALIDATION_FAILURE]


@pytest_twisted.ensureDeferred
async def test_starttls_missing_is_recorded_without_policy(tmp_path: Any, pki: Any) -> None:
    """No policy, tls = ifavailable, no STARTTLS: starttls-not-supported under no-policy-found."""
    await one(tmp_path, pki, None, tls="ifavailable")
    [stats] = store(tmp_path).aggregate(today())[DOMAIN]
    assert (stats.policy_type, stats.failures) == ("no-policy-found", 1)
    assert [k.result_type for k in stats.details] == [tlsrpt.STARTTLS_NOT_SUPPORTED]


@pytest_twisted.ensureDeferred
async def test_dane_required_without_records_is_recorded(tmp_path: Any, pki: Any) -> None:
    """dane = "required" and no TLSA records: dane-required (RFC 8460 4.3.1), the MX never connected to."""
    await one(tmp_path, pki, pki.good, dane="required")
    [stats] = store(tmp_path).aggregate(today())[DOMAIN]
    assert (stats.policy_type, stats.successes, stats.failures) == ("no-policy-found", 0, 1)
    assert [(k.result_type, k.mx_host) for k in stats.details] == [(tlsrpt.DANE_REQUIRED, MX)]


@pytest_twisted.ensureDeferred
async def test_the_service_records_in_its_disk_thread(tmp_path: Any, pki: Any, monkeypatch: Any) -> None:
    """A session's result is appended by the disk thread, never the reactor's, and is there after a clean stop."""
    opened_in: list[str] = []

    def recording_open(path: str, *args: Any, **kwargs: Any) -> Any:
        opened_in.append(threading.current_thread().name)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(appender, "open", recording_open, raising=False)
    await one(tmp_path, pki, None, tls="ifavailable")
    [stats] = store(tmp_path).aggregate(today())[DOMAIN]
    assert stats.failures == 1
    assert opened_in and all(name.startswith("tlsmta-disk-") for name in opened_in), opened_in


@pytest_twisted.ensureDeferred
async def test_daily_report_is_mailed_once(tmp_path: Any, pki: Any, events: list) -> None:
    """Yesterday's results go to the rua mailto: address as a gzipped JSON multipart/report,
    once: a second run and a restart send nothing more."""
    yesterday = today() - datetime.timedelta(days=1)
    recorded = store(tmp_path)
    recorded.record(DOMAIN, yesterday, "sts", ["version: STSv1", "mode: enforce", f"mx: {MX}", "max_age: 86400"], MX, True)
    recorded.record(DOMAIN, yesterday, "sts", ["version: STSv1", "mode: enforce", f"mx: {MX}", "max_age: 86400"], MX, False,
                    result_type=tlsrpt.CERTIFICATE_EXPIRED, receiving_ip="127.0.0.1", reason="certificate has expired")
    reports = tmp_path / "reports"
    opts: dict[str, Any] = dict(
        dns={"txt": {f"_smtp._tls.{DOMAIN}": ["v=TLSRPTv1; rua=mailto:tls-reports@reports.test,https://r.test/x"]}},
        domains={"reports.test": {"route": f"maildir:{reports}"}},
        tlsrpt_reports=True, tlsrpt_organization="Example Sender", tlsrpt_contact="ops@sender.test",
    )
    sender = await start_sender(tmp_path, 9, None, **opts)  # the first check runs at start
    try:
        await sender.service.tlsrpt.send_due()  # waits for that run
        await sender.service.queue.wait_idle()
        assert await sender.service.tlsrpt.send_due() == 0
    finally:
        await sender.stop()
    again = await start_sender(tmp_path, 9, None, **opts)
    try:
        assert await again.service.tlsrpt.send_due() == 0
    finally:
        await again.stop()
    assert [e["to"] for e in events if e["tlsmta_event"] == "tlsrpt_report"] == ["tls-reports@reports.test"]
    [mail] = maildir_messages(str(reports))
    assert mail.get_content_type() == "multipart/report" and mail.get_param("report-type") == "tlsrpt"
    assert (mail["TLS-Report-Domain"], mail["To"]) == (DOMAIN, "tls-reports@reports.test")
    [attachment] = [p for p in mail.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    assert (report["organization-name"], report["contact-info"]) == ("Example Sender", "ops@sender.test")
    [policy] = report["policies"]
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    assert policy["failure-details"][0]["result-type"] == "certificate-expired"


@pytest_twisted.ensureDeferred
async def test_daily_report_is_posted_to_https_rua(tmp_path: Any, pki: Any, events: list) -> None:
    """An https: rua gets the gzipped JSON by POST (application/tlsrpt+gzip) over verified TLS;
    a failed upload (HTTP 503) is tried again at the next check, and a day goes once."""
    yesterday = today() - datetime.timedelta(days=1)
    store(tmp_path).record(DOMAIN, yesterday, "no-policy-found", [], MX, True)
    server = start_policy_server(pki.ca, "", name="reports.test")
    server.resource.code = 503
    opts: dict[str, Any] = dict(
        dns={"txt": {f"_smtp._tls.{DOMAIN}": [f"v=TLSRPTv1; rua=https://reports.test:{server.port}/v1/tlsrpt"]},
             "hosts": {"reports.test": ["127.0.0.1"]}},
        tlsrpt_reports=True,
    )
    sender = await start_sender(tmp_path, 9, pki.ca_pem, **opts)
    try:
        assert await sender.service.tlsrpt.send_due() == 0  # 503: not done
        server.resource.code = 200
        assert await sender.service.tlsrpt.send_due() == 1
        assert await sender.service.tlsrpt.send_due() == 0
    finally:
        await sender.stop()
        await server.stop()
    path, media, body = server.resource.posts[-1]
    assert len(server.resource.posts) >= 2 and all(p[0] == b"/v1/tlsrpt" for p in server.resource.posts)
    assert media == b"application/tlsrpt+gzip"
    report = json.loads(gzip.decompress(body))
    assert report["policies"][0]["policy"]["policy-type"] == "no-policy-found"
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 1


@pytest_twisted.ensureDeferred
async def test_no_reports_unless_enabled(tmp_path: Any) -> None:
    """tlsrpt_reports = false (the default): the hourly check sends nothing."""
    yesterday = today() - datetime.timedelta(days=1)
    store(tmp_path).record(DOMAIN, yesterday, "no-policy-found", [], MX, True)
    sender = await start_sender(tmp_path, 9, None)
    try:
        sender.service.tlsrpt.tick()
        assert sender.service.tlsrpt._running is None
    finally:
        await sender.stop()


def test_tlsrpt_show(tmp_path: Any, capsys: Any) -> None:
    """`tlsmta tlsrpt show` prints a day's aggregate per domain and policy."""
    state = tmp_path / "state"
    config = tmp_path / "tlsmta.toml"
    config.write_text(f'[global]\nstate_dir = "{state}"\n')
    s = tlsrpt.TLSRPTStore(store_directory(str(state)))
    s.record(DOMAIN, today(), "sts", ["mode: enforce"], MX, True)
    s.record(DOMAIN, today(), "sts", ["mode: enforce"], MX, False, result_type=tlsrpt.STARTTLS_NOT_SUPPORTED, receiving_ip="192.0.2.1")
    assert cli.main(["tlsrpt", "show", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{DOMAIN}" in out and "sts" in out and "1 successful, 1 failed" in out
    assert "starttls-not-supported" in out and "192.0.2.1" in out
    assert cli.main(["tlsrpt", "show", "--config", str(config), "--day", "2001-01-01"]) == 0
    assert "no TLS sessions recorded" in capsys.readouterr().out
    assert cli.main(["tlsrpt", "show", "--config", str(config), "--day", "yesterday"]) == 64


@pytest_twisted.ensureDeferred
async def test_testing_mode_failures_are_reported(tmp_path: Any, pki: Any) -> None:
    """MTA-STS testing: the message is delivered, and what enforce would have refused is a
    failure in the report (RFC 8461 5: report, do not enforce)."""
    server = start_policy_server(pki.ca, policy_text("testing"))
    try:
        await one(tmp_path, pki, pki.wrong_name, dns=sts_dns(), mta_sts_https_port=server.port, tls="ifavailable")
    finally:
        await server.stop()
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1
    [stats] = store(tmp_path).aggregate(today())[DOMAIN]
    assert (stats.policy_type, stats.successes, stats.failures) == ("sts", 0, 1)
    assert "mode: testing" in stats.policy_strings
    assert [k.result_type for k in stats.details] == [tlsrpt.CERTIFICATE_HOST_MISMATCH]
