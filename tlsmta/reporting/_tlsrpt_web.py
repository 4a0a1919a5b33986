"""``POST /tlsrpt``: TLS-RPT reports submitted over HTTPS (RFC 8460 3 and 5.2), a twisted.web site.

The body is ``application/tlsrpt+gzip`` or ``application/tlsrpt+json``; a
stored report is ``201 Created``, one that does not parse ``400`` with the
reason (and is kept under malformed/, as a mailed one is), another content
type ``415``, a body over the limit ``413``.  Anyone may POST (the RFC has
no authentication); the TLS around it is the listening service's.  A body
over the limit is refused as it arrives (:class:`BoundedRequest`): twisted.web
would otherwise keep any amount a peer sends in a temporary file first.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tlsmta.reporting._tlsrpt_inbox import MAX_REPORT_BYTES, REPORT_TYPES
from tlsmta.reporting._tlsrpt_received import Received, TLSRPTInbox

log = Logger(namespace="tlsmta.tlsrpt")


_TOO_LARGE = f"a report is at most {MAX_REPORT_BYTES} bytes\n".encode()


class BoundedRequest(Request):
    """A request whose body may be at most MAX_REPORT_BYTES: past that (a Content-Length over it,
    or that many bytes of a chunked body) the peer gets 413 at once and the connection closes."""

    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length if length is None or length <= MAX_REPORT_BYTES else 0)
        if length is not None and length > MAX_REPORT_BYTES:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_REPORT_BYTES:
            self._refuse()
        elif not self.too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self.too_large:  # a refused body is never rendered, not even the part that came
            super().process()

    def _refuse(self) -> None:
        if self.too_large:
            return
        self.too_large = True
        content: IO[bytes] | None = self.content  # Twisted types it None until gotLength
        if content is not None:  # a chunked body's temporary file: emptied now, closed with the connection
            content.seek(0)
            content.truncate()
        # The request is not complete, so Request's own response machinery cannot answer yet.
        transport = self.channel.transport
        assert transport is not None
        transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE))
        transport.loseConnection()


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
        body = request.content.read()  # at most MAX_REPORT_BYTES: BoundedRequest refused more
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
    site = Site(root, requestFactory=BoundedRequest)
    site.noisy = False
    return site
