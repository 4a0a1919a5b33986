"""Per-recipient results of a delivery attempt: one Reply from the wire to the ``delivery`` event.

:func:`tlsmta.delivery._pool.results_for` and :func:`outcome_of` are pure;
``OutboundPool.log_job`` runs on a :class:`twisted.internet.task.Clock` so the
logged delay is the pool's clock, not the machine's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from tlsmta.config._routes import parse_route
from tlsmta.delivery._pool import Attempt, DeliveryJob, OutboundPool, RecipientResult, outcome_of, results_for
from tlsmta.discovery._resolver import OfflineBackend, Resolver
from tlsmta.reporting import _events as events
from tlsmta.smtp._reply import Reply
from tlsmta.storage._spool import BOUNCED, DELIVERED, PENDING, QueuedMessage, RecipientState
from tlsmta.tls._hooks import load_hooks

RECEIVED = 1_700_000_000.0


def job(*addresses: str) -> DeliveryJob:
    rcpts = tuple(RecipientState(a, parse_route("mx")) for a in addresses)
    message = QueuedMessage("m1", "alice@example.org", list(rcpts), RECEIVED, attempts=2)
    return DeliveryJob(message, rcpts, parse_route("mx"), "example.com", "default")


BUS = events.EventBus()


def _events_named(name: str) -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def sink(event: str, fields: dict[str, Any]) -> None:
        if event == name:
            seen.append(fields)

    BUS.add_sink(sink)
    yield seen
    BUS.remove_sink(sink)


@pytest.fixture
def delivery_events() -> Iterator[list[dict[str, Any]]]:
    """The ``delivery`` lines: one per recipient."""
    yield from _events_named("delivery")


@pytest.fixture
def attempt_events() -> Iterator[list[dict[str, Any]]]:
    """The quiet ``attempt`` events (the metrics' input): one per attempt."""
    yield from _events_named("attempt")


def pool_at(now: float) -> OutboundPool:
    clock = Clock()
    clock.advance(now)
    return OutboundPool(clock, Resolver({}, OfflineBackend()), None, None, "sender.test", load_hooks({}), max_connections=0,
                        events=BUS)


@pytest.mark.parametrize("code, outcome", [(250, DELIVERED), (251, DELIVERED), (354, PENDING), (421, PENDING),
                                           (451, PENDING), (550, BOUNCED), (554, BOUNCED), (600, PENDING)])
def test_outcome_of_a_reply_or_its_code(code, outcome):
    """2xx delivered, 5xx bounced, anything else deferred, whether given the Reply or its code."""
    assert outcome_of(code) == outcome
    assert outcome_of(Reply.of(code, None, "text")) == outcome


def test_results_for_gives_every_recipient_the_reply_as_a_value():
    """Each recipient carries the same Reply (not its text) and the host separately."""
    reply = Reply.of(550, "5.7.1", ["relay denied", "see policy"])
    results = results_for(job("a@example.com", "b@example.com"), reply, "mx.example.com")
    assert results == [RecipientResult("a@example.com", BOUNCED, reply, "mx.example.com"),
                       RecipientResult("b@example.com", BOUNCED, reply, "mx.example.com")]
    assert results[0].reply.enhanced == "5.7.1" and results[0].reply.lines == reply.lines


def test_log_job_logs_the_worst_reply_code_status_and_text(attempt_events):
    """The attempt's code, status and text are the first undelivered recipient's Reply."""
    j = job("a@example.com", "b@example.com")
    results = [RecipientResult("a@example.com", DELIVERED, Reply.of(250, "2.0.0", "ok"), "mx.example.com"),
               RecipientResult("b@example.com", PENDING, Reply.of(451, "4.7.5", "certificate expired"), "mx.example.com")]
    pool_at(RECEIVED).log_job(j, None, None, results)
    [event] = attempt_events
    assert (event["code"], event["status"], event["text"]) == (451, "4.7.5", "4.7.5 certificate expired")
    assert (event["result"], event["delivered"], event["deferred"], event["bounced"]) == ("deferred", 1, 1, 0)
    assert event["attempt"] == 3


def test_log_job_logs_each_recipient_with_its_own_reply(delivery_events):
    """A mixed result is one ``delivery`` line per recipient, not one collapsed line."""
    j = attrs.evolve(job("a@example.com", "b@example.com"), message=attrs.evolve(job().message, message_id_header="<x@y>"))
    results = [RecipientResult("a@example.com", DELIVERED, Reply.of(250, "2.0.0", "ok"), "mx.example.com"),
               RecipientResult("b@example.com", BOUNCED, Reply.of(550, "5.1.1", "no such user"), "mx.example.com")]
    pool_at(RECEIVED).log_job(j, None, Attempt("mx.example.com", "192.0.2.1", 25), results)
    assert [(e["to"], e["result"], e["code"], e["status"], e["text"]) for e in delivery_events] == [
        ("<a@example.com>", "delivered", 250, "2.0.0", "2.0.0 ok"),
        ("<b@example.com>", "bounced", 550, "5.1.1", "5.1.1 no such user"),
    ]
    assert {(e["msgid"], e["message_id"], e["relay"], e["port"], e["tls"]) for e in delivery_events} == {
        ("m1", "<x@y>", "mx.example.com[192.0.2.1]:25", 25, "none")}


def test_log_job_without_enhanced_status(delivery_events):
    """A reply without an RFC 3463 code logs none, and its text as sent."""
    pool_at(RECEIVED).log_job(job("a@example.com"), None, None, results_for(job("a@example.com"), Reply.of(554, None, "go away")))
    [event] = delivery_events
    assert (event["code"], event["status"], event["text"], event["result"]) == (554, None, "go away", "bounced")


def test_logged_delay_is_by_the_pools_clock(delivery_events):
    """``delay`` is the pool's (reactor's) time since receipt, not the machine's wall clock."""
    pool = pool_at(RECEIVED + 90.25)
    j = job("a@example.com")
    pool.log_job(j, None, None, results_for(j, Reply.of(250, "2.0.0", "ok")))
    pool.reactor.advance(3600)
    pool.log_job(j, None, None, results_for(j, Reply.of(250, "2.0.0", "ok")))
    assert [e["delay"] for e in delivery_events] == [90.25, 3690.25]
