"""Per-destination back-off (issue 16): pure rules on a fake clock, then one real loopback
destination that keeps closing the connection."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from e2e import in_thread, send_smtplib
from outbound_lab import DOMAIN, deliveries, start_sender
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from tlsmta.config._routes import parse_route
from tlsmta.delivery._backoff import Backoff, Policy, destination_key

POLICY = Policy(after=3, first=60.0, cap=400.0)
KEY = destination_key(parse_route("mx"), "example.com")


def test_no_back_off_before_the_limit_then_doubling_to_the_cap():
    backoff, now = Backoff(), 1000.0
    for _ in range(2):
        assert backoff.failed(KEY, now, POLICY, "connection refused") is None
        assert backoff.waiting(KEY, now) is None
    started = backoff.failed(KEY, now, POLICY, "connection refused")
    assert started is not None and (started.until, started.failures) == (now + 60, 3)
    assert backoff.waiting(KEY, now + 59) == started
    assert backoff.waiting(KEY, now + 60) is None  # its time is up: the next attempt may go
    delays, until = [], started.until
    for _ in range(4):
        now = until  # the next attempt, when the back-off ended, fails again
        until = backoff.failed(KEY, now, POLICY, "timeout").until
        delays.append(until - now)
    assert delays == [120, 240, 400, 400]
    assert backoff.waiting(KEY, now).reason == "timeout"


def test_a_success_resets_and_sessions_failing_together_count_once():
    backoff, now = Backoff(), 0.0
    for _ in range(3):
        backoff.failed(KEY, now, POLICY, "refused")
    # max_connections sessions that were already running fail too: no extra doubling.
    assert [backoff.failed(KEY, now + 1, POLICY, "refused").until for _ in range(5)] == [60.0] * 5
    backoff.succeeded(KEY)
    assert backoff.waiting(KEY, now + 1) is None
    assert backoff.failed(KEY, now + 1, POLICY, "refused") is None  # counting starts over


def test_off_and_keys():
    assert Backoff().failed(KEY, 0, Policy(0, 60, 60), "refused") is None
    smarthost = parse_route("smtp:relay.example.net:2525")
    assert destination_key(smarthost, "a.example") == destination_key(smarthost, "b.example")
    assert destination_key(parse_route("mx"), "a.example") != destination_key(parse_route("mx"), "b.example")
    # One LMTP server is one destination, whatever the domains it holds mailboxes for.
    lmtp = parse_route("lmtp:unix:/run/dovecot/lmtp")
    assert destination_key(lmtp, "a.example") == destination_key(lmtp, "b.example")
    assert destination_key(lmtp, "a.example") != destination_key(parse_route("lmtp:127.0.0.1:24"), "a.example")
    backoff = Backoff()
    for _ in range(3):
        backoff.failed(KEY, 0, POLICY, "refused")
    backoff.forget()
    assert backoff.waiting(KEY, 1) is None


class _Hangup(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.transport.loseConnection()


class HangupFactory(Factory):
    protocol = _Hangup
    noisy = False
    connections = 0


@pytest_twisted.ensureDeferred
async def test_a_destination_that_keeps_hanging_up_is_backed_off(tmp_path: Any, events: list) -> None:
    """destination_backoff_after = 2: two sessions find the MX closing the connection; the third
    message is deferred without connecting, until the back-off ends, with the reason said."""
    factory = HangupFactory()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    sender = await start_sender(tmp_path, port.getHost().port, None, tls="no", destination_backoff_after=2,
                                destination_backoff_min="1h")
    try:
        for _ in range(3):
            await in_thread(send_smtplib, sender.port, rcpts=(f"user@{DOMAIN}",))
            await bounded(sender.service.queue.wait_idle())
        queued = list(sender.service.queue.messages.values())
        now = sender.service.queue.now()
    finally:
        await sender.stop()
        await port.stopListening()
    assert factory.connections == 2
    first, second, third = deliveries(events)
    assert first["text"].startswith("4.4.2") and second["text"].startswith("4.4.2")
    assert third["result"] == "deferred" and third["mx"] is None
    assert "backed off until" in third["text"] and "after 2 failed connections" in third["text"]
    backed_off = [m for m in queued if m.attempts == 1 and m.next_attempt > now + 3000]
    assert len(queued) == 3 and len(backed_off) >= 1


def bounded(d: Deferred, seconds: float = 30) -> Deferred:
    return d.addTimeout(seconds, reactor)

