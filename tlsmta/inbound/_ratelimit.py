"""Per-client token buckets: ``max_connection_rate`` and ``max_message_rate``.

Pure: the caller passes the time (the reactor's clock).  A bucket holds up
to ``rate.count`` tokens and refills evenly over ``rate.period``, so
"30/1m" allows a burst of 30 and then one every two seconds, as Postfix's
anvil counts over a sliding minute.  A bucket that has refilled completely
holds no information and is forgotten, so memory follows the clients seen
within one period.
"""

from __future__ import annotations

from tlsmta.config import Rate

PRUNE_EVERY = 1024  # takes between sweeps for full buckets


class RateLimiter:
    """Token buckets keyed by client address, for one kind of event."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._takes = 0

    def take(self, key: str, rate: Rate, now: float) -> bool:
        """Whether ``key`` may have one more event now; if so, it is counted."""
        self._takes += 1
        if self._takes % PRUNE_EVERY == 0:
            self._prune(rate, now)
        tokens = self._tokens(key, rate, now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, rate: Rate, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(rate.count)
        tokens, then = held
        return min(float(rate.count), tokens + max(0.0, now - then) * rate.count / rate.period)

    def _prune(self, rate: Rate, now: float) -> None:
        full = [key for key in self._buckets if self._tokens(key, rate, now) >= rate.count]
        for key in full:
            del self._buckets[key]
