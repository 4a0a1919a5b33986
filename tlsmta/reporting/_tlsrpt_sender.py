"""The daily TLS-RPT run (RFC 8460 5.3): one report per domain and day, by email.

Once an hour :class:`TLSRPTService` looks for complete UTC days with
recorded sessions whose domains have not been reported yet; for each such
domain it looks up ``_smtp._tls.DOMAIN`` and queues the gzipped JSON report
as an email to every ``mailto:`` rua address and POSTs it to every
``https:`` one (RFC 8460 5.1, 5.2).  Each address is marked done for the
day once its email is durable in the spool or its POST got a 2xx, and
the domain once all are (the marks are on disk), so a restart neither
loses nor repeats a report (a crash between the two repeats it).  A POST
that fails is tried again at the next check, for two days.
Sending is opt-in (``tlsrpt_reports``); recording is always on, for
``tlsmta tlsrpt show``.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tlsmta.config import Route
from tlsmta.discovery import DNSError
from tlsmta.errors import TlsmtaError
from tlsmta.reporting import _tlsrpt as tlsrpt
from tlsmta.reporting._tlsrpt_fleet import FleetReports, LocalReports
from tlsmta.smtp import domain_of
from tlsmta.storage import QueuedMessage, RecipientState, new_message_id

log = Logger(namespace="tlsmta.tlsrpt")

CHECK_INTERVAL = 3600  # seconds between looks for days to report
POST_TIMEOUT = 60  # seconds for one https: report upload
GIVE_UP_AFTER = datetime.timedelta(days=2)  # failed uploads are retried this long
KEEP_DAYS = 35  # recorded days kept on disk


def store_directory(state_dir: str) -> str:
    """Where the TLS-RPT store lives: ``state_dir/tlsrpt``."""
    return os.path.join(state_dir, "tlsrpt")


class ReportFailed(TlsmtaError):
    """One report could not be handed over (an https: upload failed)."""


class TLSRPTService(Service):
    """Opens the store (recording starts) and runs the hourly report check."""

    def __init__(self, owner: Any):
        self.owner = owner  # the TlsmtaService: config, resolver, spool, queue, pool, reactor
        self.store: tlsrpt.TLSRPTStore | None = None
        self._loop: LoopingCall | None = None
        self._running: Deferred[int] | None = None
        self._lock = DeferredLock()  # one report run at a time (timer and callers)
        self.fleet: FleetReports = LocalReports()  # a fleet's nodes send one report per domain and day

    def startService(self) -> None:
        super().startService()
        try:
            self.store = tlsrpt.TLSRPTStore(store_directory(self.owner.config.state_dir), run=self.owner.disk.run)
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
            aggregate = await self.fleet.aggregate(day, await disk.run(store.aggregate, day))
            if aggregate is None:
                continue  # the fleet's other nodes have not shared this day yet
            done = await disk.run(store.sent, day)
            for domain in sorted(set(aggregate) - done):
                claimed = await self.fleet.claim(day, domain)
                if not claimed:
                    if claimed is False:
                        await disk.run(store.mark_sent, day, domain)  # another node of the fleet reports it
                    continue
                try:
                    uris = tlsrpt.parse_tlsrpt_txt(await self.owner.resolver.txt(tlsrpt.TXT_PREFIX + domain))
                except DNSError as e:
                    if not e.permanent:
                        continue  # try again at the next check
                    uris = []
                report = self._report(domain, day, aggregate)
                complete = True
                for uri in uris:
                    marker = f"{domain} {uri}"
                    if marker.lower() in done:
                        continue
                    try:
                        await self._deliver(domain, day, report, uri)
                    except ReportFailed as e:
                        log.warn("TLS-RPT report for {domain} ({day}) to {uri} failed: {error}", domain=domain,
                                 day=day.isoformat(), uri=uri, error=str(e))
                        complete = False
                        continue
                    await disk.run(store.mark_sent, day, marker)
                    queued += 1
                if complete or today - day > GIVE_UP_AFTER:
                    await disk.run(store.mark_sent, day, domain)
        await disk.run(store.prune, KEEP_DAYS, today)
        return queued

    def _report(self, domain: str, day: datetime.date, aggregate: Any) -> dict[str, Any]:
        config, hostname = self.owner.config, self.owner.hostname
        return tlsrpt.build_report(
            config.global_option("tlsrpt_organization") or hostname,
            config.global_option("tlsrpt_contact") or f"postmaster@{hostname}",
            domain, day, aggregate, f"{day.isoformat()}_{domain}_{new_message_id()}",
        )

    async def _deliver(self, domain: str, day: datetime.date, report: dict[str, Any], uri: str) -> None:
        address = tlsrpt.mailto_address(uri)
        if address is not None:
            await self._queue_report(domain, day, report, address)
        else:
            await self._post_report(domain, day, report, uri)

    async def _post_report(self, domain: str, day: datetime.date, report: dict[str, Any], uri: str) -> None:
        """RFC 8460 5.2: POST the gzipped JSON, Content-Type application/tlsrpt+gzip; 2xx is success."""
        import urllib.parse

        from tlsmta.tls import https_request, read_body

        url = urllib.parse.urlsplit(uri)
        host = (url.hostname or "").lower()
        try:
            port = url.port or 443
            addresses = await self.owner.resolver.addresses(host)
        except (ValueError, DNSError) as e:
            raise ReportFailed(f"cannot resolve {host or uri}: {e}") from None
        if not addresses:
            raise ReportFailed(f"{host} has no address")
        body = gzip.compress(json.dumps(report).encode("utf-8"), mtime=0)
        ca = self.owner.config_tls_ca(host)
        try:
            d = ensureDeferred(https_request(
                self.owner.reactor, b"POST", host, port, (url.path or "/") + (f"?{url.query}" if url.query else ""),
                addresses[0], ca, body=body, headers={b"content-type": [b"application/tlsrpt+gzip"]},
            ))
            response = await d.addTimeout(POST_TIMEOUT, self.owner.reactor)
            await read_body(response, 64 * 1024)
        except Exception as e:
            raise ReportFailed(str(e).strip() or type(e).__name__) from None
        if not 200 <= response.code < 300:
            raise ReportFailed(f"HTTP {response.code}")
        self.owner.events.emit("tlsrpt_report", domain=domain, day=day.isoformat(), to=uri)

    async def _queue_report(self, domain: str, day: datetime.date, report: dict[str, Any], address: str) -> None:
        owner = self.owner
        hostname = owner.hostname
        sender = owner.config.global_option("tlsrpt_sender") or f"noreply-tlsrpt@{hostname}"
        now = owner.reactor.seconds()
        data = tlsrpt.report_email(
            report, sender, address, domain, hostname, report["report-id"],
            datetime.datetime.fromtimestamp(now, datetime.timezone.utc),
        )
        route: Route = owner.queue.route_for(domain_of(address))
        message = QueuedMessage(
            id=new_message_id(),
            sender=sender,
            recipients=[RecipientState(address, route, "default")],
            received_at=now,
            listener="tlsrpt",
        )
        await owner.disk.run(owner.spool.store_blocking, message, data)
        owner.queue.add(message)
        self.owner.events.emit("tlsrpt_report", msgid=message.id, domain=domain, day=day.isoformat(), to=address)
