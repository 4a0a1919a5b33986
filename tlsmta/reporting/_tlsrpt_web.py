"""``POST /tlsrpt``: TLS-RPT reports submitted over HTTPS (RFC 8460 3 and 5.2), a twisted.web site.

The body is ``application/tlsrpt+gzip`` or ``application/tlsrpt+json``; a
stored report is ``201 Created``, one that does not parse ``400`` with the
reason (and is kept under malformed/, as a mailed one is), another content
type ``415``, a body over the limit ``413``.  Anyone may POST (the RFC has
no authentication); the TLS around it is the listening service's.  A body
over the limit is refused as it arrives (:class:`tlsmta.network.BoundedRequest`): twisted.web
would otherwise keep any amount a peer sends in a temporary file first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tlsmta.network import BoundedRequest
from tlsmta.reporting._tlsrpt_inbox import MAX_REPORT_BYTES, REPORT_TYPES
from tlsmta.reporting._tlsrpt_received import Received, TLSRPTInbox

log = Logger(namespace="tlsmta.tlsrpt")


class ReportRequest(BoundedRequest):
    """A POSTed report's request: at most MAX_REPORT_BYTES of body."""

    max_body = MAX_REPORT_BYTES


class TLSRPTResource(Resource):
    """The one resource: POST a report."""

    isLeaf = True

    def __init__(self, inbox: TLSRPTInbox):
        super().__init__()
        self.inbox = inbox

    def render_POST(self, request: Request) -> Any:
        content_type = (request.getHeader("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type not in REPORT_TYPES:
            return _answer(request, 415, f"send {' or '.join(REPORT_TYPES)}")
        assert request.content is not None
        body = request.content.read()  # at most MAX_REPORT_BYTES: ReportRequest refused more
        peer = request.getClientAddress()
        source = f"https from {getattr(peer, 'host', peer)}"

        def done(received: Received) -> None:
            if received.problem is not None:
                _finish(request, 400, f"not an RFC 8460 report: {received.problem}")
            else:
                _finish(request, 201, "stored")

        def failed(failure: Any) -> None:
            log.failure("storing a POSTed TLS-RPT report failed", failure)
            _finish(request, 500, "the report could not be stored; send it again later")

        ensureDeferred(self.inbox.receive_post(content_type, body, source)).addCallbacks(done, failed)
        return NOT_DONE_YET

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("allow", "POST")
        return _answer(request, 405, "POST a TLS-RPT report here (RFC 8460)")


def _answer(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader("content-type", "text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


def _finish(request: Request, code: int, text: str) -> None:
    if request.finished or request.channel is None:
        return  # the client left
    request.write(_answer(request, code, text))
    request.finish()


def tlsrpt_site(inbox: TLSRPTInbox) -> Site:
    """A twisted.web site with ``/tlsrpt``."""
    root = Resource()
    root.putChild(b"tlsrpt", TLSRPTResource(inbox))
    site = Site(root, requestFactory=ReportRequest)
    site.noisy = False
    return site
