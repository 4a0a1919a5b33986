"""The daily TLS-RPT run (RFC 8460 5.3): one report per domain and day, by email.

Once an hour :class:`TLSRPTService` looks for complete UTC days with
recorded sessions whose domains have not been reported yet; for each such
domain it looks up ``_smtp._tls.DOMAIN`` and queues the gzipped JSON report
as an email to every ``mailto:`` rua address (``https:`` rua is not
supported).  A domain is marked reported for the day only after its
emails are durable in the spool, and the mark is on disk, so a restart
neither loses nor repeats a day (a crash between the two repeats it).
Sending is opt-in (``tlsrpt_reports``); recording is always on, for
``tlsmta tlsrpt show``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tlsmta import log as events
from tlsmta import tlsrpt
from tlsmta.dns import DNSError
from tlsmta.ids import new_message_id
from tlsmta.routes import Route
from tlsmta.spool import QueuedMessage, RecipientState

log = Logger(namespace="tlsmta.tlsrpt")

CHECK_INTERVAL = 3600  # seconds between looks for days to report
KEEP_DAYS = 35  # recorded days kept on disk


def store_directory(state_dir: str) -> str:
    return os.path.join(state_dir, "tlsrpt")


class TLSRPTService(Service):
    """Opens the store (recording starts) and runs the hourly report check."""

    def __init__(self, owner: Any):
        self.owner = owner  # the TlsmtaService: config, resolver, spool, queue, pool, reactor
        self.store: tlsrpt.TLSRPTStore | None = None
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        self._lock = DeferredLock()  # one report run at a time (timer and callers)

    def startService(self) -> None:
        super().startService()
        try:
            self.store = tlsrpt.TLSRPTStore(store_directory(self.owner.config.state_dir))
        except OSError as e:
            log.error("TLS-RPT disabled: cannot create {path}: {error}", path=store_directory(self.owner.config.state_dir), error=e)
            return
        self.owner.pool.tlsrpt = self.store
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.owner.reactor
        self._loop.start(CHECK_INTERVAL, now=True).addErrback(lambda f: log.failure("TLS-RPT timer failed", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.owner.pool.tlsrpt = None

    def tick(self) -> None:
        if self._running is not None or not self.owner.config.global_option("tlsrpt_reports"):
            return
        self._running = ensureDeferred(self.send_due())
        self._running.addErrback(lambda f: log.failure("TLS-RPT report run failed", f))

        def done(_: Any) -> None:
            self._running = None

        self._running.addBoth(done)

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.owner.reactor.seconds(), datetime.timezone.utc).date()

    async def send_due(self) -> int:
        """Report every complete day not reported yet; returns the number of emails queued."""
        return await self._lock.run(lambda: ensureDeferred(self._send_due()))

    async def _send_due(self) -> int:
        store, disk = self.store, self.owner.disk
        if store is None:
            return 0
        today = self.today()
        queued = 0
        for day in await disk.run(store.days_pending, today):
            aggregate = await disk.run(store.aggregate, day)
            done = await disk.run(store.sent, day)
            for domain in sorted(set(aggregate) - done):
                try:
                    uris = tlsrpt.parse_tlsrpt_txt(await self.owner.resolver.txt(tlsrpt.TXT_PREFIX + domain))
                except DNSError as e:
                    if not e.permanent:
                        continue  # try again at the next check
                    uris = []
                for address in filter(None, map(tlsrpt.mailto_address, uris)):
                    await self._queue_report(domain, day, aggregate, address)
                    queued += 1
                await disk.run(store.mark_sent, day, domain)
        await disk.run(store.prune, KEEP_DAYS, today)
        return queued

    async def _queue_report(self, domain: str, day: datetime.date, aggregate: Any, address: str) -> None:
        owner = self.owner
        config = owner.config
        hostname = owner.hostname
        sender = config.global_option("tlsrpt_sender") or f"noreply-tlsrpt@{hostname}"
        report_id = f"{day.isoformat()}_{domain}_{new_message_id()}"
        report = tlsrpt.build_report(
            config.global_option("tlsrpt_organization") or hostname,
            config.global_option("tlsrpt_contact") or f"postmaster@{hostname}",
            domain, day, aggregate, report_id,
        )
        now = owner.reactor.seconds()
        data = tlsrpt.report_email(
            report, sender, address, domain, hostname, report_id,
            datetime.datetime.fromtimestamp(now, datetime.timezone.utc),
        )
        route: Route = owner.queue.route_for(address.rpartition("@")[2].lower())
        message = QueuedMessage(
            id=new_message_id(),
            sender=sender,
            recipients=[RecipientState(address, route, "default")],
            received_at=now,
            size=len(data),
            listener="tlsrpt",
        )
        await owner.disk.run(owner.spool.store_blocking, message, data)
        owner.queue.add(message)
        events.emit("tlsrpt_report", msgid=message.id, domain=domain, day=day.isoformat(), to=address)
