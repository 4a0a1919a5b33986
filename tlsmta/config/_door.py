"""The values of a listener's door options: rate limits and DNS blocklists.

``max_connection_rate = "30/1m"`` and ``max_message_rate = "100/1h"`` are
Postfix anvil's limits written as one string; ``dnsbl`` is postscreen's
``postscreen_dnsbl_sites`` as a list of tables, each zone with a weight that
counts toward ``dnsbl_threshold``.  Syntax only: what the inbound side does
with them is in ``tlsmta.inbound``'s door.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from tlsmta.smtp import normalize_domain

_RATE = re.compile(r"(\d+)\s*/\s*(\d*)\s*(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@attrs.frozen
class Rate:
    """At most ``count`` events per ``period`` seconds (a token bucket refilled evenly)."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(value: Any) -> Rate:
    """``"COUNT/PERIOD"`` with PERIOD ``30s``, ``1m``, ``1h``, ``1d`` (``"100/h"`` means one hour)."""
    match = _RATE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'must be a rate like "30/1m" or "100/1h" (got {value!r})')
    count, length, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3)
    if count < 1 or length < 1:
        raise ValueError(f"must allow at least 1 event in a period of at least 1{unit} (got {value!r})")
    return Rate(count, float(length * _UNIT_SECONDS[unit]))


@attrs.frozen
class DnsblZone:
    """One DNS blocklist: a listing there adds ``weight`` to the client's score."""

    zone: str
    weight: int = 1


def parse_dnsbl(value: Any) -> tuple[DnsblZone, ...]:
    """``[{zone = "zen.example", weight = 2}, ...]``; weight defaults to 1 and may be negative (an allow list)."""
    if not isinstance(value, list):
        raise ValueError('must be a list of tables like {zone = "zen.example", weight = 2}')
    zones = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("zone"), str) or set(entry) - {"zone", "weight"}:
            raise ValueError(f'each entry must be {{zone = "NAME", weight = N}} (got {entry!r})')
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"weight of {entry['zone']!r} must be an integer (got {weight!r})")
        zones.append(DnsblZone(normalize_domain(entry["zone"]), weight))
    return tuple(zones)
