"""Connection leases: a session to a destination runs only while it holds one.

``cluster_max_connections`` caps the connections to one destination (the
recipient domain, or a smarthost's host) through one binding, summed over
every node of a fleet.  A session asks for a lease before its first
connection and gives it back when it ends; :class:`ConnectionLeases` is
the interface, so the cap can be counted here (:class:`LocalLeases`: one
node is the whole fleet) or in Redis (``tlsmta.cluster``).  Without the
option a lease is granted at once and counts nothing: today's behaviour,
``max_connections`` per node alone.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from tlsmta.config import Route
from tlsmta.delivery._pace import Gcra, Rate


class Lease(Protocol):
    """A granted connection slot; :meth:`release` gives it back (once; later calls do nothing)."""

    def release(self) -> None: ...


class ConnectionLeases(Protocol):
    """Where the fleet-wide cap and rate per (binding, destination) are counted."""

    def acquire(self, key: str, cap: int | None) -> Deferred[Lease]:
        """Fires with a lease once fewer than ``cap`` are held for ``key`` (None: no cap, at once).
        Cancelling the Deferred gives up the wait."""

    def pace(self, key: str, rate: tuple[int, float] | None) -> Deferred[None]:
        """Fires when one more message to ``key`` keeps within ``rate`` (N per seconds; None: at once)."""


def lease_key(binding: str, route: Route, domain: str) -> str:
    """The name a cap is counted under: the binding and the destination, a smarthost whatever the
    domain (as back-off groups them), else the recipient domain."""
    destination = f"smtp:{route.host}:{route.port}" if route.kind == "smtp" else domain
    return f"{binding}/{destination}"


class _NoLease:
    """What an uncapped session holds."""

    def release(self) -> None:
        pass


NO_LEASE: Lease = _NoLease()


class _LocalLease:
    def __init__(self, leases: LocalLeases, key: str):
        self._leases: LocalLeases | None = leases
        self.key = key

    def release(self) -> None:
        if self._leases is not None:
            self._leases.give_back(self.key)
            self._leases = None


class LocalLeases:
    """The cap counted in this process: waiters are served in order as leases come back; the
    rate paced by one :class:`~tlsmta.delivery._pace.Gcra` per key."""

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.pacers = Pacers()
        self.held: dict[str, int] = {}
        self._caps: dict[str, int] = {}
        self._waiting: dict[str, deque[Deferred[Lease]]] = {}

    def acquire(self, key: str, cap: int | None) -> Deferred[Lease]:
        if cap is None:
            return succeed(NO_LEASE)
        self._caps[key] = cap  # the newest cap applies (a reload may change it)
        if self.held.get(key, 0) < cap and not self._waiting.get(key):
            return succeed(self._grant(key))
        d: Deferred[Lease] = Deferred(lambda d: self._waiting[key].remove(d))
        self._waiting.setdefault(key, deque()).append(d)
        return d

    def pace(self, key: str, rate: tuple[int, float] | None) -> Deferred[None]:
        if rate is None:
            return succeed(None)
        return ensureDeferred(self.pacers.pace(self.reactor, key, Rate(*rate)))

    def _grant(self, key: str) -> Lease:
        self.held[key] = self.held.get(key, 0) + 1
        return _LocalLease(self, key)

    def give_back(self, key: str) -> None:
        self.held[key] -= 1
        if not self.held[key]:
            del self.held[key]
        waiting = self._waiting.get(key)
        while waiting and self.held.get(key, 0) < self._caps[key]:
            waiting.popleft().callback(self._grant(key))
        if not waiting:
            self._waiting.pop(key, None)
            if key not in self.held:
                self._caps.pop(key, None)


CLOSE_WAIT = 10.0  # seconds a QUIT or abort may take to close the connection before its lease goes anyway


async def wait_closed(reactor: IReactorTime, proto: Any) -> None:
    """Until ``proto`` (an OutboundSMTP that was sent QUIT or aborted) has closed, at most CLOSE_WAIT."""
    if proto.closed.called:
        return
    gone: Deferred[None] = Deferred()

    def closed(_: object) -> object:
        if not gone.called:
            gone.callback(None)
        return _

    proto.closed.addBoth(closed)
    gone.addTimeout(CLOSE_WAIT, reactor, onTimeoutCancel=lambda *_: None)
    await gone


MAX_PACED = 10_000  # destinations whose rate is remembered; idle ones (TAT passed) go first


class Pacers:
    """One GCRA per key, in this process."""

    def __init__(self) -> None:
        self._gcra: dict[str, Gcra] = {}

    def wait(self, key: str, rate: Rate, now: float) -> float:
        """0 (counted) or the seconds to wait before asking again."""
        if len(self._gcra) >= MAX_PACED:
            self._gcra = {k: g for k, g in self._gcra.items() if g.tat > now}
        return self._gcra.setdefault(key, Gcra()).wait(rate, now)

    async def pace(self, reactor: IReactorTime, key: str, rate: Rate) -> None:
        while (delay := self.wait(key, rate, reactor.seconds())) > 0:
            await deferLater(reactor, delay, lambda: None)
