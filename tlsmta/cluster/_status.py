"""What ``tlsmta cluster status`` shows, read from Redis itself (any node's config will do,
and it works with every node stopped): the live nodes and the leases held per destination."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from tlsmta.cluster._keys import Keys
from tlsmta.cluster._redis import Redis
from tlsmta.cluster._scripts import LIVE_LEASES

SCAN_BATCH = 500


@attrs.frozen
class NodeStatus:
    """One node as its last heartbeat left it."""

    node_id: str
    seen_ms: int
    queue: int
    leases: int
    pid: int
    started: int


@attrs.frozen
class FleetStatus:
    """The nodes, and per ``BINDING/DEST`` the lease members (``NODE#PID.N``) that have not expired."""

    nodes: tuple[NodeStatus, ...]
    leases: dict[str, tuple[str, ...]]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [attrs.asdict(node) for node in self.nodes], "leases": {k: list(v) for k, v in self.leases.items()}}


def _node(node_id: str, fields: Mapping[str, Any]) -> NodeStatus | None:
    if not fields:
        return None  # its hash expired since the heartbeat listed it
    number = {k: int(fields.get(k) or 0) for k in ("seen", "queue", "leases", "pid", "started")}
    return NodeStatus(node_id, number["seen"], number["queue"], number["leases"], number["pid"], number["started"])


async def fleet_status(redis: Redis, keys: Keys) -> FleetStatus:
    """Read the fleet's state (RedisUnavailable when Redis cannot be asked)."""
    nodes = []
    for node_id in await redis.call("zrange", keys.nodes, 0, -1):
        node = _node(node_id, await redis.call("hgetall", keys.node(node_id)))
        if node is not None:
            nodes.append(node)
    leases: dict[str, tuple[str, ...]] = {}
    cursor = 0
    while True:
        cursor, found = await redis.call("scan", cursor, keys.lease_pattern, SCAN_BATCH)
        for redis_key in found:
            members = await redis.eval(LIVE_LEASES, [redis_key], [])
            if members:
                leases[keys.lease_name(redis_key)] = tuple(sorted(members))
        if not int(cursor):
            break
    return FleetStatus(tuple(nodes), dict(sorted(leases.items())))
