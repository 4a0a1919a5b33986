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
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, Response
from twisted.web.http_headers import Headers

from tlsmta.devrelay._capture import CapturedMail
from tlsmta.devrelay._linkcheck import discard_body
from tlsmta.errors import TlsmtaError
from tlsmta.network import IServiceReactor

log = Logger(namespace="tlsmta.webhook")

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
        self._queue: Deferred[None] = Deferred()
        self._queue.callback(None)  # POSTs go one after another, in arrival order

    def start(self) -> Deferred[None]:
        """Remember what is already captured: only mail arriving from now on is posted."""
        return self.run_blocking(self.mail.summaries).addCallback(self._started)

    def _started(self, entries: list[dict[str, Any]]) -> None:
        self._seen = {entry["id"] for entry in entries}

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
                self._queue.addCallback(lambda _, e=entry: self.post(e))

    def stop(self) -> None:
        """Cancel the POST or wait in flight; nothing more is posted."""
        self._stopped = True
        for pending in list(self._pending):
            pending.cancel()

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._pending.add(d)
        return d.addBoth(lambda result: (self._pending.discard(d), result)[1])

    def post(self, entry: dict[str, Any], attempt: int = 1) -> Deferred[None]:
        """POST one summary, retrying; never fails (a failure is logged)."""
        if self._stopped:
            return succeed(None)
        body = json.dumps(entry, ensure_ascii=False).encode("utf-8")
        d = self.agent.request(b"POST", self.url.encode("ascii"), Headers(HEADERS), FileBodyProducer(io.BytesIO(body)))
        d.addTimeout(POST_TIMEOUT, self.reactor)
        d.addCallback(self._answered)

        def failed(failure: Failure) -> Deferred[None] | None:
            if self._stopped:
                return None
            reason = failure.getErrorMessage() or failure.type.__name__
            if attempt >= ATTEMPTS:
                log.warn("webhook POST of {id} to {url} failed ({reason}); gave up after {attempts} attempts",
                         id=entry["id"], url=self.url, reason=reason, attempts=attempt)
                return None
            delay = RETRY_DELAYS[attempt - 1]
            log.warn("webhook POST of {id} to {url} failed ({reason}); retrying in {delay}s",
                     id=entry["id"], url=self.url, reason=reason, delay=delay)
            wait = self._track(deferLater(self.reactor, delay, lambda: None))
            return wait.addCallback(lambda _: self.post(entry, attempt + 1)).addErrback(lambda _: None)

        return self._track(d).addErrback(failed)

    def _answered(self, response: Response) -> None:
        discard_body(response)  # the status is the answer
        if not 200 <= response.code < 300:
            raise WebhookRefused(f"HTTP {response.code}")


class WebhookRefused(TlsmtaError):
    """The receiver answered, but not with 2xx."""
