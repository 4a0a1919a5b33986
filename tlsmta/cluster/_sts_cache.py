"""MTA-STS policies shared by the fleet: any node's fetch serves all (RFC 8461 5.1's cache, fleet-wide).

The resolver keeps applying RFC 8461's rules (a cached policy is used
while its ``max_age`` runs and the TXT id is unchanged, and goes on
applying when discovery fails); only where the cache lives changes.  Each
node keeps its own ``state_dir/mta-sts`` cache and, beside it, the newest
policy any node fetched in ``sts:DOMAIN`` (kept in Redis for ``max_age``).
A lookup takes whichever of the two was fetched last; with Redis away the
node's own cache answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from tlsmta.cluster._health import RedisHealth
from tlsmta.cluster._keys import Keys
from tlsmta.cluster._redis import Redis, RedisUnavailable
from tlsmta.discovery import CachedPolicy, STSCache, STSError, parse_policy


class RedisSTSCache(STSCache):
    """The node's :class:`STSCache`, and the fleet's newest fetch in Redis."""

    def __init__(self, directory: str, run: Callable[..., Deferred[Any]] | None, redis: Redis, keys: Keys, health: RedisHealth):
        super().__init__(directory, run)
        self.redis = redis
        self.keys = keys
        self.health = health

    async def get(self, domain: str) -> CachedPolicy | None:
        local = await super().get(domain)
        if not self.health.available:
            return local
        try:
            text = await self.redis.call("get", self.keys.sts(domain))
        except RedisUnavailable as e:
            self.health.failed(str(e))
            return local
        shared = _cached_policy(text)
        if shared is not None and (local is None or shared.fetched_at > local.fetched_at):
            await super().put(domain, shared)  # on disk too: it serves while Redis is away
            return shared
        return local

    async def put(self, domain: str, cached: CachedPolicy) -> None:
        await super().put(domain, cached)
        data = json.dumps({"id": cached.policy.id, "text": cached.policy.text, "fetched_at": cached.fetched_at})
        d = self.redis.call("set", self.keys.sts(domain), data, None, max(1, int(cached.policy.max_age * 1000)))
        d.addErrback(lambda f: self.health.failed(str(f.value)))


def _cached_policy(text: Any) -> CachedPolicy | None:
    """A policy another node wrote, or None (none there, or not ours: ignored, it expires)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        return CachedPolicy(parse_policy(data["text"], data["id"]), float(data["fetched_at"]))
    except (ValueError, KeyError, TypeError, STSError):
        return None
