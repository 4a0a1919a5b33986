"""The names of the fleet's Redis keys, all under ``[cluster] key_prefix``.

| key | type | holds |
|---|---|---|
| ``node:ID`` | hash, TTL ``node_ttl`` | one node: queue size, leases held, pid, start and last heartbeat (ms) |
| ``nodes`` | sorted set | node ids by last heartbeat; members older than ``node_ttl`` are dropped |
| ``lease:BINDING/DEST`` | sorted set, TTL ``lease_ttl`` | one member per open session, scored by its expiry (ms) |
| ``rate:BINDING/DEST`` | string, TTL past its value | ``cluster_message_rate``: the GCRA's theoretical arrival time (ms) |
| ``tlsrpt:DAY`` | hash, 3 days | each node's TLS-RPT aggregate of that UTC day, as JSON |
| ``tlsrpt:DAY:first`` | string, 3 days | when the first node shared the day (ms): the wait for the others starts |
| ``tlsrpt:DAY:DOMAIN`` | string, 3 days | the node that sends that domain's report for the day |
| ``sts:DOMAIN`` | string, TTL ``max_age`` | the newest MTA-STS policy any node fetched: id, text, fetch time |
| ``broken`` | hash | remembered broken TLS: ``MX:PORT`` to its entry as JSON (reason, since, until) |
| ``broken:expiry`` | sorted set | the same hosts by expiry (ms), to drop them when it passes |
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Keys:
    """One fleet's key names."""

    prefix: str

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def lease(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    @property
    def lease_pattern(self) -> str:
        return f"{self.prefix}lease:*"

    def lease_name(self, redis_key: str) -> str:
        """The ``BINDING/DEST`` a lease key counts."""
        return redis_key[len(self.lease("")):]

    def reports(self, day: str) -> str:
        return f"{self.prefix}tlsrpt:{day}"

    def reports_first(self, day: str) -> str:
        return f"{self.prefix}tlsrpt:{day}:first"

    def report_claim(self, day: str, domain: str) -> str:
        return f"{self.prefix}tlsrpt:{day}:{domain}"

    def sts(self, domain: str) -> str:
        return f"{self.prefix}sts:{domain}"

    def rate(self, key: str) -> str:
        return f"{self.prefix}rate:{key}"

    @property
    def broken(self) -> str:
        return f"{self.prefix}broken"

    @property
    def broken_expiry(self) -> str:
        return f"{self.prefix}broken:expiry"
