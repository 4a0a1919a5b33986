"""The ``tlsmta_relay`` fixture, used the way an application's test suite uses it.

An application project (written to a temporary directory) with plain,
synchronous pytest tests that send mail with smtplib, run by pytest in a
separate process without pytest-twisted: the plugin is found through its
``pytest11`` entry point, as it would be after ``pip install tlsmta``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

APP = '''
"""A tiny application that sends mail."""
import smtplib
import ssl
from email.message import EmailMessage


def send_welcome(host, port, to, ca=None):
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = to
    message["Subject"] = "Welcome"
    message.set_content("Hello " + to.split("@")[0].title() + ", welcome aboard.")
    with smtplib.SMTP(host, port, timeout=10) as client:
        if ca is not None:
            client.starttls(context=ssl.create_default_context(cafile=ca))
        client.send_message(message)
'''

APP_TESTS = '''
import ssl

import pytest

from app import send_welcome


def test_welcome_is_sent_over_verified_tls(tlsmta_relay):
    send_welcome("localhost", tlsmta_relay.port, "bob@example.org", ca=tlsmta_relay.ca_pem)
    msg = tlsmta_relay.wait_for(to="bob@example.org", timeout=5)
    assert msg["Subject"] == "Welcome"
    assert msg.sender == "shop@example.com" and msg.recipients == ("bob@example.org",)
    assert "Hello Bob" in msg.text
    assert msg.tls["used"] and msg.tls["protocol"] == "TLSv1.3"
    assert [m.subject for m in tlsmta_relay.messages] == ["Welcome"]
    tlsmta_relay.clear()
    assert tlsmta_relay.messages == []


def test_each_test_gets_a_fresh_relay(tlsmta_relay):
    assert tlsmta_relay.messages == []


def test_wait_for_says_what_arrived_instead(tlsmta_relay):
    send_welcome(tlsmta_relay.host, tlsmta_relay.port, "alice@example.net")
    with pytest.raises(AssertionError, match=r"received: \\[\\('shop@example.com', \\('alice@example.net',\\), 'Welcome'\\)\\]"):
        tlsmta_relay.wait_for(to="bob@example.org", timeout=0.5)
    assert tlsmta_relay.wait_for(subject="Welcome").tls["used"] is False


@pytest.mark.tlsmta_relay(tls_lab="expired")
def test_app_refuses_an_expired_certificate(tlsmta_relay):
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        send_welcome("localhost", tlsmta_relay.port, "bob@example.org", ca=tlsmta_relay.ca_pem)
    assert tlsmta_relay.messages == []


@pytest.mark.tlsmta_relay(tag_rules=["welcome=subject:welcome"])
def test_wait_for_a_tag(tlsmta_relay):
    send_welcome(tlsmta_relay.host, tlsmta_relay.port, "bob+signup@example.org")
    msg = tlsmta_relay.wait_for(tag="signup", timeout=5)
    assert msg.tags == ("signup", "welcome") and tlsmta_relay.wait_for(tag="welcome").id == msg.id
    with pytest.raises(AssertionError, match="tag='nothing' within"):
        tlsmta_relay.wait_for(tag="nothing", timeout=0.2)


def test_app_sees_the_failure_the_relay_was_told_to_give(tlsmta_relay):
    import smtplib

    tlsmta_relay.fail(stage="RCPT", code=452, times=1)
    with pytest.raises(smtplib.SMTPRecipientsRefused, match="452"):
        send_welcome(tlsmta_relay.host, tlsmta_relay.port, "bob@example.org")
    send_welcome(tlsmta_relay.host, tlsmta_relay.port, "bob@example.org")  # times=1: the next one goes through
    rule = tlsmta_relay.fail(stage="DATA", code=554, text="spam", status="5.7.1", recipient="*@blocked.test")
    with pytest.raises(smtplib.SMTPDataError, match="spam"):
        send_welcome(tlsmta_relay.host, tlsmta_relay.port, "eve@blocked.test")
    tlsmta_relay.remove_failure(rule)
    send_welcome(tlsmta_relay.host, tlsmta_relay.port, "eve@blocked.test")
    assert [m.recipients for m in tlsmta_relay.messages] == [("bob@example.org",), ("eve@blocked.test",)]


def test_app_with_a_password_sends_and_the_user_is_recorded(tlsmta_relay):
    import smtplib

    with smtplib.SMTP(tlsmta_relay.host, tlsmta_relay.port, timeout=10) as client:
        client.login("shop", "any password will do")
        client.sendmail("shop@example.com", ["bob@example.org"], b"Subject: pw\\r\\n\\r\\nhi\\r\\n")
    assert tlsmta_relay.wait_for(subject="pw").auth_user == "shop"
    send_welcome(tlsmta_relay.host, tlsmta_relay.port, "bob@example.org")
    assert tlsmta_relay.wait_for(subject="Welcome").auth_user is None


@pytest.mark.tlsmta_relay(http=True)
def test_web_page_is_there_when_asked_for(tlsmta_relay):
    import json
    import urllib.request

    send_welcome(tlsmta_relay.host, tlsmta_relay.port, "bob@example.org")
    tlsmta_relay.wait_for(to="bob@example.org")
    with urllib.request.urlopen(f"http://127.0.0.1:{tlsmta_relay.http_port}/api/messages", timeout=10) as response:
        assert json.load(response)["count"] == 1
'''

INI = """[pytest]
filterwarnings =
    error
"""


def run_application_suite(tmp_path: Any, files: dict[str, str]) -> str:
    """Write an application's files and run its test suite in a separate pytest (no pytest-twisted);
    its output, after checking that it passed."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text(INI)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:twisted", "-p", "no:cacheprovider", "-q", "-rA", "--timeout=60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_application_suite_uses_the_fixture(tmp_path: Any) -> None:
    """A synchronous application test suite passes using tlsmta_relay: wait_for, messages, clear,
    TLS facts, a TLS lab marker, wait_for(tag=...), failures on purpose (fail), AUTH with any password,
    the web page; each test gets its own relay."""
    out = run_application_suite(tmp_path, {"app.py": APP, "test_app.py": APP_TESTS})
    assert "8 passed" in out, out


def test_a_failing_application_test_fails(tmp_path: Any) -> None:
    """The fixture's assertion reaches the application's test report (wait_for on a mail never sent)."""
    (tmp_path / "test_nothing.py").write_text(
        "def test_expects_mail(tlsmta_relay):\n    tlsmta_relay.wait_for(to='bob@example.org', timeout=0.2)\n"
    )
    (tmp_path / "pytest.ini").write_text(INI)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:twisted", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "AssertionError: no message to='bob@example.org' sender=None subject=None within 0.2s; received: nothing" in proc.stdout
