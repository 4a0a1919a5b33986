"""``tlsmta cluster status``: the fleet as Redis holds it, read with the config's ``[cluster]``.

It asks Redis, not the nodes, so it works from any host that can reach Redis,
with any node's configuration, and shows nodes that are not answering on
their control sockets too (until their ``node_ttl`` passes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tlsmta.app._pipe import carried_over_react
from tlsmta.cluster import FleetStatus, Keys, Redis, RedisUnavailable, fleet_status
from tlsmta.config import Config
from tlsmta.network import IServiceReactor

EX_OK, EX_UNAVAILABLE, EX_SOFTWARE, EX_CONFIG = 0, 69, 70, 78  # sysexits.h
MIN_STATUS_TIMEOUT = 1.0  # seconds per Redis call at least: an operator's command may wait longer than a delivery


def status_lines(status: FleetStatus, now_ms: int) -> list[str]:
    """The nodes (queue, leases, last heartbeat) and the leases held per destination."""
    lines = [f"{len(status.nodes)} node(s)"]
    lines += [f"  {node.node_id:<24} queue {node.queue:>6}  leases {node.leases:>4}  pid {node.pid:<7} "
              f"seen {max(0, now_ms - node.seen_ms) / 1000:.1f}s ago" for node in status.nodes]
    lines.append(f"{len(status.leases)} destination(s) with open connections")
    for key, members in status.leases.items():
        per_node: dict[str, int] = {}
        for member in members:
            node = member.rsplit("#", 1)[0]
            per_node[node] = per_node.get(node, 0) + 1
        lines.append(f"  {key}: {len(members)} ({', '.join(f'{n} {c}' for n, c in sorted(per_node.items()))})")
    return lines


def run_status(config: Config, as_json: bool, write: Callable[[str], None], react: Callable[..., Any]) -> int:
    """Print the fleet's status; 0, or 69 (EX_UNAVAILABLE) when Redis does not answer, 78 without [cluster]."""
    if config.cluster is None:
        write(f"tlsmta cluster: {config.path} has no [cluster] table")
        return EX_CONFIG
    settings = config.cluster
    outcome: dict[str, int] = {"code": EX_SOFTWARE}

    async def main(reactor: IServiceReactor) -> None:
        redis = Redis(reactor, settings["redis"], max(settings["redis_timeout"], MIN_STATUS_TIMEOUT), settings["redis_ca"])
        try:
            status = await fleet_status(redis, Keys(settings["key_prefix"]))
        except RedisUnavailable as e:
            write(f"tlsmta cluster: {settings['redis'].describe()}: {e}")
            outcome["code"] = EX_UNAVAILABLE
            return
        finally:
            await redis.close()
        if as_json:
            write(json.dumps(status.to_json(), indent=2))
        else:
            write(f"fleet at {settings['redis'].describe()}, prefix {settings['key_prefix']!r}")
            write("\n".join(status_lines(status, int(time.time() * 1000))))
        outcome["code"] = EX_OK

    guarded, raise_if_reader_left = carried_over_react(main)  # a closed stdout: exit 141, as policy and probe
    try:
        react(guarded)
    except SystemExit:
        raise_if_reader_left()
    return outcome["code"]
