"""The webhook: POST each newly captured message's summary to ``[http] webhook_url``.

Runs beside SMTP, never in its way: arrivals are the ``added`` entries of
the web page's event stream (:class:`._webui.EventStream`: one ``changes``
per run of the capture index, after the 250 was sent), and the POST goes out
on its own; a slow or failing receiver only delays the next POSTs.  Mail
already there when the relay starts is not posted (the stream's first index
run only learns it); each new message is posted once, with up to
``ATTEMPTS`` tries ``RETRY_DELAYS`` apart, each bounded by ``POST_TIMEOUT``;
a failed try is logged, the last one says it gave up.  The body is the
message's list entry (``GET /api/messages``) as JSON.
"""

from __future__ import annotations

import io
import json
from collections import deque
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from tlsmta.devrelay._capture import Changes
from tlsmta.devrelay._linkcheck import discard_body
from tlsmta.network import IServiceReactor

log = Logger(namespace="tlsmta.webhook")
T = TypeVar("T")

RETRY_DELAYS = (1.0, 5.0, 30.0)  # seconds before the 2nd, 3rd and 4th try
ATTEMPTS = len(RETRY_DELAYS) + 1
POST_TIMEOUT = 10.0
HEADERS = {b"content-type": [b"application/json; charset=utf-8"], b"user-agent": [b"tlsmta-dev-relay-webhook"]}


class Webhook:
    """Posts new captured messages' summaries to one URL (the web service stops it)."""

    def __init__(self, reactor: IServiceReactor, url: str):
        self.reactor = reactor
        self.url = url
        self.agent = Agent(reactor, connectTimeout=POST_TIMEOUT)
        self._pending: set[Deferred[Any]] = set()  # requests and retry waits, cancelled by stop()
        self._stopped = False
        self._outbox: deque[dict[str, Any]] = deque()  # summaries to POST, oldest first
        self._draining = False

    def on_changes(self, changes: Changes) -> None:
        """A listener of the event stream: post what came (oldest first, as the stream gives it)."""
        if self._stopped:
            return
        self._outbox.extend(changes.added)
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
