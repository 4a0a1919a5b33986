"""Whether this node trusts Redis right now, and how big it last saw the fleet.

A failed call marks Redis down at once, so later sessions go straight to
local limits instead of each waiting out a timeout; only a heartbeat that
succeeded (and re-registered every lease held) marks it up again.  Each
change is one ``cluster_redis`` event: a log line, and the
``tlsmta_cluster_redis_up`` gauge.
"""

from __future__ import annotations

from tlsmta.reporting import EventBus


def local_share(cap: int, fleet_size: int) -> int:
    """This node's part of a fleet cap while Redis is away: 1/N of it, at least one connection (so
    every node keeps delivering; with a cap below N the fleet may then exceed it)."""
    return max(1, cap // max(1, fleet_size))


class RedisHealth:
    """Up or down, the last known fleet size, and the log line and metric of each change."""

    def __init__(self, events: EventBus, node_id: str, node_ttl: float):
        self.events = events
        self.node_id = node_id
        self.node_ttl = node_ttl
        self.available = True
        self._sizes: list[tuple[float, int]] = []  # (when, live nodes) per heartbeat within node_ttl

    @property
    def fleet_size(self) -> int:
        """The largest membership heartbeats saw within ``node_ttl``: a Redis restarted empty lists
        the nodes again only as their heartbeats come, and a share must not grow meanwhile."""
        return max((size for _, size in self._sizes), default=1)

    def failed(self, error: str) -> None:
        if self.available:
            self.available = False
            self.events.emit("cluster_redis", node=self.node_id, state="down", nodes=self.fleet_size,
                             error=error, limits=f"local, 1/{self.fleet_size} of each fleet cap")

    def recovered(self, fleet_size: int, now: float) -> None:
        self._sizes = [(when, size) for when, size in self._sizes if when > now - self.node_ttl] + [(now, fleet_size)]
        if not self.available:
            self.available = True
            self.events.emit("cluster_redis", node=self.node_id, state="up", nodes=self.fleet_size, limits="fleet")
