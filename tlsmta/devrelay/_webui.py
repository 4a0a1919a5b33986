"""The dev relay's web page and JSON API, served by twisted.web (``[http] endpoint``).

No authentication: it belongs on loopback.  What keeps another web site
out of it even so:

- a request whose ``Host:`` is not a loopback name or address (or one of
  ``[http] allowed_hosts``) gets 403: DNS rebinding cannot reach the API;
- PUT and POST need ``Content-Type: application/json`` and DELETE is not a
  "simple" method, so a cross-site form or fetch cannot change anything
  without a CORS preflight, which is never answered;
- and whatever a browser lets through, a request that would change something
  (any method but GET and HEAD) with an ``Origin:`` other than the page's own
  gets 403 (:func:`same_origin`);
- mail is untrusted: the page inserts every string with ``textContent``,
  and a message's HTML is served with ``Content-Security-Policy: sandbox``
  into an ``<iframe sandbox>`` (no scripts, an opaque origin, no remote
  content).

Routes (all JSON unless said otherwise):

``GET /api/messages[?to=&from=&subject=&q=&tag=&since=&until=&unread=&start=&limit=]``
(newest first; ``count`` is every match), ``DELETE /api/messages``,
``GET|DELETE /api/messages/ID`` (ID: the queue id of ``250 ... queued as ID``),
``PATCH /api/messages/ID`` (``{"read": BOOL, "tags": [...]}``),
``GET /api/messages/ID/raw`` (the bytes as received, ``message/rfc822``),
``GET /api/messages/ID/source`` (those bytes as text, decoded with the message's charset),
``GET /api/messages/ID/parts/N/thumbnail`` (an image part, inline),
``GET /api/messages/ID/html`` (sandboxed HTML), ``GET /api/messages/ID/parts/N``
(download), ``GET /api/events`` (Server-Sent Events: ``hello``, ``changes``, ``releases``),
``POST /api/messages/ID/release`` (JSON ``{"smarthost": "HOST[:PORT]", "to": [...]}``:
queued for that smarthost under the configured TLS policy, see :mod:`tlsmta.devrelay._release`),
``GET /api/dev-ca.pem``, ``GET|PUT /api/tls-lab``, ``GET|POST|DELETE /api/chaos`` and
``DELETE /api/chaos/ID`` (SMTP failure rules, see :mod:`tlsmta.devrelay._chaos`), and the page at ``/``.
The checks, link check and send API (``/api/messages/ID/checks``,
``/api/messages/ID/linkcheck``, ``/api/send``) are :mod:`tlsmta.devrelay._webui_tools`;
the webhook is :mod:`tlsmta.devrelay._webhook`.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tlsmta.devrelay._capture import CapturedMail, Changes, MessageNotFound, captured_maildir
from tlsmta.devrelay._chaos import STAGES, ChaosError, ChaosRules, described
from tlsmta.devrelay._devcert import LAB_MODES, dev_ca_path
from tlsmta.devrelay._mailview import THUMBNAIL_TYPES, envelope_of, html_of, part_of, raw_text
from tlsmta.devrelay._release import ReleaseError, outgoing_body, release_message, smarthost_route
from tlsmta.devrelay._releases import ReleaseLog
from tlsmta.devrelay._search import TAG, parse_instant
from tlsmta.devrelay._send import SendError
from tlsmta.devrelay._tlslab import LabError, LabListener, lab_applies
from tlsmta.devrelay._webhook import Webhook
from tlsmta.devrelay._webui_tools import SEND_MAX_BODY, MessageTools
from tlsmta.errors import TlsmtaError
from tlsmta.network import BoundedRequest, IServiceReactor, PortService
from tlsmta.reporting import EventBus
from tlsmta.smtp import says_tls_required_no
from tlsmta.storage import QueuedMessage

log = Logger(namespace="tlsmta.webui")

HEARTBEAT = 15.0  # seconds between SSE comments: finds dead connections, keeps proxies open
MAX_BODY = 64 * 1024
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "chaos.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "checks.js": "text/javascript; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Mail HTML: no scripts, opaque origin, nothing fetched from the network (tracking pixels).
MAIL_CSP = ("sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; font-src data:")


def host_allowed(host: str | None, allowed: Iterable[str] = ()) -> bool:
    """Whether a request's ``Host:`` names this machine's loopback (or an allowed name).

    ``localhost``, ``*.localhost`` (RFC 6761), 127.0.0.0/8 and ``[::1]``, with
    or without a port; anything else could be a rebound DNS name.
    """
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in {a.lower().rstrip(".") for a in allowed}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin:`` is the page at ``Host:`` itself (``null``, another port or
    another loopback name is another origin)."""
    parts = urlsplit(origin.strip())
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


class HTTPError(TlsmtaError):
    """An error answer: status and a message for the JSON body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


MAX_PAGE = 1000  # the most entries one list request returns


def list_query(args: Mapping[bytes, list[bytes]]) -> dict[str, Any]:
    """``GET /api/messages``' query string as :meth:`CapturedMail.page` arguments; HTTPError 400
    for a bad one.  ``start``/``limit`` page (no ``limit``: every match)."""

    def arg(name: str) -> str | None:
        values = args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values and values[0] else None

    def number(name: str, low: int, high: int | None) -> int | None:
        text = arg(name)
        if text is None:
            return None
        if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
            raise HTTPError(400, f"{name} must be a whole number from {low}{f' to {high}' if high else ''}")
        return int(text)

    def instant(name: str, end_of_day: bool) -> float | None:
        text = arg(name)
        try:
            return None if text is None else parse_instant(text, end_of_day)
        except ValueError:
            raise HTTPError(400, f"{name} must be a date (2026-12-03) or an ISO 8601 time") from None

    unread = arg("unread")
    if unread not in (None, "true", "false"):
        raise HTTPError(400, "unread must be true or false")
    return {
        "to": arg("to"), "sender": arg("from"), "subject": arg("subject"), "text": arg("q"), "tag": arg("tag"),
        "since": instant("since", False), "until": instant("until", True),
        "unread": None if unread is None else unread == "true",
        "start": number("start", 0, None) or 0, "limit": number("limit", 1, MAX_PAGE),
    }


class Reply:
    """A response body with its content type and extra headers."""

    def __init__(self, body: bytes, content_type: str, status: int = 200, headers: dict[str, str] | None = None):
        self.body = body
        self.content_type = content_type
        self.status = status
        self.headers = headers or {}


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8", status)


class EventStream:
    """Open Server-Sent Events responses, told what changed in the captured mail.

    Every (re)connection starts with ``hello`` (the page fetches its first
    page then, so it catches up after a reconnect); then one ``changes``
    event ``{"added": [entry, ...], "removed": [id, ...]}`` per index run,
    so a page updates itself without refetching the list.  Runs of the index
    never overlap: arrivals during one make exactly one more, so a burst of
    mail costs a few index runs, not one per message.  ``listeners`` (the
    webhook) get the same :class:`Changes`, whether a page is open or not.
    """

    def __init__(self, reactor: IServiceReactor, sync: Callable[[], Deferred[Changes]]):
        self.reactor = reactor
        self.requests: set[Request] = set()
        self.listeners: list[Callable[[Changes], None]] = []
        self._sync = sync
        self._syncing = False
        self._again = False
        self._heartbeat = LoopingCall(self._send, b": ping\n\n")
        self._heartbeat.clock = reactor

    def start(self) -> None:
        self._heartbeat.start(HEARTBEAT, now=False)

    def stop(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        for request in list(self.requests):
            self.requests.discard(request)
            transport = request.channel.transport
            if transport is not None:  # a stream has no end of its own
                transport.loseConnection()

    def add(self, request: Request) -> None:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.channel.setTimeout(None)  # long-lived: the heartbeat finds dead peers instead
        request.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
        self.requests.add(request)
        request.notifyFinish().addBoth(lambda _: self.requests.discard(request))

    def refresh(self) -> None:
        """The Maildir may have changed: index it and tell every page what changed."""
        if self._syncing:
            self._again = True
            return
        self._syncing = True
        d = self._sync()
        d.addCallbacks(self.publish, lambda f: log.failure("indexing the captured mail failed", f))
        d.addBoth(self._synced)

    def _synced(self, _: Any) -> None:
        self._syncing = False
        if self._again:
            self._again = False
            self.refresh()

    def publish(self, changes: Changes) -> None:
        if changes.added or changes.removed or changes.updated:
            self.send_event("changes", json.dumps(attrs.asdict(changes), ensure_ascii=False))
            for listener in list(self.listeners):
                listener(changes)

    def send_event(self, name: str, data: str) -> None:
        """One named event to every page (``data``: one line of JSON)."""
        self._send(f"event: {name}\ndata: {data}\n\n".encode())

    def _send(self, data: bytes) -> None:
        for request in list(self.requests):
            try:
                request.write(data)
            except Exception:  # the connection went away mid-write
                self.requests.discard(request)

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        """An events sink: a message stored, one the queue finished (a bounce, a mixed
        message or the send API's may have gone into the Maildir), or messages a POP3/IMAP
        client deleted, means the list may have changed."""
        if (event == "received" and fields.get("code") == 250) or event in ("queue_done", "captured_deleted"):
            self.reactor.callFromThread(self.refresh)


class RelayHost(Protocol):
    """What the page needs of the running relay (``tlsmta.app._service.TlsmtaService`` is one)."""

    def lab_listeners(self) -> list[LabListener]: ...

    def switch_tls_lab(self, name: str, mode: str | None) -> None: ...

    def release(self, message: QueuedMessage, body: bytes) -> Deferred[None]: ...

    @property
    def events(self) -> EventBus: ...  # the relay's events, for the page's live stream

    @property
    def chaos(self) -> ChaosRules | None: ...  # the SMTP failure rules its listeners ask


class WebUI(Resource):
    """The whole site: the page, its static files and the API (one leaf resource)."""

    isLeaf = True

    def __init__(self, reactor: IServiceReactor, mail: CapturedMail, state_dir: str, run_blocking: Callable[..., Deferred[Any]],
                 allowed_hosts: Iterable[str] = (), host: RelayHost | None = None, keep_messages: int = 0):
        super().__init__()
        self.keep_messages = keep_messages  # prune to the newest N after each arrival; 0: never
        self._published: set[str] | None = None  # the ids the event stream has told the pages about
        self._since = time.time()  # mail stored from now on is news (to the pages and the webhook)
        self.reactor = reactor
        self.run_blocking = run_blocking  # file reads off the reactor thread (the service's DiskIO)
        self.mail = mail
        self.state_dir = state_dir
        self.allowed_hosts = tuple(allowed_hosts)
        self.host = host  # the running relay, for the TLS lab and Release; None: neither
        self.stream = EventStream(reactor, lambda: self._blocking(self._index))
        self.releases = ReleaseLog()
        self.tools: MessageTools | None = None  # checks, link check, send API (web_service sets it)
        self.static = {name: resources.files("tlsmta.devrelay").joinpath("web", name).read_bytes() for name in STATIC}

    # -- plumbing -------------------------------------------------------------------------

    def _blocking(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self.run_blocking(fn, *args)

    def _prune(self) -> None:
        pruned = self.mail.prune(self.keep_messages)
        if pruned:
            log.info("pruned {count} captured messages (keep_messages = {keep})", count=len(pruned), keep=self.keep_messages)

    def _index(self) -> Changes:
        """Index new mail and prune to ``keep_messages`` (in a disk thread); what the
        pages have not been told yet.  The first run learns what was there before
        the relay started; what came since is news even if it came before that run."""
        self._prune()
        if self._published is None:
            self._published = {entry["id"] for entry in self.mail.summaries() if entry["received_ts"] < self._since}
        changes = self.mail.changes_since(self._published)
        self._published = (self._published - set(changes.removed)) | {e["id"] for e in changes.added}
        return changes

    def render(self, request: Request) -> Any:
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")
        host = request.getHeader(b"host")
        if not host_allowed(host.decode("latin-1") if host else None, self.allowed_hosts):
            self._finish(request, json_reply({"error": "Host header is not a loopback name; see [http] allowed_hosts"}, 403))
            return NOT_DONE_YET
        request.notifyFinish().addErrback(lambda _: setattr(request, "tlsmta_gone", True))  # the client left
        method = request.method.decode("ascii", "replace")
        origin = request.getHeader(b"origin")
        if method not in ("GET", "HEAD") and origin is not None and not same_origin(origin.decode("latin-1"),
                                                                                     (host or b"").decode("latin-1")):
            self._finish(request, json_reply({"error": "a page of another origin may not change the dev relay"}, 403))
            return NOT_DONE_YET
        path = [segment.decode("utf-8", "replace") for segment in request.postpath or []]
        if path and path[-1] == "" and len(path) > 1:
            path = path[:-1]
        d = maybeDeferred(self._route, request, method, path)
        d.addCallbacks(lambda reply: self._finish(request, reply), lambda f: self._failed(request, f))
        return NOT_DONE_YET

    def _failed(self, request: Request, failure: Failure) -> None:
        if failure.check(HTTPError):
            self._finish(request, json_reply({"error": failure.value.message}, failure.value.status))
        elif failure.check(ReleaseError, SendError):
            self._finish(request, json_reply({"error": str(failure.value)}, 400))
        elif failure.check(MessageNotFound):
            self._finish(request, json_reply({"error": "no such message"}, 404))
        else:
            log.failure("web request failed", failure)
            self._finish(request, json_reply({"error": "internal error"}, 500))

    def _finish(self, request: Request, reply: Reply | None) -> None:
        if reply is None or request.finished or getattr(request, "tlsmta_gone", False):
            return  # a stream, or the client left
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", reply.content_type.encode())
        for name, value in reply.headers.items():
            request.setHeader(name.encode(), value.encode())
        request.setHeader(b"content-length", str(len(reply.body)).encode())
        if request.method != b"HEAD":
            request.write(reply.body)
        request.finish()

    def _json_body(self, request: Request, limit: int = MAX_BODY) -> Any:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise HTTPError(415, "send Content-Type: application/json")
        data = request.content.read(limit + 1) if request.content else b""
        if len(data) > limit:
            raise HTTPError(413, "request body too large")
        try:
            return json.loads(data or b"{}")
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past Python's stack
            raise HTTPError(400, "body is not valid JSON") from None

    # -- routes ---------------------------------------------------------------------------

    def _route(self, request: Request, method: str, path: list[str]) -> Any:
        if method == "HEAD":
            method = "GET"
        if path in ([], [""]):
            path = ["index.html"]
        if len(path) == 1 and path[0] in STATIC and method == "GET":
            return self._static(path[0])
        if len(path) == 2 and path[0] == "static" and path[1] in STATIC and method == "GET":
            return self._static(path[1])
        if not path or path[0] != "api":
            raise HTTPError(404, "not found")
        api = path[1:]
        tool = self.tools.route(method, api, lambda limit: self._json_body(request, limit)) if self.tools else None
        if tool is not None:
            return tool.addCallback(lambda answer: json_reply(*answer))
        if api == ["messages"]:
            if method == "GET":
                return self._list(request)
            if method == "DELETE":
                return self._blocking(self.mail.clear).addCallback(self._cleared)
        elif len(api) >= 2 and api[0] == "messages":
            return self._message(request, method, api[1], api[2:])
        elif api == ["events"] and method == "GET":
            self.stream.add(request)
            return None
        elif api == ["dev-ca.pem"] and method == "GET":
            return self._blocking(self._dev_ca)
        elif api and api[0] == "chaos":
            return self._chaos(request, method, api[1:])
        elif api == ["tls-lab"]:
            if method == "GET":
                return json_reply(self._lab_state())
            if method == "PUT":
                return self._set_lab(self._json_body(request))
        else:
            raise HTTPError(404, "not found")
        raise HTTPError(405, f"{method} not allowed here")

    def _static(self, name: str) -> Reply:
        headers = {"content-security-policy": PAGE_CSP, "x-frame-options": "DENY"} if name == "index.html" else {}
        return Reply(self.static[name], STATIC[name], headers=headers)

    def _list(self, request: Request) -> Deferred[Reply]:
        query = list_query(request.args or {})

        def pruned_page() -> tuple[int, list[dict[str, Any]]]:
            self._prune()  # the list never shows more than keep_messages, even before the stream's index run
            return self.mail.page(**query)

        return self._blocking(pruned_page).addCallback(
            lambda found: json_reply({"count": found[0], "start": query["start"], "messages": found[1]})
        )

    def _cleared(self, count: int) -> Reply:
        self.stream.refresh()
        return json_reply({"deleted": count})

    def _message(self, request: Request, method: str, message_id: str, rest: list[str]) -> Deferred[Reply]:
        if rest == [] and method == "GET":
            return self._blocking(self.mail.detail, message_id).addCallback(
                lambda found: json_reply({**found, "releases": self.releases.of(message_id)}))
        if rest == [] and method == "DELETE":
            self.releases.forget(message_id)  # the queue still delivers them; the page no longer shows them
            return self._blocking(self.mail.delete, message_id).addCallback(lambda _: self._cleared(1))
        if rest == ["raw"] and method == "GET":
            return self._blocking(self.mail.as_received, message_id).addCallback(
                lambda data: Reply(data, "message/rfc822", headers={
                    "content-disposition": f"attachment; filename*=UTF-8''{quote(message_id, safe='')}.eml"})
            )
        if rest == ["source"] and method == "GET":
            return self._blocking(self.mail.as_received, message_id).addCallback(
                lambda data: Reply(raw_text(data).encode("utf-8"), "text/plain; charset=utf-8")
            )
        if rest == [] and method == "PATCH":
            return self._change(message_id, self._json_body(request))
        if rest == ["html"] and method == "GET":
            return self._blocking(self._html, message_id)
        if len(rest) == 2 and rest[0] == "parts" and rest[1].isdigit() and method == "GET":
            return self._blocking(self._part, message_id, int(rest[1]))
        if rest[2:] == ["thumbnail"] and rest[0] == "parts" and rest[1].isdigit() and method == "GET":
            return self._blocking(self._thumbnail, message_id, int(rest[1]))
        if rest == ["release"] and method == "POST":
            return self._release(message_id, self._json_body(request))
        raise HTTPError(404, "not found")

    def _change(self, message_id: str, body: Any) -> Deferred[Reply]:
        """PATCH ``{"read": BOOL, "tags": [TAG, ...]}`` (either or both): the new list entry."""
        if not isinstance(body, dict) or not body or set(body) - {"read", "tags"}:
            raise HTTPError(400, 'send {"read": true|false, "tags": [TAG, ...]}')
        read, tags = body.get("read"), body.get("tags")
        if read is not None and not isinstance(read, bool):
            raise HTTPError(400, '"read" must be true or false')
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) and TAG.fullmatch(t) for t in tags)):
            raise HTTPError(400, '"tags" must be a list of tags: letters, digits, ".", "_", "-" (at most 64)')

        def change() -> dict[str, Any]:
            entry = self.mail.summary(message_id)
            if read is not None:
                entry = self.mail.mark_read(message_id, read)
            if tags is not None:
                entry = self.mail.set_tags(message_id, [t.lower() for t in tags])
            return entry

        return self._blocking(change).addCallback(self._changed_entry)

    def _changed_entry(self, entry: dict[str, Any]) -> Reply:
        self.stream.publish(Changes([], [], [entry]))
        return json_reply(entry)

    def _release(self, message_id: str, body: Any) -> Deferred[Reply]:
        """Queue a copy for a smarthost; delivered under the configured TLS policy."""
        host = self.host
        if host is None:
            raise HTTPError(404, "no queue to release into")
        if not isinstance(body, dict):
            raise HTTPError(400, 'send {"smarthost": "HOST[:PORT]", "to": [ADDRESS, ...] (optional)}')
        route = smarthost_route(body.get("smarthost"))

        def queue(found: tuple[bytes, float]) -> Deferred[Reply]:
            data = found[0]
            sender, recipients = envelope_of(data)
            if body.get("to") is None:  # the envelope tlsmta's local delivery recorded
                message = release_message(sender, recipients, route, "the stored Delivered-To lines")
            else:
                message = release_message(sender, body["to"], route)
            payload = outgoing_body(data)
            message.tls_required_no = says_tls_required_no(payload)
            if any(byte > 0x7F for byte in payload):
                message.body_type = "8BITMIME"
            message.smtputf8 = not all(a.isascii() for a in [sender, *(r.address for r in message.recipients)])

            def stored(_: Any) -> Reply:
                addresses = [r.address for r in message.recipients]
                self.releases.add(message_id, message.id, str(route), addresses)
                self._releases_changed(message_id)
                return json_reply({"queued_as": message.id, "to": addresses, "route": str(route), "state": "queued"}, 202)

            return host.release(message, payload).addCallback(stored)

        return self._blocking(self.mail.raw, message_id).addCallback(queue)

    def on_delivery(self, event: str, fields: dict[str, Any]) -> None:
        """An events sink: a delivery line of a release changes what the page shows of it."""
        if event == "delivery":
            self.reactor.callFromThread(self._delivered, dict(fields))

    def _delivered(self, fields: dict[str, Any]) -> None:
        message_id = self.releases.on_delivery(fields)
        if message_id is not None:
            self._releases_changed(message_id)

    def _releases_changed(self, message_id: str) -> None:
        data = json.dumps({"id": message_id, "releases": self.releases.of(message_id)}, ensure_ascii=False)
        self.stream.send_event("releases", data)

    def _html(self, message_id: str) -> Reply:
        html = html_of(self.mail.raw(message_id)[0])
        if html is None:
            raise HTTPError(404, "this message has no HTML part")
        return Reply(html.encode("utf-8"), "text/html; charset=utf-8", headers={"content-security-policy": MAIL_CSP})

    def _part(self, message_id: str, index: int) -> Reply:
        found = part_of(self.mail.raw(message_id)[0], index)
        if found is None:
            raise HTTPError(404, "no such part")
        part, payload = found
        name = part.get_filename() or f"part-{index}"
        # Always a download, never rendered: the bytes are the sender's.
        return Reply(payload, "application/octet-stream",
                     headers={"content-disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"})

    def _thumbnail(self, message_id: str, index: int) -> Reply:
        """A raster image part, inline, for the attachment list (never SVG or anything with script)."""
        found = part_of(self.mail.raw(message_id)[0], index)
        if found is None or found[0].get_content_type() not in THUMBNAIL_TYPES:
            raise HTTPError(404, "no such image part")
        return Reply(found[1], found[0].get_content_type(), headers={"content-security-policy": "sandbox; default-src 'none'"})

    def _dev_ca(self) -> Reply:
        try:
            with open(dev_ca_path(self.state_dir), "rb") as f:
                pem = f.read()
        except FileNotFoundError:
            raise HTTPError(404, "no dev CA yet: no listener uses tls_certificate = 'auto' or tls_lab") from None
        return Reply(pem, "application/x-pem-file",
                     headers={"content-disposition": 'attachment; filename="tlsmta-dev-ca.pem"'})

    # -- chaos: SMTP failures on purpose ------------------------------------------------------

    def _chaos(self, request: Request, method: str, rest: list[str]) -> Reply:
        rules = self.host.chaos if self.host is not None else None
        if rules is None:
            raise HTTPError(404, "no SMTP chaos here")
        if rest == [] and method == "GET":
            return json_reply({"stages": list(STAGES), "rules": rules.listing()})
        if rest == [] and method == "POST":
            body = self._json_body(request)
            if not isinstance(body, dict):
                raise HTTPError(400, 'send {"stage": STAGE, "code": CODE, "text", "status", "probability", "times", '
                                     '"recipient" (optional)}')
            try:
                rule = rules.add_from(body)
            except (ChaosError, TypeError) as e:
                raise HTTPError(400, str(e)) from None
            log.info("chaos: {stage} answers {reply}", stage=rule.stage.value, reply=str(rule.reply))
            return json_reply(described(rule, rule.times), 201)
        if rest == [] and method == "DELETE":
            return json_reply({"deleted": rules.clear()})
        if len(rest) == 1 and rest[0].isdigit() and method == "DELETE":
            if not rules.remove(int(rest[0])):
                raise HTTPError(404, "no such rule")
            return json_reply({"deleted": 1})
        raise HTTPError(404 if rest else 405, "not found" if rest else f"{method} not allowed here")

    # -- TLS lab ----------------------------------------------------------------------------

    def _lab_state(self) -> dict[str, Any]:
        listeners = [attrs.asdict(item) for item in self.host.lab_listeners()] if self.host is not None else []
        return {"modes": list(LAB_MODES), "listeners": listeners}

    def _set_lab(self, body: Any) -> Reply:
        if self.host is None:
            raise HTTPError(404, "no TLS lab here")
        if not isinstance(body, dict) or "mode" not in body:
            raise HTTPError(400, 'send {"mode": MODE or null, "listener": NAME (optional)}')
        mode, name = body["mode"], body.get("listener")
        if mode is not None and mode not in LAB_MODES:
            raise HTTPError(400, f"mode must be one of {', '.join(LAB_MODES)} or null")
        names = [name] if name is not None else [
            item.name for item in self.host.lab_listeners() if lab_applies(item.tls, mode)
        ]
        try:
            for listener in names:
                self.host.switch_tls_lab(listener, mode)
        except LabError as e:
            raise HTTPError(400, str(e)) from None
        return json_reply(self._lab_state())


class _APIRequest(BoundedRequest):
    """No body larger than the largest a route takes (the send API's) is read at all."""

    max_body = SEND_MAX_BODY


class _QuietSite(Site):
    """A Site without the access log: the page polls nothing, but streams and refetches."""

    noisy = False

    def log(self, request: object) -> None:
        pass


class WebService(PortService):
    """The web page and API on the opt-in ``[http] endpoint``."""

    def __init__(self, reactor: IServiceReactor, endpoint: str, web: WebUI, webhook: Webhook | None = None):
        self.reactor = reactor
        self.endpoint = endpoint
        self.web = web
        self.webhook = webhook
        self.ready: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.web.mail.ensure()
        if self.web.host is not None:
            self.web.host.events.add_sink(self.web.stream.on_event)
            self.web.host.events.add_sink(self.web.on_delivery)
        if self.webhook is not None:
            self.web.stream.listeners.append(self.webhook.on_changes)
        self.web.stream.start()
        self.web.stream.refresh()  # index what is there before the first arrival
        site = _QuietSite(self.web, reactor=self.reactor, requestFactory=_APIRequest)
        self.listen_on(serverFromString(self.reactor, self.endpoint).listen(site))

    def listening(self, port: IListeningPort) -> None:
        super().listening(port)
        address = port.getHost()
        if not host_allowed(str(getattr(address, "host", ""))):
            log.warn("the web page and API have no authentication and listen on {host}, not loopback",
                     host=getattr(address, "host", address))
        log.info("web page and API on http://{host}:{port}/ (messages in {maildir})",
                 host=getattr(address, "host", address), port=getattr(address, "port", ""), maildir=self.web.mail.path)
        self.ready.callback(port)

    def stopService(self) -> Deferred[None] | None:
        if self.web.host is not None:
            self.web.host.events.remove_sink(self.web.stream.on_event)
            self.web.host.events.remove_sink(self.web.on_delivery)
        if self.webhook is not None:
            self.web.stream.listeners.remove(self.webhook.on_changes)
            self.webhook.stop()
        self.web.stream.stop()
        return super().stopService()


def web_service(reactor: IServiceReactor, config: Any, host: RelayHost, run_blocking: Callable[..., Deferred[Any]]) -> WebService:
    """The WebService for ``config``'s ``[http]`` table (its endpoint must be set)."""
    maildir = captured_maildir(config)
    assert maildir is not None, "the loader refuses [http] endpoint without a Maildir to show"
    mail = CapturedMail(maildir, config.http.get("tag_rules") or ())
    web = WebUI(reactor, mail, config.state_dir, run_blocking, config.http.get("allowed_hosts") or (), host,
                config.http.get("keep_messages") or 0)
    web.tools = MessageTools(reactor, web.mail, run_blocking, host.release if host is not None else None,
                             config.http.get("link_check_hosts") or (), config.hostname or "localhost")
    url = config.http.get("webhook_url")
    webhook = Webhook(reactor, url) if url else None
    return WebService(reactor, config.http["endpoint"], web, webhook)
