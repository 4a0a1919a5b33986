"""The webhook: POST each newly captured message's summary to ``[http] webhook_url``.

Runs beside SMTP, never in its way: arrivals are noticed from the relay's
events after the 250 was sent, the summary is read on the disk thread and
the POST goes out on its own; a slow or failing receiver only delays the
next POSTs.  Each message is posted once (the ids already seen are kept),
with up to ``ATTEMPTS`` tries ``RETRY_DELAYS`` apart, each bounded by
``POST_TIMEOUT``; a failed try is logged, the last one says it gave up.
The body is the message's list entry (``GET /api/messages``) as JSON.
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from tlsmta.devrelay._capture import CapturedMail
from tlsmta.devrelay._linkcheck import discard_body
from tlsmta.network import IServiceReactor

log = Logger(namespace="tlsmta.webhook")
T = TypeVar("T")

RETRY_DELAYS = (1.0, 5.0, 30.0)  # seconds before the 2nd, 3rd and 4th try
ATTEMPTS = len(RETRY_DELAYS) + 1
POST_TIMEOUT = 10.0
HEADERS = {b"content-type": [b"application/json; charset=utf-8"], b"user-agent": [b"tlsmta-dev-relay-webhook"]}


def is_arrival(event: str, fields: dict[str, Any]) -> bool:
    """Whether an event may mean new captured mail: a message accepted over SMTP, or one
    the queue finished (the send API's, a bounce, a release that stayed local)."""
    return (event == "received" and fields.get("code") == 250) or event == "queue_done"


class Webhook:
    """Posts new captured messages' summaries to one URL (start/stop with the web service)."""

    def __init__(self, reactor: IServiceReactor, url: str, mail: CapturedMail,
                 run_blocking: Callable[..., Deferred[Any]]):
        self.reactor = reactor
        self.url = url
        self.mail = mail
        self.run_blocking = run_blocking
        self.agent = Agent(reactor, connectTimeout=POST_TIMEOUT)
        self._seen: set[str] | None = None  # ids posted or there at start; None until read
        self._scanning = False
        self._again = False
        self._pending: set[Deferred[Any]] = set()  # requests and retry waits, cancelled by stop()
        self._stopped = False
        self._outbox: deque[dict[str, Any]] = deque()  # summaries to POST, oldest first
        self._draining = False

    def start(self) -> Deferred[None]:
        """Remember what was captured before now: only mail arriving from now on is posted
        (also what arrives while the Maildir is being read)."""
        since = time.time()
        return self.run_blocking(self.mail.summaries).addCallback(self._started, since)

    def _started(self, entries: list[dict[str, Any]], since: float) -> None:
        self._seen = {entry["id"] for entry in entries if entry["received_ts"] < since}
        if len(self._seen) < len(entries):
            self._scan()

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        """An events sink (may be called off the reactor thread)."""
        if is_arrival(event, fields):
            self.reactor.callFromThread(self._scan)

    def _scan(self) -> None:
        if self._seen is None or self._stopped:
            return
        if self._scanning:  # one scan at a time; a second arrival meanwhile rescans after it
            self._again = True
            return
        self._scanning = True
        self.run_blocking(self.mail.summaries).addCallback(self._new).addErrback(
            lambda f: log.failure("webhook: reading the captured mail failed", f)
        ).addBoth(self._scanned)

    def _scanned(self, _: object) -> None:
        self._scanning = False
        if self._again:
            self._again = False
            self._scan()

    def _new(self, entries: list[dict[str, Any]]) -> None:
        assert self._seen is not None
        for entry in reversed(entries):  # oldest first
            if entry["id"] not in self._seen:
                self._seen.add(entry["id"])
                self._outbox.append(entry)
        if self._outbox and not self._draining:
            ensureDeferred(self._drain())

    async def _drain(self) -> None:
        """POST the waiting summaries one after another, in arrival order."""
        self._draining = True
        try:
            while self._outbox and not self._stopped:
                await self._post(self._outbox.popleft())
        finally:
            self._draining = False

    def stop(self) -> None:
        """Cancel the POST or wait in flight; nothing more is posted."""
        self._stopped = True
        for pending in list(self._pending):
            pending.cancel()

    async def _cancellable(self, d: Deferred[T]) -> T:
        self._pending.add(d)
        try:
            return await d
        finally:
            self._pending.discard(d)

    async def _post(self, entry: dict[str, Any]) -> None:
        """POST one summary, retrying; never raises (a failure is logged)."""
        body = json.dumps(entry, ensure_ascii=False).encode("utf-8")
        for attempt in range(1, ATTEMPTS + 1):
            request = self.agent.request(b"POST", self.url.encode("ascii"), Headers(HEADERS),
                                         FileBodyProducer(io.BytesIO(body)))
            try:
                response = await self._cancellable(request.addTimeout(POST_TIMEOUT, self.reactor))
                discard_body(response)  # the status is the answer
                if 200 <= response.code < 300:
                    return
                reason = f"HTTP {response.code}"
            except Exception as e:  # refused, reset, timed out, cancelled by stop()
                reason = str(e) or type(e).__name__
            if self._stopped:
                return
            if attempt == ATTEMPTS:
                log.warn("webhook POST of {id} to {url} failed ({reason}); gave up after {attempts} attempts",
                         id=entry["id"], url=self.url, reason=reason, attempts=attempt)
                return
            delay = RETRY_DELAYS[attempt - 1]
            log.warn("webhook POST of {id} to {url} failed ({reason}); retrying in {delay}s",
                     id=entry["id"], url=self.url, reason=reason, delay=delay)
            try:
                await self._cancellable(deferLater(self.reactor, delay, lambda: None))
            except CancelledError:
                return
