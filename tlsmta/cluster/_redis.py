"""The fleet's Redis connection: txredisapi, every call bounded by ``redis_timeout``.

txredisapi is Twisted-native (its protocol runs on our reactor, no thread
per call), installs and runs on Python 3.11 with this Twisted, and
reconnects by itself (backing off to at most 10 s between tries); a lazy connection queues a command until it is
connected, so the timeout here is what keeps a message from waiting on a
Redis that is down or slow.  Every failure (timeout, refused, a Redis
error reply) becomes :class:`RedisUnavailable`, the one error callers
handle: they fall back to local limits.
"""

from __future__ import annotations

from typing import Any

import txredisapi  # type: ignore[import-untyped]  # no stubs, no py.typed
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

from tlsmta.config import RedisAddress, RedisTransport
from tlsmta.errors import TlsmtaError


class RedisUnavailable(TlsmtaError):
    """Redis did not answer in time, or answered with an error."""


def _tls_options(address: RedisAddress, ca_file: str | None) -> Any:
    """Client TLS to a rediss:// server, its certificate checked for the host (``redis_ca`` or the system store)."""
    if ca_file is None:
        return optionsForClientTLS(address.host)
    with open(ca_file, "rb") as f:
        roots = [Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())]
    return optionsForClientTLS(address.host, trustRoot=trustRootFromCertificates(roots))


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


class Redis:
    """One lazy, reconnecting connection; :meth:`call` runs a command with the timeout."""

    def __init__(self, reactor: IReactorTime, address: RedisAddress, timeout: float, ca_file: str | None = None):
        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        # db 0 is Redis's default: no SELECT (txredisapi logs a SELECT lost with its connection as unhandled)
        common: dict[str, Any] = dict(dbid=address.db or None, reconnect=True, password=address.password, connectTimeout=timeout,
                                      replyTimeout=timeout, convertNumbers=True)
        if address.username:
            common["username"] = address.username
        if address.transport is RedisTransport.UNIX:
            self._connection = txredisapi.lazyUnixConnection(address.path, **common)
        else:
            tls = _tls_options(address, ca_file) if address.transport is RedisTransport.TLS else False
            self._connection = txredisapi.lazyConnection(address.host, address.port, ssl_context_factory=tls, **common)

    def call(self, command: str, *args: Any) -> Deferred[Any]:
        """``command`` (a txredisapi method name: ``eval``, ``zrem``, ...) within the timeout."""
        d: Deferred[Any] = getattr(self._connection, command)(*args)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._unavailable, command)

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """A Lua script (EVAL: Redis keeps the compiled script by its SHA after the first call)."""
        return self.call("eval", script, keys, args)

    @staticmethod
    def _unavailable(failure: Any, command: str) -> None:
        raise RedisUnavailable(f"Redis {command}: {failure.getErrorMessage() or failure.type.__name__}")

    def close(self) -> Deferred[None]:
        return self._connection.disconnect()
