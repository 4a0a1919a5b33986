"""HTTPS requests to an address tlsmta resolved itself, verified with tlsmta's own checks.

For MTA-STS policy fetches and TLS-RPT ``https:`` reports.  twisted.web's
Agent with an endpoint factory: the connection goes to an address from
tlsmta's resolver (so ``[dns.hosts]`` pins apply), SNI and the certificate
check are for the URL's host name (chain to ``ca`` or the system store, the
name as for ``tls_verify = host``), a failure aborts the handshake, and
redirects are never followed (Agent does not follow them).
"""

from __future__ import annotations

import io
import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from tlsmta.config import parse_protocols
from tlsmta.errors import TlsmtaError
from tlsmta.network import IServiceReactor, StreamTransport
from tlsmta.tls import _contexts as tls
from tlsmta.tls._policy import VerifyMode

PROTOCOLS = parse_protocols("+TLSv1.2:+TLSv1.3")


class HTTPSFailure(TlsmtaError):
    """The request did not get a response; ``certificate`` when the server's certificate failed."""

    def __init__(self, message: str, certificate: bool = False):
        super().__init__(message)
        self.certificate = certificate


class TooLarge(TlsmtaError):
    """A response body over the limit."""


async def https_request(
    reactor: IServiceReactor, method: bytes, host: str, port: int, path: str, ip: str, ca: str | None,
    body: bytes | None = None, headers: dict[bytes, list[bytes]] | None = None, connect_timeout: float = 30,
) -> IResponse:
    """One request to ``https://host:port/path``, connecting to ``ip``."""
    check = tls.CertificateCheck(VerifyMode.HOST, wanted=(host,), enforce_in_handshake=True)
    creator = tls.ClientTLS(tls.client_context(PROTOCOLS, ca=ca), host, check)

    @implementer(IAgentEndpointFactory)
    class _Endpoints:
        def endpointForURI(self, uri: Any) -> Any:
            cls = TCP6ClientEndpoint if ipaddress.ip_address(ip).version == 6 else TCP4ClientEndpoint
            return wrapClientTLS(creator, cls(reactor, ip, port, timeout=connect_timeout))

    agent = Agent.usingEndpointFactory(reactor, _Endpoints())
    netloc = host if port == 443 else f"{host}:{port}"
    producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
    try:
        url = f"https://{netloc}{path}".encode("ascii")
        response: IResponse = await agent.request(method, url, Headers(headers or {}), producer)
        return response
    except (ResponseNeverReceived, ResponseFailed) as e:
        if check.seen_certificate and check.verdict().fatal:
            raise HTTPSFailure(f"certificate of {host} not valid: {check.verdict().reason}", certificate=True) from None
        reasons = "; ".join(tls.ssl_error_text(r.value) for r in getattr(e, "reasons", []))
        raise HTTPSFailure(f"{host}: {reasons or e}") from None
    except Exception as e:
        raise HTTPSFailure(f"{host}: {str(e).strip() or type(e).__name__}") from None


def read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    """The response body; fails with TooLarge past ``limit`` bytes (and stops reading)."""
    done: Deferred[bytes] = Deferred()
    parts: list[bytes] = []

    class _Reader(Protocol):
        # Twisted's ITransport | None has neither the TCP/TLS/producer methods nor the connected state.
        transport: StreamTransport  # type: ignore[assignment]
        size = 0

        def dataReceived(self, data: bytes) -> None:
            self.size += len(data)
            if self.size > limit:
                if not done.called:
                    done.errback(TooLarge(f"larger than {limit} bytes"))
                self.transport.stopProducing()
                return
            parts.append(data)

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            if done.called:
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                done.callback(b"".join(parts))
            else:
                done.errback(HTTPSFailure(f"body cut short: {reason.getErrorMessage()}"))

    response.deliverBody(_Reader())
    return done
