"""At the door of the MX: who is turned away before or beside the SMTP dialogue.

Postfix splits this between postscreen (pregreet test, DNSBL score) and
anvil (connection and message rates); here one :class:`Door` per listener
keeps the rate buckets across sessions and reloads, and gives each
decision with the reason the logs carry.  The pregreet test itself is the
server session's (it sees the early bytes); the shell holds the greeting
for ``pregreet_wait`` and for the DNSBL answers, whichever takes longer.
Clients in ``relay_networks`` are exempt from all of it, as Postfix exempts
``mynetworks``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from tlsmta.config import ListenerConfig
from tlsmta.inbound._dnsbl import DnsblResult, check
from tlsmta.inbound._ratelimit import RateLimiter
from tlsmta.reporting import EventBus
from tlsmta.smtp import Reply

MESSAGE_RATE_EXCEEDED = "message rate limit exceeded"
CONNECTION_RATE_EXCEEDED = "connection rate limit exceeded"


@attrs.frozen
class TurnedAway:
    """A client turned away: the reply it gets and why, for the log."""

    reply: Reply
    reason: str


class Door:
    """One listener's admission decisions; the rate buckets outlive sessions and reloads."""

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self.connections = RateLimiter()
        self.messages = RateLimiter()

    def connection_refusal(self, listener: ListenerConfig, ip: str) -> str | None:
        """None, or why a new connection from ``ip`` is over ``max_connection_rate`` (the shell answers 421 4.7.0)."""
        rate = listener.max_connection_rate
        if rate is None or self.connections.take(ip, rate, self.clock.seconds()):
            return None
        return f"{CONNECTION_RATE_EXCEEDED} ({rate})"

    def message_refusal(self, listener: ListenerConfig, ip: str) -> TurnedAway | None:
        """None, or the 450 for one more MAIL from ``ip`` over ``max_message_rate``."""
        rate = listener.max_message_rate
        if rate is None or self.messages.take(ip, rate, self.clock.seconds()):
            return None
        reply = Reply.of(450, "4.7.1", f"Error: too much mail from {ip}, try again later")
        return TurnedAway(reply, f"{MESSAGE_RATE_EXCEEDED} ({rate})")

    def screen(
        self, listener: ListenerConfig, ip: str, lookup: Callable[[str], Deferred[list[str]]] | None, events: EventBus
    ) -> Deferred[TurnedAway | None]:
        """The DNSBL verdict on ``ip``: None to greet it, or the 554 5.7.1 it gets instead."""
        if not listener.dnsbl or lookup is None:
            return succeed(None)
        found = check(ip, listener.dnsbl, lookup, self.clock, listener.dnsbl_timeout, events, listener.name)
        return found.addCallback(_verdict, ip, listener.dnsbl_threshold)


def _verdict(result: DnsblResult, ip: str, threshold: int) -> TurnedAway | None:
    if not result.blocked(threshold):
        return None
    zones = ", ".join(result.zones)
    reply = Reply.of(554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {zones}")
    return TurnedAway(reply, f"dnsbl {zones} (score {result.score} >= {threshold})")
