"""Sending mail: the queue with its retry schedule (``mailqueue``), the
per-destination pool and delivery jobs (``pool``), the choices about one MX
that ``tlsmta probe`` shares with delivery (``decisions``), MX hosts whose
TLS handshake failed, remembered (``broken_tls``), the fleet-wide
connection cap's leases (``leases``) and message rate (``pace``), the
``ESMTPSender`` shell (``client``), its LMTP variant and unix sockets
(``lmtp``) and delivery status notifications (``dsn``).

May import smtp, tls, discovery, storage, reporting and config; never
inbound, devrelay or app.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.delivery._broken_tls import BrokenTLS, BrokenTLSStore, MemoryBrokenTLS, broken_tls_key, may_skip_tls
from tlsmta.delivery._client import ConnectionBroken, EndpointFactory, connect, tcp_endpoints
from tlsmta.delivery._decisions import (
    addresses_to_try,
    dane_verdict,
    greeting_failure,
    pinned_verdict,
    requirement,
    session_outcome,
)
from tlsmta.delivery._dkim import DkimSigner, load_signing_key
from tlsmta.delivery._leases import NO_LEASE, ConnectionLeases, Lease, LocalLeases, Pacers, lease_key
from tlsmta.delivery._lmtp import UNIX_SOCKET_PORT, connection_class, lmtp_endpoints, unix_socket_host
from tlsmta.delivery._mailqueue import Queue, QueueError
from tlsmta.delivery._pace import Gcra, Rate
from tlsmta.delivery._pool import Deliverer, OutboundPool
from tlsmta.delivery._routing import destination_of

__all__ = [
    "addresses_to_try",
    "BrokenTLS",
    "broken_tls_key",
    "BrokenTLSStore",
    "connect",
    "connection_class",
    "ConnectionLeases",
    "ConnectionBroken",
    "dane_verdict",
    "Deliverer",
    "DkimSigner",
    "destination_of",
    "EndpointFactory",
    "Gcra",
    "greeting_failure",
    "lmtp_endpoints",
    "load_signing_key",
    "Lease",
    "lease_key",
    "LocalLeases",
    "may_skip_tls",
    "MemoryBrokenTLS",
    "NO_LEASE",
    "OutboundPool",
    "Pacers",
    "pinned_verdict",
    "Queue",
    "QueueError",
    "Rate",
    "requirement",
    "session_outcome",
    "tcp_endpoints",
    "UNIX_SOCKET_PORT",
    "unix_socket_host",
]
