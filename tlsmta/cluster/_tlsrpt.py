"""The fleet's TLS-RPT reports: every node's day summed, each domain reported by one node.

At each report run a node shares its aggregate of the day (``tlsrpt:DAY``)
and reads everyone's; it reports only once every live node has shared the
day, or :data:`WAIT_FOR_NODES` after the first node shared it (two of the
hourly report runs: a node that died before sharing is left out).  A domain's report is sent by the node
that claims ``tlsrpt:DAY:DOMAIN`` first; the others mark it sent.  With
Redis away nothing is reported (the run asks again an hour later): a
report is late, never sent twice.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from tlsmta.cluster._health import RedisHealth
from tlsmta.cluster._keys import Keys
from tlsmta.cluster._redis import Redis, RedisUnavailable
from tlsmta.cluster._scripts import CLAIM_REPORT, SHARE_REPORTS
from tlsmta.reporting import Aggregate, aggregate_to_json, merge_aggregates

KEEP_MS = 3 * 86400 * 1000  # the day's keys outlive the sender's two days of retries
WAIT_FOR_NODES_MS = 2 * 3600 * 1000  # after the first share: report without the nodes that have not shared


class RedisReports:
    """:class:`tlsmta.reporting.FleetReports` over Redis."""

    def __init__(self, redis: Redis, keys: Keys, health: RedisHealth):
        self.redis = redis
        self.keys = keys
        self.health = health

    async def aggregate(self, day: datetime.date, local: Aggregate) -> Aggregate | None:
        try:
            reply: list[Any] = await self.redis.eval(
                SHARE_REPORTS, [self.keys.reports(day.isoformat()), self.keys.reports_first(day.isoformat()), self.keys.nodes],
                [self.health.node_id, json.dumps(aggregate_to_json(local)), KEEP_MS])
        except RedisUnavailable as e:
            self.health.failed(str(e))
            return None
        since_first, split = int(reply[0]), reply.index("")
        live, pairs = set(reply[1:split]), reply[split + 1:]
        shared = dict(zip(pairs[::2], pairs[1::2]))
        if live - set(shared) and since_first < WAIT_FOR_NODES_MS:
            return None
        return merge_aggregates([json.loads(part) for part in shared.values()])

    async def claim(self, day: datetime.date, domain: str) -> bool | None:
        try:
            return bool(await self.redis.eval(CLAIM_REPORT, [self.keys.report_claim(day.isoformat(), domain)],
                                              [self.health.node_id, KEEP_MS]))
        except RedisUnavailable as e:
            self.health.failed(str(e))
            return None
