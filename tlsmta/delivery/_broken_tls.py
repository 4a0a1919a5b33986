"""Remembered broken TLS: an MX host whose handshake failed goes straight to plain text for a while.

With ``tls = ifavailable`` and ``tls_ifavailable_fallback``, a handshake that
fails for reasons other than the certificate is retried in plain text at
once.  With ``tls_remember_broken`` set (KumoMTA ``remember_broken_tls``,
Haraka's TLS no-go list), that host and port is remembered for that long
and the next sessions skip STARTTLS, so a broken peer does not cost a
failed handshake per connection.  Only where the effective requirement
would itself fall back: never under MTA-STS enforce, DANE, REQUIRETLS,
``tls = required`` or an ``smtps:`` route (their requirement is not
``ifavailable`` with fallback), whatever was remembered earlier.

The store is an interface (``get``/``remember``) so that a fleet can share
it (DESIGN.md, Scaling out: Redis); :class:`MemoryBrokenTLS` is this
process's own.  Everything here is pure: the caller passes the time.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from tlsmta.tls import Requirement, TLSAction, handshake_failed

# The ``tls_fallback`` word of a delivery line whose session skipped STARTTLS for this reason.
REMEMBERED_BROKEN = "remembered-broken"
MAX_REMEMBERED = 10_000  # hosts kept in memory; the oldest entry goes first


@attrs.frozen
class BrokenTLS:
    """One host's failed handshake: why, when, and until when it is remembered (epoch seconds)."""

    reason: str
    since: float
    until: float

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason, "since": self.since, "until": self.until}


class BrokenTLSStore(Protocol):
    """Where remembered failures live: keyed by :func:`broken_tls_key`."""

    def get(self, key: str, now: float) -> BrokenTLS | None:
        """The entry for ``key`` if it has not expired at ``now``."""

    def remember(self, key: str, broken: BrokenTLS) -> None:
        """Keep ``broken`` for ``key`` until ``broken.until`` (replacing an older entry)."""


class MemoryBrokenTLS:
    """The in-process store, bounded to ``limit`` hosts."""

    def __init__(self, limit: int = MAX_REMEMBERED):
        self.limit = limit
        self._entries: dict[str, BrokenTLS] = {}

    def get(self, key: str, now: float) -> BrokenTLS | None:
        broken = self._entries.get(key)
        if broken is not None and broken.until <= now:
            del self._entries[key]
            return None
        return broken

    def remember(self, key: str, broken: BrokenTLS) -> None:
        self._entries.pop(key, None)  # re-inserted last: the newest is evicted last
        if len(self._entries) >= self.limit:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = broken


def broken_tls_key(mx: str, port: int) -> str:
    """The host a failure is remembered for: MX name (case-insensitive, no trailing dot) and port."""
    return f"{mx.rstrip('.').lower()}:{port}"


def may_skip_tls(req: Requirement) -> bool:
    """Whether a remembered failure may send a session under ``req`` straight to plain text: only
    where a failed handshake would itself fall back (the same rule, :func:`handshake_failed`)."""
    if req.dane or req.requiretls or req.unusable is not None:
        return False
    return handshake_failed(req.tls, req.fallback, None, "") is TLSAction.PLAIN


def remembered(store: BrokenTLSStore, key: str, req: Requirement, remember_for: float | None, now: float) -> BrokenTLS | None:
    """The entry that makes this session skip STARTTLS, or None (feature off, nothing remembered,
    or a requirement that needs TLS)."""
    if remember_for is None or not may_skip_tls(req):
        return None
    return store.get(key, now)


def remember(store: BrokenTLSStore, key: str, reason: str, remember_for: float | None, now: float) -> None:
    """Keep a handshake failure that fell back to plain text for ``remember_for`` seconds (None: off)."""
    if remember_for is not None:
        store.remember(key, BrokenTLS(reason, now, now + remember_for))
