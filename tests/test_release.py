"""Releasing a captured message to a real smarthost, under the configured TLS policy."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, maildir_messages
from outbound_lab import deliveries, start_receiver
from test_webui import CLIENT_TIMEOUT, get_json, send, web, welcome

from tlsmta.devrelay._mailview import Receipt, envelope_of, summary
from tlsmta.devrelay._release import ReleaseError, outgoing_body, release_message, smarthost_route
from tlsmta.testing import RunningRelay, build_config, dev_listener

SMARTHOST = "mx.example.test"


def test_outgoing_body_drops_local_delivery_lines_and_restores_crlf() -> None:
    """The released bytes are the message as received: no Return-Path/Delivered-To, CRLF line ends."""
    stored = b"Return-Path: <a@x.test>\nDelivered-To: b@y.test\nReceived: from x\nSubject: hi\n\nbody\n"
    assert outgoing_body(stored) == b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.mark.parametrize("smarthost", [None, "", 25, "bad host:25", "[127.0.0.1", "relay.example:99999"])
def test_bad_smarthost_is_refused(smarthost: Any) -> None:
    """The smarthost must be HOST[:PORT]."""
    with pytest.raises(ReleaseError):
        smarthost_route(smarthost)


def test_smtps_smarthost_is_implicit_tls() -> None:
    """"smtps:HOST[:PORT]" is a smarthost spoken to over implicit TLS; a plain HOST[:PORT] stays STARTTLS."""
    assert smarthost_route("smtps:relay.example").implicit_tls
    assert smarthost_route("SMTPS:relay.example:4650").port == 4650
    assert not smarthost_route("relay.example:465").implicit_tls
    with pytest.raises(ReleaseError):
        smarthost_route("smtps:bad host")


def test_release_needs_recipients() -> None:
    route = smarthost_route("relay.example:587")
    assert str(route) == "smtp:relay.example:587"
    with pytest.raises(ReleaseError, match='"to" must be a non-empty list'):
        release_message("a@x.test", [], route)
    queued = release_message("a@x.test", ["b@y.test"], route)
    assert [(r.address, r.route) for r in queued.recipients] == [("b@y.test", route)]


# Local delivery writes Return-Path, then Delivered-To per recipient, then the message
# as received, which starts with tlsmta's own Received: header; anything below is the author's.
AUTHORED = (
    b"Return-Path: <app@example.com>\nDelivered-To: bob@example.org\nDelivered-To: carol@example.net\n"
    b"Received: from client.test ([127.0.0.1])\n\tby localhost (tlsmta) with ESMTP id X; Wed, 25 Nov 2026 21:00:00 +0000\n"
    b"From: app@example.com\nDelivered-To: attacker@evil.test\nDelivered-To: x@evil.test\n\tRSET\n"
    b"Subject: hi\n\nbody\n"
)


def test_envelope_is_only_the_leading_block_local_delivery_wrote() -> None:
    """Delivered-To lines the message's author wrote (below our Received:) are not envelope recipients,
    in the release default nor in the web page's envelope."""
    assert envelope_of(AUTHORED) == ("app@example.com", ["bob@example.org", "carol@example.net"])
    assert summary("k", AUTHORED, 0.0, Receipt())["envelope"] == {"from": "app@example.com", "to": ["bob@example.org", "carol@example.net"]}
    assert outgoing_body(AUTHORED).startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    # Raw bytes, not MIME-decoded: an encoded-word is an (odd but valid) local part, not a line break.
    odd = b"Return-Path: <>\nDelivered-To: =?utf-8?q?a=0D=0ARSET?=@example.org\nReceived: x\n\nb\n"
    assert envelope_of(odd) == ("", ["=?utf-8?q?a=0D=0ARSET?=@example.org"])


def test_folded_local_line_is_kept_with_its_field() -> None:
    """A continuation line (never written by local delivery) belongs to the field above it: it is not
    released as the message's first line, and the address it makes is refused."""
    stored = b"Return-Path: <a@x.test>\nDelivered-To: x@evil.test\n\tRSET\nReceived: from x\n\nbody\n"
    sender, recipients = envelope_of(stored)
    assert recipients == ["x@evil.test\tRSET"]
    assert outgoing_body(stored) == b"Received: from x\r\n\r\nbody\r\n"
    with pytest.raises(ReleaseError, match="not a valid recipient address"):
        release_message(sender, recipients, smarthost_route("relay.example"), "the stored Delivered-To lines")


@pytest.mark.parametrize(
    "to",
    [
        ["x@evil.test\tRSET"],
        ["x@evil.test\r\nRSET"],
        ["x@evil.test RSET"],
        ["ok@example.org", "a@b.test> NOTIFY=NEVER"],
        ["a@b.test>"],
        ["<a@b.test>"],
        ["@relay.test:a@b.test"],  # a source route: not what was asked for
        ["no-at-sign"],
        ["postmaster"],
        ["a@"],
        ["a@-bad-.test"],
        [""],
        [None],
        "a@b.test",  # not a list
        {"a@b.test": 1},
    ],
)
def test_release_refuses_addresses_inbound_would_refuse(to: Any) -> None:
    """Every release recipient must pass the RCPT TO grammar inbound uses, exactly as given."""
    with pytest.raises(ReleaseError) as raised:
        release_message("a@x.test", to, smarthost_route("relay.example"))
    assert '"to"' in str(raised.value)


def test_release_accepts_rcpt_grammar_including_smtputf8() -> None:
    route = smarthost_route("relay.example")
    to = ["b@y.test", '"quoted local"@y.test', "jörg@bücher.example", "u@[192.0.2.1]"]
    assert [r.address for r in release_message("", to, route).recipients] == to
    with pytest.raises(ReleaseError, match="Return-Path"):
        release_message("a@x.test\r\nRSET", ["b@y.test"], route)


async def dev_relay(tmp_path: Any, ca: str) -> RunningRelay:
    """A dev relay with the web page whose outbound policy is tls = required, tls_verify = host."""
    raw = {
        "global": {"hostname": "localhost", "state_dir": str(tmp_path / "state"), "route": f"maildir:{tmp_path / 'maildir'}",
                   "tls": "required", "tls_verify": "host", "tls_ca": ca},
        "listener": [dev_listener(name="dev")],
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"endpoint": "tcp:0:interface=127.0.0.1"},
        "dns": {"hosts": {SMARTHOST: ["127.0.0.1"]}},  # a name the receiver's certificate has
    }
    return await RunningRelay(build_config(raw)).start()


async def release(relay: RunningRelay, body: dict[str, Any]) -> tuple[int, Any]:
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    status, _, answer = await in_thread(web, relay.http_port, "POST", f"/api/messages/{entry['id']}/release",
                                        json.dumps(body).encode(), {"Content-Type": "application/json"})
    return status, json.loads(answer)


@pytest_twisted.ensureDeferred
async def test_release_delivers_over_verified_tls(tmp_path: Any, pki: Any, events: list) -> None:
    """POST release: the copy goes to the smarthost over STARTTLS, verified (tls_verify = host)."""
    receiver = await start_receiver(tmp_path, pki.good)
    relay = await dev_relay(tmp_path, pki.ca_pem)
    try:
        await in_thread(send, relay.port, welcome())
        status, answer = await release(relay, {"smarthost": f"{SMARTHOST}:{receiver.port}", "to": ["carol@example.net"]})
        assert status == 202 and answer["to"] == ["carol@example.net"]
        assert answer["route"] == f"smtp:{SMARTHOST}:{receiver.port}"
        await relay.service.queue.wait_idle()
    finally:
        await relay.stop()
        await receiver.stop()
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["tls_verify"], event["verified"]) == ("delivered", "tls", "host", "yes")
    [copy] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert copy["Delivered-To"] == "carol@example.net" and copy["Return-Path"] == "<app@example.com>"
    assert copy["Subject"] == "Welcome, Bob"
    assert len(copy.get_all("Received")) == 2  # the dev relay's and the smarthost's; no stale Delivered-To
    assert len(maildir_messages(str(tmp_path / "maildir"))) == 1  # the captured one stays


@pytest_twisted.ensureDeferred
async def test_release_to_an_smtps_smarthost(tmp_path: Any, pki: Any, events: list) -> None:
    """POST release with "smtps:HOST:PORT": delivered over implicit TLS (handshake before the greeting), verified."""
    receiver = await start_receiver(tmp_path, None, tls="implicit", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    relay = await dev_relay(tmp_path, pki.ca_pem)
    try:
        await in_thread(send, relay.port, welcome())
        status, answer = await release(relay, {"smarthost": f"smtps:{SMARTHOST}:{receiver.port}"})
        assert (status, answer["route"]) == (202, f"smtps:{SMARTHOST}:{receiver.port}")
        await relay.service.queue.wait_idle()
    finally:
        await relay.stop()
        await receiver.stop()
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["tls_mode"], event["verified"]) == ("delivered", "tls", "implicit", "yes")
    assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 1


@pytest_twisted.ensureDeferred
async def test_release_obeys_the_tls_policy(tmp_path: Any, pki: Any, events: list) -> None:
    """A smarthost whose certificate does not verify under the configured tls_ca gets nothing: 4.7.5, queued."""
    receiver = await start_receiver(tmp_path, pki.good)
    relay = await dev_relay(tmp_path, pki.other_ca_pem)
    try:
        await in_thread(send, relay.port, welcome())
        status, _ = await release(relay, {"smarthost": f"{SMARTHOST}:{receiver.port}"})
        assert status == 202
        await relay.service.queue.wait_idle()
        assert len(relay.service.queue.messages) == 1  # deferred, still queued
    finally:
        await relay.stop()
        await receiver.stop()
    [event] = deliveries(events)
    assert (event["result"], event["code"], event["text"][:5]) == ("deferred", 451, "4.7.5")
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest.mark.parametrize("header", [True, False])
@pytest_twisted.ensureDeferred
async def test_release_carries_tls_required_no(tmp_path: Any, pki: Any, header: bool) -> None:
    """A released copy of a message whose header section says 'TLS-Required: No' is queued with
    that flag (scanned from the copy's bytes, as inbound scans arriving mail), and only then."""
    receiver = await start_receiver(tmp_path, pki.good)
    relay = await dev_relay(tmp_path, pki.other_ca_pem)  # the smarthost fails verification: it stays queued
    message = welcome()
    if header:
        message["TLS-Required"] = "No"
    try:
        await in_thread(send, relay.port, message)
        status, answer = await release(relay, {"smarthost": f"{SMARTHOST}:{receiver.port}"})
        assert status == 202
        await relay.service.queue.wait_idle()
        assert relay.service.queue.messages[answer["queued_as"]].tls_required_no is header
    finally:
        await relay.stop()
        await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_release_refuses_bad_requests(tmp_path: Any, pki: Any) -> None:
    """A bad smarthost is 400, a missing JSON content type 415, an unknown message 404."""
    relay = await dev_relay(tmp_path, pki.ca_pem)
    try:
        await in_thread(send, relay.port, welcome())
        status, answer = await release(relay, {"smarthost": "bad host"})
        assert status == 400 and "is not a host name" in answer["error"]
        status, _, _ = await in_thread(web, relay.http_port, "POST", "/api/messages/none/release", b"{}",
                                       {"Content-Type": "text/plain"})
        assert status == 415
        status, _, _ = await in_thread(web, relay.http_port, "POST", "/api/messages/none/release",
                                       b'{"smarthost": "relay.example"}', {"Content-Type": "application/json"})
        assert status == 404
        assert relay.service.queue.messages == {}
    finally:
        await relay.stop()


def _send_authored(port: int) -> None:
    """A message whose author wrote Delivered-To headers, one of them folded."""
    import smtplib

    msg = (
        "From: app@example.com\r\nTo: bob@example.org\r\nDelivered-To: attacker@evil.test\r\n"
        "Delivered-To: x@evil.test\r\n\tRSET\r\nSubject: hi\r\n\r\nbody\r\n"
    )
    client = smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        client.sendmail("app@example.com", ["bob@example.org"], msg)
        client.quit()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_release_default_is_the_real_envelope_not_author_headers(tmp_path: Any, pki: Any) -> None:
    """Release without "to" goes to the envelope recipients local delivery recorded, never to
    Delivered-To addresses the author wrote; a bad address in the request is 400 and queues nothing."""
    receiver = await start_receiver(tmp_path, pki.good)
    relay = await dev_relay(tmp_path, pki.ca_pem)
    try:
        await in_thread(_send_authored, relay.port)
        smarthost = f"{SMARTHOST}:{receiver.port}"
        status, answer = await release(relay, {"smarthost": smarthost, "to": ["x@evil.test\tRSET"]})
        assert status == 400 and "'x@evil.test\\tRSET' is not a valid recipient address" in answer["error"], answer
        assert relay.service.queue.messages == {}
        status, answer = await release(relay, {"smarthost": smarthost})
        assert status == 202 and answer["to"] == ["bob@example.org"], answer
        [queued] = relay.service.queue.messages.values()
        assert [r.address for r in queued.recipients] == ["bob@example.org"]
        await relay.service.queue.wait_idle()
    finally:
        await relay.stop()
        await receiver.stop()
    [copy] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert copy.get_all("Delivered-To")[0] == "bob@example.org"  # the receiver's own local delivery line


@pytest_twisted.ensureDeferred
async def test_release_state_is_shown_per_release(tmp_path: Any, pki: Any) -> None:
    """GET one message lists its releases: queued at once, then deferred (with the reply) when the
    smarthost's certificate fails the policy; delivered when it verifies."""
    receiver = await start_receiver(tmp_path, pki.good)
    relay = await dev_relay(tmp_path, pki.other_ca_pem)
    try:
        await in_thread(send, relay.port, welcome())
        status, answer = await release(relay, {"smarthost": f"{SMARTHOST}:{receiver.port}"})
        assert status == 202 and answer["state"] == "queued"
        await relay.service.queue.wait_idle()
        [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
        [deferred] = (await in_thread(get_json, relay.http_port, f"/api/messages/{entry['id']}"))["releases"]
    finally:
        await relay.stop()
        await receiver.stop()
    assert deferred["queued_as"] == answer["queued_as"] and deferred["smarthost"] == f"smtp:{SMARTHOST}:{receiver.port}"
    assert deferred["state"] == "deferred" and deferred["recipients"] == {"bob@example.org": "deferred"}
    assert deferred["last"].startswith("451 4.7.5")


def embedded_dev_relay(tmp_path: Any) -> dict[str, Any]:
    """The dev relay's own configuration file (what `twistd -n tlsmta` runs), on free ports in tmp_path."""
    import tomllib

    from tlsmta.app.tap import dev_relay_path

    with open(dev_relay_path(), "rb") as f:
        raw = tomllib.load(f)
    raw["global"].update(state_dir=str(tmp_path / "state"), route=f"maildir:{tmp_path / 'maildir'}")
    raw["spool"]["path"] = str(tmp_path / "spool")
    raw["listener"][0]["endpoint"] = raw["http"]["endpoint"] = "tcp:0:interface=127.0.0.1"
    raw["dns"] = {"hosts": {SMARTHOST: ["127.0.0.1"]}}
    return raw


@pytest_twisted.ensureDeferred
async def test_dev_relay_releases_over_starttls_when_offered_without_verifying(tmp_path: Any, pki: Any, events: list) -> None:
    """The embedded dev relay: Release uses STARTTLS when the smarthost offers it (its certificate
    from a CA the relay does not know: not verified, delivered) and plain text when it does not."""
    tls_receiver = await start_receiver(tmp_path, pki.good, name="tls")
    plain_receiver = await start_receiver(tmp_path, name="plain")
    relay = await RunningRelay(build_config(embedded_dev_relay(tmp_path))).start()
    try:
        await in_thread(send, relay.port, welcome())
        for receiver in (tls_receiver, plain_receiver):
            status, _ = await release(relay, {"smarthost": f"{SMARTHOST}:{receiver.port}"})
            assert status == 202
        await relay.service.queue.wait_idle()
        [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
        releases = (await in_thread(get_json, relay.http_port, f"/api/messages/{entry['id']}"))["releases"]
    finally:
        await relay.stop()
        await tls_receiver.stop()
        await plain_receiver.stop()
    by_port = {event["port"]: event for event in deliveries(events)}
    assert (by_port[tls_receiver.port]["result"], by_port[tls_receiver.port]["tls"]) == ("delivered", "tls")
    assert by_port[tls_receiver.port]["tls_verify"] == "no"
    assert (by_port[plain_receiver.port]["result"], by_port[plain_receiver.port]["tls"]) == ("delivered", "none")
    assert [(r["state"], r["tls"]) for r in releases] == [("delivered", "tls"), ("delivered", "none")]
