"""One TLS-RPT report per domain per day from a whole fleet (RFC 8460 expects one per sender).

Each node records its own sessions (``tlsrpt``).  Before the daily
reports, :class:`FleetReports` gives the sender the day's aggregate to
report, the fleet's when there is one (``tlsmta.cluster`` publishes each
node's aggregate and sums them), and ``claim`` says whether this node is
the one that sends a domain's report.  :class:`LocalReports` is a node
alone: its own aggregate, every domain its own.  The JSON form and the
sum of aggregates are here, pure.
"""

from __future__ import annotations

import datetime
from typing import Any, Protocol

from tlsmta.reporting._tlsrpt import FailureKey, PolicyStats

Aggregate = dict[str, list[PolicyStats]]


class FleetReports(Protocol):
    async def aggregate(self, day: datetime.date, local: Aggregate) -> Aggregate | None:
        """What to report for ``day``, given this node's ``local`` part; None: not yet (ask again later)."""

    async def claim(self, day: datetime.date, domain: str) -> bool | None:
        """Whether this node sends ``domain``'s report for ``day`` (False: another node does; None:
        cannot tell now, ask again later)."""


class LocalReports:
    """A node alone reports what it saw."""

    async def aggregate(self, day: datetime.date, local: Aggregate) -> Aggregate | None:
        return local

    async def claim(self, day: datetime.date, domain: str) -> bool | None:
        return True


def aggregate_to_json(aggregate: Aggregate) -> dict[str, Any]:
    return {domain: [{
        "policy_type": stats.policy_type, "policy_strings": list(stats.policy_strings), "mx_hosts": list(stats.mx_hosts),
        "successes": stats.successes, "failures": stats.failures,
        "details": [[key.result_type, key.mx_host, key.sending_ip, key.receiving_ip, count, reason]
                    for key, (count, reason) in stats.details.items()],
    } for stats in policies] for domain, policies in aggregate.items()}


def merge_aggregates(parts: list[dict[str, Any]]) -> Aggregate:
    """The sum of several nodes' aggregates (as :func:`aggregate_to_json` wrote them): sessions and
    failure details added per domain and policy; a detail keeps the first reason seen."""
    out: dict[str, dict[tuple[Any, ...], PolicyStats]] = {}
    for part in parts:
        for domain, policies in part.items():
            for p in policies:
                strings, mx_hosts = tuple(p["policy_strings"]), tuple(p["mx_hosts"])
                stats = out.setdefault(domain, {}).setdefault(
                    (p["policy_type"], strings, mx_hosts), PolicyStats(p["policy_type"], strings, mx_hosts))
                stats.successes += int(p["successes"])
                stats.failures += int(p["failures"])
                for result_type, mx, sending_ip, receiving_ip, count, reason in p["details"]:
                    entry = stats.details.setdefault(FailureKey(result_type, mx, sending_ip, receiving_ip), [0, reason])
                    entry[0] += int(count)
    return {domain: list(policies.values()) for domain, policies in out.items()}
