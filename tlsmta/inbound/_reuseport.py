"""A TCP server endpoint with SO_REUSEPORT: several tlsmta processes on one port.

One tlsmta process is one reactor on one core (docs/architecture.md, Scaling out).
With ``endpoint = "reuseport:25"`` in each of several processes (each
with its own state_dir and spool), the kernel spreads new connections
over them; stopping one (drain) leaves the others accepting.  The syntax
is the ``tcp:`` endpoint's: ``reuseport:PORT[:interface=ADDR][:backlog=N]``,
and it nests like tcp does (``haproxy:reuseport:25``).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

DEFAULT_BACKLOG = 1024


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor: IReactorSocket, port: int, backlog: int = DEFAULT_BACKLOG, interface: str = ""):
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        return execute(self._listen, factory)

    def _listen(self, factory: Any) -> IListeningPort:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            # adoptStreamPort dups the descriptor; ours is closed either way.
            return self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        finally:
            sock.close()


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    prefix = "reuseport"

    # The interface declares (reactor, *args, **kwargs); a parser takes its own description's arguments.
    def parseStreamServer(  # type: ignore[override]
        self, reactor: IReactorCore, port: str, backlog: str = str(DEFAULT_BACKLOG), interface: str = ""
    ) -> ReusePortEndpoint:
        return ReusePortEndpoint(IReactorSocket(reactor), int(port), int(backlog), interface)
