"""The fixture's checks (``msg.html_problems``, ``msg.links``) and the send API, as an application's
synchronous test suite uses them: pytest in a separate process, no pytest-twisted, JSON posted with urllib."""

from __future__ import annotations

from typing import Any

from test_pytest_plugin import run_application_suite

APP_TESTS = '''
import json
import urllib.request

import pytest


def post(relay, path, value):
    request = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}{path}", data=json.dumps(value).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.load(response)


@pytest.mark.tlsmta_relay(http=True)
def test_sent_through_the_api_with_its_problems_and_links(tlsmta_relay):
    status, answer = post(tlsmta_relay, "/api/send", {
        "from": "shop@example.com", "to": ["bob@example.org"], "subject": "Confirm your address",
        "text": "Confirm: https://shop.example/confirm?t=42",
        "html": '<div style="display:flex"><a href="https://shop.example/confirm?t=42">Confirm</a>'
                '<img src="https://cdn.shop.example/logo.png"></div>',
    })
    assert status == 202 and answer["to"] == ["bob@example.org"]
    msg = tlsmta_relay.wait_for(subject="Confirm your address", timeout=10)
    assert msg.sender == "shop@example.com" and msg.recipients == ("bob@example.org",)
    assert msg.links == ["https://shop.example/confirm?t=42", "https://cdn.shop.example/logo.png"]
    flex = next(p for p in msg.html_problems if p["feature"] == "css-display-flex")
    assert "Outlook (Windows)" in flex["unsupported"]
    with urllib.request.urlopen(f"http://127.0.0.1:{tlsmta_relay.http_port}/api/messages", timeout=10) as response:
        [entry] = json.load(response)["messages"]
    assert entry["subject"] == "Confirm your address" and entry["id"] == msg.id


def test_plain_smtp_mail_has_no_html_problems(tlsmta_relay):
    import smtplib

    with smtplib.SMTP(tlsmta_relay.host, tlsmta_relay.port, timeout=10) as client:
        client.sendmail("app@example.com", ["bob@example.org"], b"Subject: hi\\r\\n\\r\\nsee http://example.org/x\\r\\n")
    msg = tlsmta_relay.wait_for(to="bob@example.org")
    assert msg.html_problems == [] and msg.links == ["http://example.org/x"]
'''

def test_application_suite_sends_through_the_api_and_reads_the_checks(tmp_path: Any) -> None:
    """An application's suite posts a message to /api/send with urllib, waits for it with the fixture and
    reads ``msg.links`` and ``msg.html_problems``; plain SMTP mail has text links and no HTML problems."""
    out = run_application_suite(tmp_path, {"test_app.py": APP_TESTS})
    assert "2 passed" in out, out
