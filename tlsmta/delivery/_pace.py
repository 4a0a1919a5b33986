"""Messages per time window: the GCRA (generic cell rate algorithm) for ``cluster_message_rate``.

``N/PERIOD`` lets a burst of up to N messages go at once, then one every
PERIOD/N: the same as a token bucket of N tokens refilled at N per PERIOD,
kept as one number, the theoretical arrival time (TAT) of the next
message.  :class:`Gcra` is the pure form one node uses alone (and while
Redis is away, with 1/N of the rate); ``tlsmta.cluster`` runs the same
arithmetic in a Lua script for the fleet.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Rate:
    """N messages per ``period`` seconds."""

    count: int
    period: float

    @property
    def interval(self) -> float:
        """Seconds between messages once the burst is spent."""
        return self.period / self.count

    @property
    def tolerance(self) -> float:
        """How far ahead of now the TAT may run: the burst, N - 1 intervals."""
        return self.period - self.interval

    def share(self, nodes: int) -> Rate:
        """1/``nodes`` of this rate (a node's part while the fleet cannot count together)."""
        return Rate(max(1, self.count // max(1, nodes)), self.period)


class Gcra:
    """One destination's TAT."""

    def __init__(self) -> None:
        self.tat = 0.0

    def wait(self, rate: Rate, now: float) -> float:
        """0 and the message is counted, or the seconds to wait before asking again."""
        tat = max(self.tat, now)
        if tat - rate.tolerance > now:
            return tat - rate.tolerance - now
        self.tat = tat + rate.interval
        return 0.0
