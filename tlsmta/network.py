"""Twisted network plumbing every shell shares: a Service that owns one
listening port (SMTP listeners, control socket, metrics, web page), and
TCP_NODELAY for SMTP's small writes.

Imports nothing of tlsmta.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure


class PortService(Service):
    """Listens when started, stops listening when stopped.

    TCP and UNIX ports listen synchronously, so a failure (address in use,
    a bad socket path) fails ``startService`` at once with its error and
    nothing half-starts.  Subclasses extend ``listening`` (log, fire
    ``ready``) and ``stopService`` (their own clean-up).
    """

    port: IListeningPort | None = None

    def listen_on(self, listening: Deferred[IListeningPort]) -> None:
        """Wait for an endpoint's ``listen()`` result; raise its failure here."""
        failure: list[Failure] = []
        listening.addCallbacks(self.listening, failure.append)
        if failure:
            failure[0].raiseException()

    def listening(self, port: IListeningPort) -> None:
        self.port = port

    def stopService(self) -> Any:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()


def set_no_delay(transport: Any) -> None:
    """TCP_NODELAY where the transport is TCP (not in tests' fake transports)."""
    set_it = getattr(transport, "setTcpNoDelay", None)
    if set_it is not None:
        try:
            set_it(True)
        except OSError:
            pass  # the socket is already gone (the peer left); nothing left to tune
