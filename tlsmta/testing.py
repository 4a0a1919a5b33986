"""Fakes and helpers for tests, ours and an application's.

- :class:`MemorySink`: a message store in memory, with control over commit.
- :class:`FakeTLSTransport`: a StringTransport that records ``startTLS``.
- :class:`RunningRelay`: a whole tlsmta service inside the test process,
  listening on a free loopback port.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from tlsmta import config as configuration
from tlsmta.routes import Route
from tlsmta.store import NO_THROTTLE, Envelope, StoreError, Throttle


@attrs.define
class StoredMessage:
    """A message a MemorySink committed."""

    envelope: Envelope
    data: bytes


class MemoryWriter:
    """Collects one message; what commit does is decided by its sink."""

    def __init__(self, sink: MemorySink, envelope: Envelope):
        self.sink = sink
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def commit(self) -> Deferred[None]:
        if self.sink.fail_with is not None:
            return fail(self.sink.fail_with)
        if self.sink.hold:
            d: Deferred[None] = Deferred()
            self.sink.held.append((d, self))
            return d
        self.sink.stored.append(StoredMessage(self.envelope, b"".join(self.chunks)))
        return succeed(None)

    def release(self) -> None:
        """For held commits: store the message (then fire the Deferred)."""
        self.sink.stored.append(StoredMessage(self.envelope, b"".join(self.chunks)))

    def abort(self) -> None:
        self.aborted = True
        self.sink.aborted.append(self.envelope)


class MemorySink:
    """A MessageSink in memory.

    ``fail_with``: commit fails with this StoreError.  ``hold``: commit
    returns a Deferred kept in ``held`` until the test fires it.
    """

    def __init__(self, fail_with: StoreError | None = None, hold: bool = False):
        self.fail_with = fail_with
        self.hold = hold
        self.held: list[tuple[Deferred[None], MemoryWriter]] = []
        self.stored: list[StoredMessage] = []
        self.aborted: list[Envelope] = []
        self.opened: list[MemoryWriter] = []

    def accepts(self, route: Route) -> bool:
        return route.is_local

    def open(self, envelope: Envelope, throttle: Throttle = NO_THROTTLE) -> MemoryWriter:
        writer = MemoryWriter(self, envelope)
        self.opened.append(writer)
        return writer


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):
    """A StringTransport that records STARTTLS instead of doing it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tls_started_with: Any = None
        self.written_before_tls: bytes | None = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_started_with = contextFactory
        self.written_before_tls = self.value()


def dev_listener(**overrides: Any) -> dict[str, Any]:
    """A ``[[listener]]`` table for a loopback test listener on a free port."""
    table: dict[str, Any] = {
        "name": "test",
        "endpoint": "tcp:0:interface=127.0.0.1",
        "tls": "no",
        "relay_networks": ["127.0.0.0/8", "::1/128"],
    }
    table.update(overrides)
    return table


def build_config(raw: Mapping[str, Any], path: str = "<test>") -> configuration.Config:
    """Validate a config given as a dict (the TOML document's shape)."""
    return configuration.from_dict(raw, path)


class RunningRelay:
    """A tlsmta service running in this process (start/stop from a test).

    ``ports`` maps listener names to the port numbers they got.
    """

    def __init__(self, config: configuration.Config, reactor: Any = None, dns_backend: Any = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        from tlsmta.dns import OfflineBackend
        from tlsmta.service import TlsmtaService

        # Only [dns] pinned answers: a test never queries a real resolver.
        self.service = TlsmtaService(config, reactor, dns_backend or OfflineBackend())
        self.ports: dict[str, int] = {}

    @property
    def port(self) -> int:
        """The port of the only (or first) listener."""
        return next(iter(self.ports.values()))

    async def start(self) -> RunningRelay:
        self.service.startService()
        for name, listener in self.service.listeners.items():
            port = await listener.ready
            self.ports[name] = port.getHost().port
        return self

    async def stop(self) -> None:
        for listener in self.service.listeners.values():
            for session in list(listener.inbound.sessions):
                session.transport.abortConnection()
        await self.service.stopService()
