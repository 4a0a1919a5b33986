"""The queue: which spooled message is tried when, and what follows each attempt.

Pure scheduling decisions (:func:`retry_delay`, :func:`group_jobs`) are
separate from the :class:`Queue`, which holds the in-memory index of the
spool, runs due messages through a deliver function, records
per-recipient results durably, retries with backoff, and bounces (RFC
3464 DSN to the sender, never for a null sender) on 5xx or expiry.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tlsmta.config import Route, parse_route
from tlsmta.delivery._dsn import build_dsn, original_headers
from tlsmta.delivery._pool import DeliveryJob, RecipientResult
from tlsmta.errors import TlsmtaError
from tlsmta.reporting import EventBus
from tlsmta.smtp import Reply, domain_of
from tlsmta.storage import BOUNCED, DELIVERED, PENDING, QueuedMessage, RecipientState, Spool, new_message_id

log = Logger(namespace="tlsmta.queue")

LOAD_BATCH = 2000  # records read per disk-thread call at start


class QueueError(TlsmtaError):
    """An administrative request that cannot be done (unknown id, in flight)."""


def retry_delay(attempts: int, schedule: Sequence[int]) -> int:
    """Seconds before the next attempt after ``attempts`` attempts; the last step repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


Destination = Callable[[QueuedMessage, RecipientState], tuple[Route, str]]


def as_received(message: QueuedMessage, rcpt: RecipientState) -> tuple[Route, str]:
    """The route and binding recorded at arrival (a queue without a configuration to ask)."""
    return rcpt.route, rcpt.binding


def group_jobs(message: QueuedMessage, destination_for: Destination = as_received) -> list[DeliveryJob]:
    """One job per (route, domain, binding) among the pending recipients, each
    recipient's route and binding as ``destination_for`` says now."""
    groups: dict[tuple[Any, ...], list[RecipientState]] = {}
    for rcpt in message.pending:
        route, binding = destination_for(message, rcpt)
        domain = rcpt.domain if route.kind in ("mx", "smtp", "lmtp") else ""
        groups.setdefault((route, domain, binding), []).append(rcpt)
    return [DeliveryJob(message, tuple(rcpts), route, domain, binding) for (route, domain, binding), rcpts in groups.items()]


class Queue:
    """In-memory index of the spool plus the retry scheduler."""

    def __init__(
        self,
        spool: Spool,
        deliver: Callable[[DeliveryJob], Deferred[list[RecipientResult]]],
        clock: IReactorTime,
        hostname: str,
        retry_schedule: Sequence[int],
        max_lifetime: int,
        route_for: Callable[[str], Route] = lambda domain: parse_route("mx"),
        destination_for: Destination = as_received,
        now: Callable[[], float] | None = None,
        events: EventBus | None = None,
        soft_bounce: bool = False,
        delay_warning: float | None = None,
    ):
        self.events = events if events is not None else EventBus()
        self.spool = spool
        self.deliver = deliver
        self.clock = clock
        self.hostname = hostname
        self.retry_schedule = tuple(retry_schedule)
        self.max_lifetime = max_lifetime
        self.route_for = route_for  # where a DSN to a sender's domain goes
        self.destination_for = destination_for  # asked at each attempt: the running configuration's answer
        self.now = now or clock.seconds
        self.soft_bounce = soft_bounce  # [queue] soft_bounce: permanent failures stay queued, no DSN
        self.delay_warning = delay_warning  # [queue] delay_warning_time in seconds; None: no warnings
        self.messages: dict[str, QueuedMessage] = {}
        self.in_flight: set[str] = set()
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._timer: Any = None
        self._running = False
        self.idle: list[Deferred[None]] = []  # fired whenever nothing is due or in flight (tests, drain)
        self.on_flush: Callable[[], None] = lambda: None  # the operator says "now": back-offs end (the service sets it)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, message_ids: Sequence[str] = ()) -> Deferred[None]:
        """Load the queued ``message_ids`` (from Spool.prepare_blocking) in the
        disk thread, in batches, and deliver as they come in."""
        self._running = True
        return ensureDeferred(self._load(list(message_ids)))

    async def _load(self, message_ids: list[str]) -> None:
        for first in range(0, len(message_ids), LOAD_BATCH):
            batch = message_ids[first : first + LOAD_BATCH]
            messages, problems = await self.spool.disk.run(self.spool.load_blocking, batch)
            for path, reason in problems:
                log.error("unreadable spool record {path} moved to corrupt/: {reason}", path=path, reason=reason)
            for message in messages:
                if message.id not in self.messages:
                    self.add(message, due=message.next_attempt)
        self.events.emit("queue_loaded", messages=len(self.messages))

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- scheduling ------------------------------------------------------------------------

    def add(self, message: QueuedMessage, due: float | None = None) -> None:
        """Track a message that is durable in the spool; try it at ``due`` (default now)."""
        self.messages[message.id] = message
        message.next_attempt = self.now() if due is None else due
        heapq.heappush(self._heap, (message.next_attempt, next(self._seq), message.id))
        self._arm()

    def flush(self, message_id: str | None = None, domain: str | None = None) -> int:
        """Make messages due now (all, one, or those with pending recipients at ``domain``)."""
        self.on_flush()
        count = 0
        for message in list(self.messages.values()):
            if message_id is not None and message.id != message_id:
                continue
            if domain is not None and not any(r.domain == domain for r in message.pending):
                continue
            if message.id in self.in_flight or message.held:
                continue
            message.next_attempt = self.now()
            heapq.heappush(self._heap, (message.next_attempt, next(self._seq), message.id))
            count += 1
        self._arm()
        return count

    # -- administration (tlsmta queue ...) ---------------------------------------------------

    def _idle_message(self, message_id: str) -> QueuedMessage:
        message = self.messages.get(message_id)
        if message is None:
            raise QueueError(f"no queued message {message_id}")
        if message_id in self.in_flight:
            raise QueueError(f"{message_id}: a delivery attempt is in progress; try again in a moment")
        return message

    async def delete(self, message_id: str) -> None:
        """Remove a message without telling anyone (the operator's call)."""
        message = self._idle_message(message_id)
        del self.messages[message_id]
        await self.spool.disk.run(self.spool.remove_blocking, message)
        self.events.emit("queue_deleted", msgid=message_id)

    async def bounce(self, message_id: str) -> None:
        """Return a message to its sender now: a DSN for every pending recipient, then remove it.

        A recipient keeps its last real failure (reply and host) as the DSN's reason; one never
        tried is reported as returned by the postmaster.  The DSN is durable before the original
        goes; when it cannot be stored (disk full) nothing changes and QueueError says why."""
        message = self._idle_message(message_id)
        failed = message.pending
        before = [(r.status, r.last, r.remote) for r in failed]
        for rcpt in failed:
            rcpt.status = BOUNCED
            if not rcpt.last:
                rcpt.record(BOUNCED, Reply.of(550, "5.0.0", "returned to sender by the postmaster"), ours=True)
        self.in_flight.add(message_id)
        try:
            await self._bounce(message, failed, expired=False, returned=True)
        except BaseException as e:
            for rcpt, (status, last, remote) in zip(failed, before):
                rcpt.status, rcpt.last, rcpt.remote = status, last, remote
            if isinstance(e, OSError):
                raise QueueError(f"{message_id}: cannot store the DSN: {e.strerror or e}; the message stays queued, unchanged") from e
            raise
        finally:
            self.in_flight.discard(message_id)
        del self.messages[message_id]
        await self.spool.disk.run(self.spool.remove_blocking, message)
        self.events.emit("queue_bounced", msgid=message_id, rcpts=len(failed))

    def select(self, ids: Sequence[str] = (), domain: str | None = None, everything: bool = False) -> list[str]:
        """The ids an operator named: these ids (each must be queued), the messages with pending
        recipients at ``domain``, or all of them."""
        if everything:
            return sorted(self.messages)
        if domain is not None:
            return sorted(m.id for m in self.messages.values() if any(r.domain == domain for r in m.pending))
        for message_id in ids:
            if message_id not in self.messages:
                raise QueueError(f"no queued message {message_id}")
        return list(ids)

    async def hold(self, message_id: str, held: bool = True) -> None:
        """Hold a message (never attempted, durably, until released) or release it (due now).
        A hold during an attempt lets that attempt finish and stops the retries after it."""
        message = self.messages.get(message_id)
        if message is None:
            raise QueueError(f"no queued message {message_id}")
        if message.held == held:
            return
        message.held = held
        try:
            await self.spool.disk.run(self.spool.save_blocking, message, True)
        except OSError as e:
            message.held = not held
            raise QueueError(f"{message_id}: cannot record the change: {e.strerror or e}; nothing changed") from e
        self.events.emit("queue_held" if held else "queue_released", msgid=message_id)
        if not held:
            self.flush(message_id=message_id)

    def stats(self) -> tuple[int, float | None]:
        """(messages queued, receipt time of the oldest) for ``tlsmta status``."""
        if not self.messages:
            return 0, None
        return len(self.messages), min(m.received_at for m in self.messages.values())

    def gauges(self) -> tuple[int, float]:
        """(messages queued, seconds the oldest has waited) for metrics, by the queue's clock."""
        size, oldest = self.stats()
        return size, 0.0 if oldest is None else max(0.0, self.now() - oldest)

    def _arm(self) -> None:
        if not self._running or not self._heap:
            return
        due = max(0.0, self._heap[0][0] - self.now())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + due:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(due, self._run_due)

    def _run_due(self) -> None:
        self._timer = None
        now = self.now()
        while self._heap and self._heap[0][0] <= now:
            due, _, message_id = heapq.heappop(self._heap)
            message = self.messages.get(message_id)
            if message is None or message_id in self.in_flight or message.next_attempt != due or message.held:
                continue  # finished, already running, rescheduled (a stale heap entry), or held until released
            self._attempt(message)
        self._arm()
        self._check_idle()

    def _attempt(self, message: QueuedMessage) -> None:
        jobs = group_jobs(message, self.destination_for)
        self.in_flight.add(message.id)
        attempts = [maybeDeferred(self.deliver, job) for job in jobs]
        d = DeferredList(attempts, consumeErrors=True)
        d.addCallback(lambda results: ensureDeferred(self._attempt_done(message, jobs, results)))
        d.addErrback(self._record_failed, message)
        d.addBoth(lambda _: self._settled(message.id))

    def _record_failed(self, failure: Any, message: QueuedMessage) -> None:
        """Recording the outcome failed (disk full, body gone): keep the message
        scheduled in memory so it is retried, rather than forgotten until a restart."""
        log.failure("recording a delivery attempt of {msgid} failed; retrying later", failure, msgid=message.id)
        if message.id in self.messages:
            message.next_attempt = self.now() + retry_delay(max(message.attempts, 1), self.retry_schedule)
            heapq.heappush(self._heap, (message.next_attempt, next(self._seq), message.id))
            self._arm()

    def _settled(self, message_id: str) -> None:
        self.in_flight.discard(message_id)
        self._check_idle()

    def _check_idle(self) -> None:
        if self.in_flight or (self._heap and self._heap[0][0] <= self.now()):
            return
        waiters, self.idle = self.idle, []
        for d in waiters:
            d.callback(None)

    # -- after an attempt ------------------------------------------------------------------

    async def _attempt_done(self, message: QueuedMessage, jobs: list[DeliveryJob], outcomes: list[tuple[bool, Any]]) -> None:
        self.spool.take_fresh_body(message)  # kept for the first attempt only: a retry reads the file
        # Every record of an address gets its result: spool records written before RCPT
        # deduplication may hold one address twice, and a record left pending would be
        # delivered again at every retry.
        by_address: dict[str, list[RecipientState]] = {}
        for r in message.recipients:
            by_address.setdefault(r.address, []).append(r)
        newly_bounced = []
        now = self.now()
        not_before = now  # a backed-off destination's results say when it may be tried again
        for job, (ok, value) in zip(jobs, outcomes):
            if not ok:
                log.failure("delivery job failed", value)
                value = [RecipientResult(r.address, PENDING, Reply.of(451, "4.3.0", "internal error"), ours=True) for r in job.recipients]
            for result in value:
                if result.retry_after is not None:
                    not_before = max(not_before, result.retry_after)
                for rcpt in by_address[result.address]:
                    if rcpt.status != PENDING:
                        continue
                    status = self._unless_soft_bounce(message, rcpt, result.status, str(result.reply))
                    rcpt.record(status, result.reply, result.remote, result.ours)
                    if status == BOUNCED:
                        newly_bounced.append(rcpt)
        message.attempts += 1
        message.last_attempt = now
        expired = now - message.received_at >= self.max_lifetime
        if expired:
            for rcpt in message.pending:
                if self._unless_soft_bounce(message, rcpt, BOUNCED, f"expired: {rcpt.last}") == PENDING:
                    continue
                last = rcpt.last_reply
                expiry = last or Reply.of(451, "4.4.7", "message expired in the queue")
                rcpt.record(BOUNCED, expiry, rcpt.remote, rcpt.ours if last is not None else True)
                newly_bounced.append(rcpt)
        if newly_bounced:
            try:
                await self._bounce(message, newly_bounced, expired)
            except Exception:
                # The DSN is not stored (disk full...): keep those recipients pending
                # so the bounce is tried again, rather than finishing silently.
                for rcpt in newly_bounced:
                    rcpt.status = PENDING
                log.failure("could not store the DSN for {msgid}; will try again", msgid=message.id)
        if not message.pending:
            await self.spool.remove(message)
            del self.messages[message.id]
            self.events.emit("queue_done", msgid=message.id, attempts=message.attempts,
                        delivered=sum(r.status == DELIVERED for r in message.recipients),
                        bounced=sum(r.status == BOUNCED for r in message.recipients))
            return
        await self._warn_if_delayed(message, now)
        # The spool keeps the message's own schedule: a back-off is the running process's
        # knowledge of a destination, and a restart (the site may be back) forgets it.
        message.next_attempt = now + retry_delay(message.attempts, self.retry_schedule)
        await self.spool.disk.run(self.spool.save_blocking, message)
        message.next_attempt = max(message.next_attempt, not_before)
        heapq.heappush(self._heap, (message.next_attempt, next(self._seq), message.id))
        self._arm()

    def _unless_soft_bounce(self, message: QueuedMessage, rcpt: RecipientState, status: str, reason: str) -> str:
        """``status``, except that soft_bounce keeps a would-be bounce queued as deferred (as Postfix
        does during maintenance), its reason recorded and said in the log."""
        if status != BOUNCED or not self.soft_bounce:
            return status
        self.events.emit("soft_bounce", msgid=message.id, to=rcpt.address, result="deferred", reason=reason)
        return PENDING

    async def _warn_if_delayed(self, message: QueuedMessage, now: float) -> None:
        """One delay warning per message (Postfix delay_warning_time), once its recipients still
        pending have waited that long; recorded in the state saved next, so a restart does not repeat it."""
        if self.delay_warning is None or message.delay_warned or message.is_bounce:
            return
        if now - message.received_at < self.delay_warning:
            return
        try:
            await self._bounce(message, message.pending, expired=False, delayed=True)
        except Exception:
            log.failure("could not store the delay warning for {msgid}; will try again", msgid=message.id)
            return
        message.delay_warned = True

    async def _bounce(self, message: QueuedMessage, failed: list[RecipientState], expired: bool, returned: bool = False,
                      delayed: bool = False) -> None:
        """Send a DSN for ``failed`` (``delayed``: a warning for recipients still queued);
        none for a bounce (no bounce loops)."""
        if message.is_bounce:
            self.events.emit("bounce_dropped", msgid=message.id, rcpts=len(failed), reason="null sender")
        else:
            head = await self.spool.disk.run(self.spool.read_body_blocking, message, 128 * 1024)
            dsn_id = new_message_id()
            now = datetime.fromtimestamp(self.now(), timezone.utc)  # the queue's clock, as expiry uses
            data = build_dsn(
                reporting_mta=self.hostname,
                message_id=message.id,
                sender=message.sender,
                arrival=datetime.fromtimestamp(message.received_at, timezone.utc),
                failed=failed,
                headers=original_headers(head),
                now=now,
                expired=expired,
                returned=returned,
                last_attempt=datetime.fromtimestamp(message.last_attempt, timezone.utc) if message.last_attempt else None,
                delayed=delayed,
                retry_until=datetime.fromtimestamp(message.received_at + self.max_lifetime, timezone.utc) if delayed else None,
            )
            sender_domain = domain_of(message.sender)
            try:
                route = self.route_for(sender_domain)
            except ValueError:  # a sender domain that passed MAIL's syntax but not IDNA
                route = parse_route("mx")
            dsn = QueuedMessage(
                id=dsn_id,
                sender="",
                recipients=[RecipientState(message.sender, route, "default")],
                received_at=now.timestamp(),
                listener="dsn",
                # RFC 8689: what failed for a REQUIRETLS message (its headers among it)
                # goes back only over the same verified TLS, never in the clear.
                requiretls=message.requiretls,
            )
            await self.spool.disk.run(self.spool.store_blocking, dsn, data)
            self.add(dsn)
            self.events.emit("delay_warning" if delayed else "bounce", msgid=message.id, dsn=dsn_id, to=message.sender,
                             rcpts=len(failed))

    def wait_idle(self) -> Deferred[None]:
        """Fires when nothing is due now and no attempt is running."""
        d: Deferred[None] = Deferred()
        self.idle.append(d)
        self._check_idle()
        return d
