"""Remembered broken TLS shared by the fleet (``tls_remember_broken``).

``BrokenTLSStore.get`` is synchronous (the session asks it just before
connecting), so each node answers from its own :class:`MemoryBrokenTLS`,
refreshed from Redis at every heartbeat; a host one node learns is written
through at once, so the others skip its STARTTLS from their next heartbeat
on.  With Redis away the node keeps what it knows and learns alone.
"""

from __future__ import annotations

import json
from typing import Any

from tlsmta.cluster._health import RedisHealth
from tlsmta.cluster._keys import Keys
from tlsmta.cluster._redis import Redis
from tlsmta.cluster._scripts import BROKEN_HOSTS, REMEMBER_BROKEN
from tlsmta.delivery import BrokenTLS, MemoryBrokenTLS


class RedisBrokenTLS:
    """A :class:`tlsmta.delivery.BrokenTLSStore`: the local cache, written through to Redis."""

    def __init__(self, redis: Redis, keys: Keys, health: RedisHealth, cache: MemoryBrokenTLS | None = None):
        self.redis = redis
        self.keys = keys
        self.health = health
        self.cache = cache if cache is not None else MemoryBrokenTLS()

    def get(self, key: str, now: float) -> BrokenTLS | None:
        return self.cache.get(key, now)

    def remember(self, key: str, broken: BrokenTLS) -> None:
        self.cache.remember(key, broken)
        entry = json.dumps(broken.to_json())
        d = self.redis.eval(REMEMBER_BROKEN, [self.keys.broken, self.keys.broken_expiry], [key, entry, int(broken.until * 1000)])
        d.addErrback(lambda f: self.health.failed(str(f.value)))

    async def refresh(self) -> None:
        """Take what the other nodes learnt (the heartbeat calls it; RedisUnavailable passes up)."""
        pairs: list[Any] = await self.redis.eval(BROKEN_HOSTS, [self.keys.broken, self.keys.broken_expiry], [])
        for key, entry in zip(pairs[::2], pairs[1::2]):
            try:
                fields = json.loads(entry)
                broken = BrokenTLS(str(fields["reason"]), float(fields["since"]), float(fields["until"]))
            except (ValueError, KeyError, TypeError):
                continue  # not ours (another writer under the prefix): ignore, it expires
            known = self.cache.get(key, broken.since)
            if known is None or known.since < broken.since:
                self.cache.remember(key, broken)


