"""Per-destination back-off, sans I/O: a destination that keeps failing at the
connection level is left alone for a while, instead of every queued message
trying it on its own schedule.

After ``after`` consecutive failed sessions (no host answered usefully), attempts
to the destination wait ``first`` seconds, doubling with each further failure up
to ``cap``; the first session that gets through resets it.  Failures of sessions
that ran while the destination was already backed off are not counted again, so
``max_connections`` sessions failing together cost one step, not many.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs

from tlsmta.config import Route

MAX_TRACKED = 10_000  # destinations come from the network: the memory stays bounded


@attrs.frozen
class Policy:
    """The ``destination_backoff_*`` options: ``after`` 0 turns back-off off."""

    after: int
    first: float
    cap: float


@attrs.define
class _Failures:
    count: int = 0
    until: float = 0.0
    reason: str = ""


@attrs.frozen
class BackedOff:
    """A destination attempts wait for: until when, after how many failures, and the last one."""

    until: float
    failures: int
    reason: str


def destination_key(route: Route, domain: str) -> Hashable:
    """What fails together: a smarthost or an LMTP server whatever the domain, else the domain's MX set."""
    if route.kind == "lmtp":
        return route
    return ("smtp", route.host, route.port, route.implicit_tls) if route.kind == "smtp" else (route.kind, domain)


class Backoff:
    """Consecutive connection-level failures per destination, by a clock the caller passes in."""

    def __init__(self) -> None:
        self._failures: dict[Hashable, _Failures] = {}

    def waiting(self, key: Hashable, now: float) -> BackedOff | None:
        """Whether attempts to ``key`` wait now, and until when."""
        state = self._failures.get(key)
        if state is None or now >= state.until:
            return None
        return BackedOff(state.until, state.count, state.reason)

    def failed(self, key: Hashable, now: float, policy: Policy, reason: str) -> BackedOff | None:
        """A session to ``key`` failed at the connection level; the back-off it starts, if any."""
        if policy.after <= 0:
            return None
        state = self._failures.get(key)
        if state is None:
            if len(self._failures) >= MAX_TRACKED:
                self._failures.pop(next(iter(self._failures)))
            state = self._failures[key] = _Failures()
        if now < state.until:
            return self.waiting(key, now)  # a session that started before the back-off did
        state.count += 1
        state.reason = reason
        if state.count < policy.after:
            return None
        state.until = now + min(policy.cap, policy.first * 2 ** (state.count - policy.after))
        return BackedOff(state.until, state.count, reason)

    def succeeded(self, key: Hashable) -> None:
        """A session to ``key`` got through: its failures are forgotten."""
        self._failures.pop(key, None)

    def forget(self) -> None:
        """Every destination may be tried at once again (``tlsmta queue flush``)."""
        self._failures.clear()
