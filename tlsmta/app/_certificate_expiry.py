"""Certificate expiry: every certificate tlsmta serves or presents, its time left, the warnings.

What is watched: each listener's ``tls_certificate`` chains (role ``listener``),
its ``tls_sni`` chains (``sni``), and the outbound client certificates of every
delivery scope (``client``).  Generated dev certificates (``auto``, the TLS lab)
renew themselves and are left out.  The files are read when the configuration
is (start, SIGHUP) and once a day; the Prometheus gauge is computed at scrape
time from notAfter.  A warning is logged when a certificate comes within 30, 14
and 7 days of notAfter and when it has expired: once per threshold per
certificate (a renewed file is a new certificate) per process.  An expired
certificate is a warning too, not a refusal to start: opportunistic STARTTLS
peers still take it, and mail must keep flowing while it is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from tlsmta.config import Config
from tlsmta.tls import CertificateFacts, KeyPairError, read_certificate

log = Logger(namespace="tlsmta.certificates")

DAY = 24 * 3600
WARN_DAYS = (30, 14, 7, 0)  # 0: expired
CHECK_INTERVAL = DAY


@attrs.frozen
class Watched:
    """A certificate file and where the configuration uses it."""

    role: str  # listener | sni | client
    scope: str  # the listener's name, or the delivery scope: global, binding.NAME, domain.NAME, ...
    table: str  # for messages, as check-config names tables: listener."mx", domain."example.com"
    key: str  # the option: tls_certificate or tls_sni
    path: str


def watched_certificates(config: Config) -> list[Watched]:
    """Every certificate file ``config`` serves or presents, in file order of the tables."""
    out: list[Watched] = []
    for listener in config.listeners:
        table = f'listener."{listener.name}"'
        if listener.tls_lab is None:
            out += [Watched("listener", listener.name, table, "tls_certificate", cert) for cert, _ in listener.tls_chains]
        out += [Watched("sni", listener.name, table, "tls_sni", cert) for chains in listener.tls_sni for cert, _ in chains]
    for scope, table, options in _delivery_scopes(config):
        certificates = options.get("tls_certificate")
        if isinstance(certificates, str):
            certificates = (certificates,)
        out += [Watched("client", scope, table, "tls_certificate", cert) for cert in certificates or ()]
    return out


def _delivery_scopes(config: Config) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    yield "global", "global", config.global_options
    for kind, tables in (("binding_group", config.binding_groups), ("binding", config.bindings)):
        for name, scope in tables.items():
            yield f"{kind}.{name}", f'{kind}."{name}"', scope.options
            for domain, options in scope.domains.items():
                yield f"{kind}.{name}.domain.{domain}", f'{kind}."{name}".domain."{domain}"', options
    for domain, options in config.domains.items():
        yield f"domain.{domain}", f'domain."{domain}"', options


def due_threshold(seconds_left: float, warned: Iterable[int]) -> int | None:
    """The tightest threshold (days; 0 = expired) ``seconds_left`` has crossed that was not warned
    about yet, or None.  Pure: crossing several at once (a first look at 5 days) warns once."""
    crossed = [days for days in WARN_DAYS if seconds_left <= days * DAY]
    if not crossed or min(crossed) in warned:
        return None
    return min(crossed)


def describe_left(seconds_left: float) -> str:
    if seconds_left <= 0:
        return f"expired {int(-seconds_left // DAY)} day(s) ago"
    return f"expires in {int(seconds_left // DAY)} day(s)"


@attrs.frozen
class Reading:
    """A watched certificate with its facts."""

    where: Watched
    facts: CertificateFacts


def read_all(config: Config) -> list[Reading]:
    """The facts of every watched certificate that can be read (the others fail elsewhere, loudly)."""
    out = []
    for where in watched_certificates(config):
        try:
            out.append(Reading(where, read_certificate(where.path)))
        except KeyPairError:
            continue
    return out


def expiry_warnings(config: Config, now: float) -> list[str]:
    """check-config's lines: certificates within 30 days of notAfter or past it."""
    lines = []
    for reading in read_all(config):
        left = reading.facts.not_after.timestamp() - now
        if left <= WARN_DAYS[0] * DAY:
            where = reading.where
            lines.append(f"{config.path}: [{where.table}] {where.key}: certificate {where.path!r} "
                         f"({reading.facts.subject}) {describe_left(left)}, on {reading.facts.not_after:%Y-%m-%d %H:%M} UTC")
    return lines


class CertificateWatch:
    """The certificates of the running configuration: the gauge's samples and the warnings."""

    def __init__(self, clock: Any):
        self.clock = clock
        self.readings: list[Reading] = []
        self._warned: dict[tuple[str, float], set[int]] = {}  # (path, notAfter) -> thresholds warned

    def load(self, config: Config) -> None:
        """Read the configuration's certificates (at start and at each reload)."""
        self.readings = read_all(config)

    def check(self) -> None:
        """Warn once for each threshold newly crossed (run daily and after each update)."""
        now = self.clock.seconds()
        for reading in self.readings:
            not_after = reading.facts.not_after.timestamp()
            warned = self._warned.setdefault((reading.where.path, not_after), set())
            threshold = due_threshold(not_after - now, warned)
            if threshold is None:
                continue
            warned.update(days for days in WARN_DAYS if days >= threshold)
            where = reading.where
            log.warn("certificate {path} ({subject}, {role} {scope}) {left}, on {not_after} UTC",
                     path=where.path, subject=reading.facts.subject, role=where.role, scope=where.scope,
                     left=describe_left(not_after - now), not_after=f"{reading.facts.not_after:%Y-%m-%d %H:%M}",
                     threshold_days=threshold)

    def samples(self) -> list[tuple[dict[str, str], float]]:
        """``tlsmta_certificate_expiry_seconds``: labels and seconds until notAfter, now."""
        now = self.clock.seconds()
        return [({"role": r.where.role, "scope": r.where.scope, "path": r.where.path, "subject": r.facts.subject,
                  "key_type": r.facts.key_type}, r.facts.not_after.timestamp() - now) for r in self.readings]
