"""What the recipient domain publishes: DNS lookups with pinned answers
(``resolver``), MTA-STS discovery and policy cache (``mtasts``), DANE TLSA
lookups and chain checks (``dane``), and all of it gathered for one
destination (``published``).

May import ``tlsmta.tls`` and ``tlsmta.config``; never inbound, delivery or app.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.discovery._dane import TLSARecord, tlsa_name, verify_chain
from tlsmta.discovery._mtasts import CachedPolicy, PolicyFetcher, STSCache, STSError, STSResolver, parse_policy
from tlsmta.discovery._published import ExternalFacts, describe_facts, gather_facts
from tlsmta.discovery._resolver import (
    DNSError,
    DNSPermanent,
    MXHost,
    OfflineBackend,
    Resolver,
    below_self,
    canonical_ip,
)

__all__ = [
    "below_self",
    "CachedPolicy",
    "canonical_ip",
    "describe_facts",
    "DNSError",
    "DNSPermanent",
    "ExternalFacts",
    "gather_facts",
    "MXHost",
    "OfflineBackend",
    "parse_policy",
    "PolicyFetcher",
    "Resolver",
    "STSCache",
    "STSError",
    "STSResolver",
    "tlsa_name",
    "TLSARecord",
    "verify_chain",
]
