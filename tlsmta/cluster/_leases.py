"""Connection leases and message pacing counted in Redis: ``cluster_max_connections`` and
``cluster_message_rate`` for the whole fleet.

Each lease is a member of the destination's sorted set, scored by when it
expires (``lease_ttl``); the heartbeat pushes the expiry of every lease
this node holds, so a node killed with -9 stops renewing and its leases
free themselves within ``lease_ttl``.  A denied session asks again every
:data:`RETRY` seconds.  While Redis is away each node grants up to its
share, :func:`~tlsmta.cluster._health.local_share`, counted here, and paces
messages at 1/N of the rate.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from tlsmta.cluster._health import RedisHealth, local_share
from tlsmta.cluster._keys import Keys
from tlsmta.cluster._redis import Redis, RedisUnavailable
from tlsmta.cluster._scripts import ACQUIRE_LEASE, PACE, RENEW_LEASES
from tlsmta.delivery import NO_LEASE, Lease, Pacers, Rate

RETRY = 0.2  # seconds between asks for a lease the fleet has none of


class _RedisLease:
    def __init__(self, leases: RedisLeases, key: str, member: str):
        self._leases: RedisLeases | None = leases
        self.key = key
        self.member = member

    def release(self) -> None:
        if self._leases is not None:
            self._leases.give_back(self)
            self._leases = None


class RedisLeases:
    """:class:`tlsmta.delivery.ConnectionLeases` over Redis, with the local fallback."""

    def __init__(self, reactor: IReactorTime, redis: Redis, keys: Keys, health: RedisHealth, lease_ttl: float):
        self.reactor = reactor
        self.redis = redis
        self.keys = keys
        self.health = health
        self.ttl_ms = int(lease_ttl * 1000)
        self.held: dict[str, _RedisLease] = {}  # member: lease, every lease this node holds
        self.per_key: Counter[str] = Counter()
        self._serial = itertools.count(1)
        self.local_pacers = Pacers()  # cluster_message_rate while Redis is away
        self.closed = False  # the node is stopping: no session waiting for a lease starts any more

    def acquire(self, key: str, cap: int | None) -> Deferred[Lease]:
        if cap is None:
            return succeed(NO_LEASE)
        return ensureDeferred(self._acquire(key, cap))

    async def _acquire(self, key: str, cap: int) -> Lease:
        # the pid too: two processes sharing a node_id (one host, node_id unset) never share a member
        member = f"{self.health.node_id}#{os.getpid()}.{next(self._serial)}"
        while True:
            if self.health.available:
                try:
                    if await self.redis.eval(ACQUIRE_LEASE, [self.keys.lease(key)], [member, self.ttl_ms, cap]):
                        return self._hold(key, member)
                except RedisUnavailable as e:
                    self.health.failed(str(e))
            if not self.health.available and self.per_key[key] < local_share(cap, self.health.fleet_size):
                self.health.events.emit("cluster_local_lease", quiet=True, key=key)
                return self._hold(key, member)
            await self._retry_in(RETRY)

    async def _retry_in(self, seconds: float) -> None:
        """Wait before asking again; once stopping, for ever (the jobs stay queued on disk, and
        nothing starts after the node left the fleet)."""
        await deferLater(self.reactor, seconds, lambda: None)
        if self.closed:
            await Deferred()

    def pace(self, key: str, rate: tuple[int, float] | None) -> Deferred[None]:
        if rate is None:
            return succeed(None)
        return ensureDeferred(self._pace(key, Rate(*rate)))

    async def _pace(self, key: str, rate: Rate) -> None:
        while True:
            delay: float | None = None
            if self.health.available:
                try:
                    delay = await self.redis.eval(PACE, [self.keys.rate(key)],
                                                  [int(rate.interval * 1000), int(rate.tolerance * 1000)]) / 1000
                except RedisUnavailable as e:
                    self.health.failed(str(e))
            if delay is None:
                delay = self.local_pacers.wait(key, rate.share(self.health.fleet_size), self.reactor.seconds())
            if not delay:
                return
            await self._retry_in(delay)

    def _hold(self, key: str, member: str) -> Lease:
        lease = self.held[member] = _RedisLease(self, key, member)
        self.per_key[key] += 1
        return lease

    def give_back(self, lease: _RedisLease) -> None:
        del self.held[lease.member]
        self.per_key[lease.key] -= 1
        if not self.per_key[lease.key]:
            del self.per_key[lease.key]
        if self.health.available:
            # Not waited for: if it fails, the lease expires by itself within lease_ttl.
            self.redis.call("zrem", self.keys.lease(lease.key), lease.member).addErrback(lambda f: None)

    def renew(self) -> Deferred[Any]:
        """Push the expiry of every lease held (and re-add any Redis lost); the heartbeat calls it."""
        leases = list(self.held.values())
        if not leases:
            return succeed(0)
        return self.redis.eval(RENEW_LEASES, [self.keys.lease(lease.key) for lease in leases],
                               [self.ttl_ms, *(lease.member for lease in leases)])
