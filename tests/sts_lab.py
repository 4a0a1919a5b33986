"""An MTA-STS policy server for tests: twisted.web over TLS with a trustme certificate.

Serves ``/.well-known/mta-sts.txt`` on 127.0.0.1; the sender finds it through
pinned ``[dns.hosts]`` for ``mta-sts.DOMAIN`` and ``mta_sts_https_port``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import attrs
import trustme
from outbound_lab import DOMAIN, MX
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from tlsmta.config._loader import parse_protocols
from tlsmta.tls import _contexts as tls

POLICY_HOST = f"mta-sts.{DOMAIN}"


def policy_text(mode: str = "enforce", mx: tuple[str, ...] = (MX,), max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *[f"mx: {m}" for m in mx], f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


class PolicyResource(Resource):
    """The well-known policy URL; ``body``, ``content_type``, ``code`` are set by the test."""

    isLeaf = True

    def __init__(self, body: str) -> None:
        super().__init__()
        self.body = body.encode()
        self.content_type = b"text/plain"
        self.code = 200
        self.location: bytes | None = None
        self.requests: list[bytes] = []
        self.posts: list[tuple[bytes, bytes | None, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        """A TLS-RPT https: receiver: keeps (path, content-type, body), answers ``code``."""
        self.posts.append((request.path, request.getHeader(b"content-type"), request.content.read()))
        request.setResponseCode(self.code)
        return b""

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(request.path)
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b""
        request.setResponseCode(self.code)
        if self.location is not None:
            request.setHeader(b"location", self.location)
        request.setHeader(b"content-type", self.content_type)
        return self.body


@attrs.define
class PolicyServer:
    resource: PolicyResource
    listening: Any

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    async def stop(self) -> None:
        await self.listening.stopListening()


def start_policy_server(ca: trustme.CA, body: str, name: str = POLICY_HOST) -> PolicyServer:
    """A policy server whose certificate (for ``name``) is issued by ``ca``."""
    directory = tempfile.mkdtemp(prefix="sts-lab-")
    pem = os.path.join(directory, "server.pem")
    ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(pem)
    context = tls.server_context(pem, pem, parse_protocols("+TLSv1.2:+TLSv1.3"))
    resource = PolicyResource(body)
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    factory = TLSMemoryBIOFactory(tls.ServerTLS(context), False, site)
    return PolicyServer(resource, reactor.listenTCP(0, factory, interface="127.0.0.1"))


def sts_dns(policy_id: str = "1") -> dict[str, Any]:
    """Pinned answers: the _mta-sts TXT record and the policy host at 127.0.0.1."""
    return {"txt": {f"_mta-sts.{DOMAIN}": [f"v=STSv1; id={policy_id}"]}, "hosts": {POLICY_HOST: ["127.0.0.1"]}}
