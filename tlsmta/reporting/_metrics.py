"""Prometheus metrics, derived from the structured events tlsmta emits.

Metrics are fed by the same events the log carries (see :mod:`tlsmta.reporting._events`),
so the numbers and the log lines cannot disagree, and no module counts
anything itself.  Queue gauges are read from the queue at scrape time.
Served by twisted.web on the opt-in ``[metrics] endpoint``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from tlsmta.network import BoundedRequest
from tlsmta.tls import RESULT_TYPES

LATENCY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600)


def reason_class(code: Any, text: Any) -> str:
    """``4.7`` from ``451 4.7.5 ...``: the enhanced status class and subject, else the reply class."""
    status = str(text or "").split(" ", 1)[0]
    if len(status) >= 3 and status[0] in "245" and status[1] == "." and status[2].isdigit():
        return status[:3]
    return f"{str(code or '0')[:1]}xx"


class Metrics:
    """A registry of tlsmta's metrics and the event handler that updates them."""

    def __init__(
        self,
        queue_gauges: Callable[[], tuple[int, float]] | None = None,
        certificates: Callable[[], Iterable[tuple[Mapping[str, str], float]]] | None = None,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter("tlsmta_connections", "Inbound SMTP sessions admitted", ["listener"], registry=r)
        self.received = Counter(
            "tlsmta_messages_received", "Inbound transactions by result", ["listener", "result", "reason"], registry=r
        )
        self.deliveries = Counter(
            "tlsmta_deliveries", "Delivery attempts by result and reason class", ["result", "reason"], registry=r
        )
        self.handshakes = Counter(
            "tlsmta_tls_handshakes", "TLS handshakes by direction, protocol and result", ["direction", "protocol", "result"],
            registry=r,
        )
        self.verify = Counter(
            "tlsmta_tls_verify", "Certificate verification outcomes", ["direction", "mode", "result"], registry=r
        )
        self.policies = Counter(
            "tlsmta_tls_policy", "Delivery attempts by the TLS policy applied (local, mta-sts-*, dane, requiretls) and result",
            ["policy", "result"], registry=r,
        )
        self.latency = Histogram(
            "tlsmta_delivery_latency_seconds", "From receipt to delivery", buckets=LATENCY_BUCKETS, registry=r
        )
        # TLS-RPT reports other senders sent us: what they saw delivering here (labels bounded:
        # result types outside RFC 8460's registry count as "other").
        self.tlsrpt_reports = Counter("tlsmta_tlsrpt_reports_received", "TLS-RPT reports received, by outcome",
                                      ["outcome"], registry=r)
        self.tlsrpt_failures = Counter("tlsmta_tlsrpt_reported_failures", "Failed sessions other senders reported, by result type",
                                       ["result_type"], registry=r)
        # A fleet ([cluster]): whether Redis answers, and sessions let through on local limits meanwhile.
        self.cluster_redis_up = Gauge("tlsmta_cluster_redis_up", "1 while the fleet's Redis answers, 0 on local limits",
                                      ["node"], registry=r)
        self.cluster_local_leases = Counter("tlsmta_cluster_local_leases", "Connection leases granted on local limits "
                                            "(1/N of the fleet cap) while Redis was away", registry=r)
        if queue_gauges is not None:
            r.register(_QueueCollector(queue_gauges))
        if certificates is not None:
            r.register(_CertificateCollector(certificates))

    def handle(self, event: str, fields: Mapping[str, Any]) -> None:
        """Update the metrics for one structured event."""
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(fields)

    def _on_session(self, f: Mapping[str, Any]) -> None:
        self.connections.labels(f.get("listener") or "-").inc()

    def _on_received(self, f: Mapping[str, Any]) -> None:
        if f.get("code") is None:
            return  # connection lost mid-DATA: no reply was given
        ok = f.get("code") == 250
        self.received.labels(
            f.get("listener") or "-", "accepted" if ok else "rejected", "-" if ok else reason_class(f.get("code"), f.get("text"))
        ).inc()

    def _on_attempt(self, f: Mapping[str, Any]) -> None:
        # Per attempt (one session's TLS, its worst reply), not per recipient's delivery line.
        result = f.get("result") or "-"
        reason = "-" if result == "delivered" else reason_class(f.get("code"), f.get("text"))
        self.deliveries.labels(result, reason).inc()
        if f.get("tls_policy"):
            self.policies.labels(f["tls_policy"], result).inc()
        if f.get("tls") == "tls":
            self.handshakes.labels("outbound", f.get("protocol") or "-", "ok").inc()
        elif f.get("verified") in ("no", "softfail") and f.get("reason"):
            self.handshakes.labels("outbound", "-", "failed").inc()
        mode = f.get("tls_verify")
        if mode and (f.get("tls") == "tls" or f.get("reason")):
            self.verify.labels("outbound", mode, _verify_result(mode, f.get("verified"))).inc()
        if result == "delivered" and f.get("delay") is not None:
            self.latency.observe(float(f["delay"]))

    def _on_tlsrpt_received(self, f: Mapping[str, Any]) -> None:
        self.tlsrpt_reports.labels("stored").inc()

    def _on_tlsrpt_malformed(self, f: Mapping[str, Any]) -> None:
        self.tlsrpt_reports.labels("malformed").inc()

    def _on_tlsrpt_reported_failure(self, f: Mapping[str, Any]) -> None:
        result_type = f.get("result_type") if f.get("result_type") in RESULT_TYPES else "other"
        self.tlsrpt_failures.labels(result_type).inc(int(f.get("sessions") or 0))

    def _on_cluster_redis(self, f: Mapping[str, Any]) -> None:
        self.cluster_redis_up.labels(f.get("node") or "-").set(1 if f.get("state") == "up" else 0)

    def _on_cluster_local_lease(self, f: Mapping[str, Any]) -> None:
        self.cluster_local_leases.inc()

    def _on_tls_inbound(self, f: Mapping[str, Any]) -> None:
        self.handshakes.labels("inbound", f.get("protocol") or "-", "ok").inc()

    def _on_tls_failed(self, f: Mapping[str, Any]) -> None:
        self.handshakes.labels("inbound", "-", "failed").inc()

    def _on_client_verify(self, f: Mapping[str, Any]) -> None:
        mode = f.get("tls_verify") or "no"
        self.verify.labels("inbound", mode, _verify_result(mode, f.get("verified"))).inc()


def _verify_result(mode: str, verified: Any) -> str:
    if mode == "no":
        return "unchecked"
    return {"yes": "verified", "softfail": "softfail"}.get(str(verified), "failed")


class _QueueCollector:
    """Queue size and oldest message age, read when Prometheus scrapes; the age is
    the queue's to tell, by the clock it runs on."""

    def __init__(self, gauges: Callable[[], tuple[int, float]]):
        self.gauges = gauges

    def collect(self) -> Iterable[GaugeMetricFamily]:
        size, age = self.gauges()
        yield GaugeMetricFamily("tlsmta_queue_messages", "Messages in the queue", value=size)
        yield GaugeMetricFamily("tlsmta_queue_oldest_age_seconds", "Age of the oldest queued message", value=age)


class _CertificateCollector:
    """Seconds until notAfter of each certificate served or presented, computed when Prometheus scrapes
    (``certificates``: each one's labels and seconds left; negative once expired)."""

    LABELS = ("role", "scope", "path", "subject", "key_type")

    def __init__(self, certificates: Callable[[], Iterable[tuple[Mapping[str, str], float]]]):
        self.certificates = certificates

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tlsmta_certificate_expiry_seconds",
            "Seconds until the certificate's notAfter, by role (listener, sni, client), scope and file",
            labels=self.LABELS,
        )
        for labels, seconds in self.certificates():
            family.add_metric([labels[name] for name in self.LABELS], seconds)
        yield family


def metrics_site(metrics: Metrics) -> Site:
    """A twisted.web site serving /metrics."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    site = Site(root, requestFactory=BoundedRequest)  # max_body 0: a scrape is a GET, no body is read
    site.noisy = False
    return site
