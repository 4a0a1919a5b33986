"""Outbound timeouts as options (issue 16), against real loopback servers that stall:
one that accepts and never greets, one that never answers the end of DATA."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from e2e import in_thread, send_smtplib
from outbound_lab import DOMAIN, deliveries, start_sender
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

# Long enough not to fire on a loaded machine's pause, far below every default (300 s, 600 s).
TIMEOUT = 0.5
BOUND = 30  # seconds the test waits at most for the queue to settle
# The reactor may run a delayed call a little before its time (epoll waits in whole
# milliseconds, and the clock is read before and after): not waiting means well under this.
EARLY = 0.01


class StallingSMTP(LineReceiver):
    """``silent``: accepts and says nothing; ``after-data``: a normal server that takes the
    whole body and then never answers the final dot."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.in_data = False
        if self.factory.mode != "silent":
            self.sendLine(b"220 stalling.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.factory.bodies += 1  # and no reply
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-stalling.test")
            self.sendLine(b"250 PIPELINING")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go ahead")
        else:
            self.sendLine(b"250 2.0.0 ok")


class StallingFactory(Factory):
    protocol = StallingSMTP
    noisy = False

    def __init__(self, mode: str):
        self.mode = mode
        self.connections = 0
        self.bodies = 0


async def deliver_to_stalling(tmp_path: Any, mode: str, **timeouts: Any) -> tuple[StallingFactory, list, float]:
    """One message to a stalling server; (its factory, the messages still queued, seconds taken)."""
    factory = StallingFactory(mode)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    sender = await start_sender(tmp_path, port.getHost().port, None, tls="no", **timeouts)
    try:
        await in_thread(send_smtplib, sender.port, rcpts=(f"user@{DOMAIN}",))
        started = reactor.seconds()
        await sender.service.queue.wait_idle().addTimeout(BOUND, reactor)
        taken = reactor.seconds() - started
        queued = list(sender.service.queue.messages.values())
    finally:
        await sender.stop()
        await port.stopListening()
    return factory, queued, taken


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_greets_is_given_up_after_greeting_timeout(tmp_path: Any, events: list) -> None:
    """greeting_timeout = "0.5s": deferred with a timeout reason in well under the 300 s default,
    and the message stays queued."""
    factory, queued, taken = await deliver_to_stalling(tmp_path, "silent", greeting_timeout=f"{TIMEOUT}s")
    [event] = deliveries(events)
    assert event["result"] == "deferred"
    assert event["text"].startswith("4.4.2") and "timeout after 0.5s waiting for the greeting" in event["text"]
    assert factory.connections == 1
    assert TIMEOUT - EARLY <= taken < BOUND
    [message] = queued
    assert message.pending and "waiting for the greeting" in message.pending[0].last
    assert message.pending[0].ours  # tlsmta's verdict: a DSN types it X-tlsmta


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_the_final_dot_times_out_after_data_end_timeout(
    tmp_path: Any, events: list
) -> None:
    """data_end_timeout = 0.5: the body was sent, no reply came; deferred (never delivered twice
    silently nor lost) with the DATA-end timeout named."""
    factory, queued, taken = await deliver_to_stalling(tmp_path, "after-data", data_end_timeout=TIMEOUT)
    [event] = deliveries(events)
    assert event["result"] == "deferred"
    assert "timeout after 0.5s waiting for the reply to the end of DATA" in event["text"]
    assert factory.bodies == 1
    assert TIMEOUT - EARLY <= taken < BOUND
    [message] = queued
    assert message.pending


def test_timeouts_and_queue_options_are_checked_naming_file_table_and_key(tmp_path: Any) -> None:
    """Durations are seconds or "30s"/"10m"/"4h"/"5d"; anything else is one problem naming where."""
    from tlsmta.config import ConfigError, load, resolve

    path = tmp_path / "t.toml"
    path.write_text('[global]\ngreeting_timeout = "2m"\n[domain."slow.example"]\ndata_end_timeout = "20m"\n'
                    '[queue]\ndelay_warning_time = "4h"\nsoft_bounce = true\n')
    config = load(str(path))
    assert resolve(config, "slow.example")["data_end_timeout"].value == 1200
    assert resolve(config, "slow.example")["greeting_timeout"].value == 120
    assert resolve(config, "other.example")["data_end_timeout"].value == 600  # the default
    assert (config.queue["delay_warning_time"], config.queue["soft_bounce"]) == (4 * 3600, True)

    path.write_text('[domain."slow.example"]\ncommand_timeout = "5 years"\n')
    try:
        load(str(path))
    except ConfigError as e:
        [problem] = e.problems
    else:
        raise AssertionError("loaded")
    assert str(problem).startswith(f'{path}: [domain."slow.example"] command_timeout: must be seconds or a duration')
