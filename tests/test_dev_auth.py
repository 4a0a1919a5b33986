"""AUTH in dev mode: any credentials (PLAIN, LOGIN, CRAM-MD5) or the dev users file, and the user
recorded with the message, in the session, over loopback with smtplib and swaks, and in the API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import smtplib
import subprocess
from typing import Any

import pytest
import pytest_twisted
from e2e import CLIENT_TIMEOUT, in_thread
from test_server_session import Driver
from test_webui import HTTP_ENDPOINT, web, welcome

from tlsmta.inbound import hash_password
from tlsmta.smtp._sasl import decode_cram_md5
from tlsmta.smtp.server_session import CheckCredentials, ServerSettings
from tlsmta.testing import RunningRelay, build_config, dev_listener

ANY = ("PLAIN", "LOGIN", "CRAM-MD5")


def test_cram_md5_exchange_asks_with_the_challenge_and_digest() -> None:
    """CRAM-MD5 (RFC 2195): a 334 challenge <random@host>, then the question carries user, challenge, digest."""
    settings = ServerSettings(hostname="mx.test", auth_available=True, auth_requires_tls=False, auth_mechanisms=ANY)
    d = Driver(settings, {CheckCredentials: lambda session, q: session.credentials_accepted(q.user)})
    assert d.replies(b"EHLO app.test\r\n")[0].endswith(" AUTH PLAIN LOGIN CRAM-MD5")
    (challenge_reply,) = d.replies(b"AUTH CRAM-MD5\r\n")
    code, encoded = challenge_reply.split(" ", 1)
    challenge = base64.b64decode(encoded).decode()
    assert code == "334" and challenge.startswith("<") and challenge.endswith("@mx.test>")
    digest = hmac.new(b"secret", challenge.encode(), hashlib.md5).hexdigest()
    events = d.feed(base64.b64encode(f"app user {digest}".encode()) + b"\r\n")
    questions = [e for e in events if isinstance(e, CheckCredentials)]
    assert questions == [CheckCredentials("app user", "", (challenge, digest))]
    assert d.session.authenticated_as == "app user"


def test_cram_md5_is_refused_where_not_offered() -> None:
    """With a users file of hashes (PLAIN, LOGIN only), AUTH CRAM-MD5 is 504."""
    d = Driver(ServerSettings(hostname="mx.test", auth_available=True, auth_requires_tls=False))
    d.feed(b"EHLO app.test\r\n")
    assert d.codes(b"AUTH CRAM-MD5\r\n") == [504]


@pytest.mark.parametrize("response", [b"bm9zcGFjZQ==", b"dXNlciB6eno=", b"!!"])
def test_malformed_cram_md5_responses(response: bytes) -> None:
    """No space, a digest that is not 32 hex digits, or not base64: None (answered 501)."""
    assert decode_cram_md5(response) is None


async def auth_relay(tmp_path: Any, **dev: Any) -> RunningRelay:
    """A plain-text dev relay with [dev] auth (AUTH allowed without TLS) and the web page."""
    raw = {
        "global": {"hostname": "localhost", "state_dir": str(tmp_path / "state"), "route": f"maildir:{tmp_path / 'maildir'}"},
        "listener": [dev_listener(name="dev", require_tls_for_auth=False)],
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"endpoint": HTTP_ENDPOINT},
        "dev": {"auth": True, **dev},
    }
    return await RunningRelay(build_config(raw)).start()


def login(port: int, user: str, password: str, mechanism: str) -> None:
    """smtplib AUTH with one mechanism (smtplib keeps user/password for its auth_* callbacks), then send."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo("app.test")
        client.user, client.password = user, password
        client.auth(mechanism, getattr(client, "auth_" + mechanism.lower().replace("-", "_")), initial_response_ok=False)
        client.send_message(welcome(subject=f"via {mechanism}"), from_addr="app@example.com")
        client.quit()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_any_credentials_with_each_mechanism_and_the_user_is_recorded(tmp_path: Any) -> None:
    """PLAIN, LOGIN and CRAM-MD5 with made-up credentials all send; the API shows who authenticated."""
    relay = await auth_relay(tmp_path)
    try:
        for mechanism in ANY:
            await in_thread(login, relay.port, f"user-{mechanism}", "whatever", mechanism)
        assert relay.http_port is not None
        listing = json.loads((await in_thread(web, relay.http_port, "GET", "/api/messages"))[2])
        users = {m["subject"]: m["receipt"]["auth_user"] for m in listing["messages"]}
        assert users == {"via PLAIN": "user-PLAIN", "via LOGIN": "user-LOGIN", "via CRAM-MD5": "user-CRAM-MD5"}
        detail = json.loads((await in_thread(web, relay.http_port, "GET", f"/api/messages/{listing['messages'][0]['id']}"))[2])
        assert detail["receipt"]["auth_user"].startswith("user-") and detail["receipt"]["smtp"] == "ESMTPA"
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_swaks_auth_with_any_password(tmp_path: Any) -> None:
    """swaks --auth (it picks CRAM-MD5 when offered) with an invented password is 235, and the mail is stored."""
    relay = await auth_relay(tmp_path)
    try:
        done = await in_thread(subprocess.run, [
            "swaks", "--server", "127.0.0.1", "--port", str(relay.port), "--from", "app@example.com",
            "--to", "bob@example.org", "--auth", "--auth-user", "shop", "--auth-password", "not-checked",
            "--timeout", str(CLIENT_TIMEOUT)], capture_output=True, text=True, timeout=CLIENT_TIMEOUT * 2)
        assert done.returncode == 0, done.stdout
        assert "235 2.7.0 Authentication successful" in done.stdout and "250 2.0.0 Ok: queued as" in done.stdout
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_dev_users_file_means_real_credentials(tmp_path: Any) -> None:
    """[dev] auth_users_file: the right password sends, a wrong one is 535, and CRAM-MD5 is not offered."""
    users = tmp_path / "users"
    users.write_text(f"shop:{hash_password('s3cret')}\n")
    relay = await auth_relay(tmp_path, auth_users_file=str(users))
    try:
        await in_thread(login, relay.port, "shop", "s3cret", "PLAIN")
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            await in_thread(login, relay.port, "shop", "wrong", "LOGIN")
        assert caught.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            await in_thread(login, relay.port, "shop", "s3cret", "CRAM-MD5")
        assert refused.value.smtp_code == 504
    finally:
        await relay.stop()


def open_relay_config(tmp_path: Any, endpoint: str, route: str, **dev: Any) -> dict[str, Any]:
    return {
        "global": {"hostname": "localhost", "state_dir": str(tmp_path / "state"), "route": route},
        "listener": [dev_listener(name="public", endpoint=endpoint)],
        "spool": {"path": str(tmp_path / "spool")},
        "dev": {"auth": True, **dev},
    }


@pytest.mark.parametrize("endpoint", ["tcp:0", "tcp:0:interface=0.0.0.0", "haproxy:tcp:0:interface=192.0.2.1"])
def test_any_credentials_auth_off_loopback_with_mail_routed_out_is_refused(tmp_path: Any, endpoint: str) -> None:
    """[dev] auth accepts any password and AUTH may relay: on a public address with an mx route that is an
    open relay, so check-config names [dev] auth and the listener."""
    from tlsmta.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        build_config(open_relay_config(tmp_path, endpoint, "mx"), "dev.toml")
    assert "dev.toml: [dev] auth: accepts any user and password, and listener 'public' is not on loopback" in str(caught.value)
    raw = open_relay_config(tmp_path, endpoint, f"maildir:{tmp_path / 'maildir'}")
    raw["domain"] = {"example.org": {"route": "smtp:[192.0.2.7]:25"}}
    with pytest.raises(ConfigError, match=r"\[dev\] auth: accepts any user"):
        build_config(raw, "dev.toml")


@pytest.mark.parametrize(("endpoint", "route", "dev"), [
    ("tcp:0:interface=127.0.0.1", "mx", {}),  # loopback only
    ("tcp6:0:interface=\\:\\:1", "mx", {}),
    ("tcp:0", "maildir:{tmp}/maildir", {}),  # a capture: nothing leaves (a dev relay in a container)
    ("tcp:0", "discard", {}),
    ("tcp:0", "mx", {"auth_users_file": "{users}"}),  # real passwords
])
def test_any_credentials_auth_that_cannot_relay_out_is_allowed(tmp_path: Any, endpoint: str, route: str,
                                                                dev: dict[str, str]) -> None:
    users = tmp_path / "users"
    users.write_text(f"app:{hash_password('pw')}\n")
    dev = {key: value.format(users=users) for key, value in dev.items()}
    build_config(open_relay_config(tmp_path, endpoint, route.format(tmp=tmp_path), **dev))
