"""The ``[tlsrpt_inbox] endpoint``: HTTPS for TLS-RPT reports POSTed to ``/tlsrpt`` (RFC 8460 3).

TLS from the first byte with the table's certificate and key (the
listeners' server context, the default protocols); the site is
:func:`tlsmta.reporting.tlsrpt_site`.  Read at start: a change to the table
needs a restart (``check-config --against-running`` says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from tlsmta.config import parse_protocols
from tlsmta.network import IServiceReactor, PortService
from tlsmta.reporting import TLSRPTInbox, tlsrpt_site
from tlsmta.tls import ServerTLS, server_context

log = Logger(namespace="tlsmta.tlsrpt")


class TLSRPTInboxService(PortService):
    """Listens on ``options["endpoint"]`` with HTTPS while running."""

    def __init__(self, reactor: IServiceReactor, options: Mapping[str, Any], inbox: TLSRPTInbox):
        self.reactor = reactor
        self.endpoint = options["endpoint"]
        context = server_context(options["tls_certificate"], options["tls_key"], parse_protocols("+ALL"))
        self.factory = TLSMemoryBIOFactory(ServerTLS(context), False, tlsrpt_site(inbox))

    def startService(self) -> None:
        super().startService()
        self.listen_on(serverFromString(self.reactor, self.endpoint).listen(self.factory))

    def listening(self, port: Any) -> None:
        super().listening(port)
        log.info("TLS-RPT reports accepted by HTTPS POST /tlsrpt on {endpoint}", endpoint=self.endpoint)
