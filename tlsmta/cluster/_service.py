"""The node's place in the fleet: connect to Redis, heartbeat, share leases and broken TLS.

:class:`ClusterService` is the one object ``app.service`` builds for
``[cluster]``: it hands the pool its :class:`RedisLeases` and
:class:`RedisBrokenTLS`, the MTA-STS resolver a :class:`RedisSTSCache` and
the TLS-RPT sender its :class:`RedisReports`;
every ``heartbeat`` registers the node
(``node_ttl``), renews its leases (``lease_ttl``) and takes the broken
TLS hosts others learnt.  A heartbeat that fails marks Redis down; the
next one that succeeds marks it up.  Stopping removes the node at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tlsmta.cluster._broken_tls import RedisBrokenTLS
from tlsmta.cluster._health import RedisHealth
from tlsmta.cluster._keys import Keys
from tlsmta.cluster._leases import RedisLeases
from tlsmta.cluster._redis import Redis, RedisUnavailable
from tlsmta.cluster._scripts import HEARTBEAT
from tlsmta.cluster._sts_cache import RedisSTSCache
from tlsmta.cluster._tlsrpt import RedisReports
from tlsmta.discovery import STSCache
from tlsmta.reporting import EventBus

log = Logger()


class ClusterService(Service):
    """One node of a fleet sharing ``settings`` (the ``[cluster]`` table)."""

    def __init__(self, reactor: IReactorTime, settings: Mapping[str, Any], events: EventBus, hostname: str,
                 queue_size: Callable[[], int]):
        self.reactor = reactor
        self.settings = settings
        self.node_id: str = settings["node_id"] or hostname
        self.queue_size = queue_size
        self.keys = Keys(settings["key_prefix"])
        self.redis = Redis(reactor, settings["redis"], settings["redis_timeout"], settings["redis_ca"])
        self.health = RedisHealth(events, self.node_id, settings["node_ttl"])
        self.leases = RedisLeases(reactor, self.redis, self.keys, self.health, settings["lease_ttl"])
        self.broken_tls = RedisBrokenTLS(self.redis, self.keys, self.health)
        self.reports = RedisReports(self.redis, self.keys, self.health)
        self.started = int(reactor.seconds())
        self._beat = LoopingCall(lambda: ensureDeferred(self.heartbeat()))
        self._beat.clock = reactor

    def shared_sts_cache(self, local: STSCache) -> RedisSTSCache:
        """``local`` (the node's MTA-STS cache) with the fleet's fetches beside it."""
        return RedisSTSCache(local.directory, local.run, self.redis, self.keys, self.health)

    def startService(self) -> None:
        super().startService()
        self._beat.start(self.settings["heartbeat"], now=True)

    async def heartbeat(self) -> None:
        """Register, renew the leases, refresh broken TLS; a failure marks Redis down (never raises:
        the loop goes on)."""
        fields = {"queue": self.queue_size(), "leases": len(self.leases.held), "pid": os.getpid(), "started": self.started}
        try:
            nodes = await self.redis.eval(HEARTBEAT, [self.keys.node(self.node_id), self.keys.nodes],
                                          [self.node_id, int(self.settings["node_ttl"] * 1000),
                                           *(item for pair in fields.items() for item in pair)])
            await self.leases.renew()
            await self.broken_tls.refresh()
        except RedisUnavailable as e:
            self.health.failed(str(e))
            return
        except Exception:
            log.failure("cluster heartbeat failed")
            return
        self.health.recovered(len(nodes), self.reactor.seconds())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.leases.closed = True
        if self._beat.running:
            self._beat.stop()
        return ensureDeferred(self._leave())

    async def _leave(self) -> None:
        """Out of the fleet at once (not after node_ttl), then disconnect."""
        if self.health.available:
            try:
                await self.redis.call("delete", self.keys.node(self.node_id))
                await self.redis.call("zrem", self.keys.nodes, self.node_id)
            except RedisUnavailable:
                pass  # the entries expire by themselves
        await self.redis.close()
