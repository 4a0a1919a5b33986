"""A fleet of tlsmta nodes sharing state through Redis (DESIGN.md, Scaling out;
docs/scaling.md): the connection with its timeouts (``redis``), the key names
(``keys``), the Lua scripts (``scripts``), up/down and the local share of a
fleet cap (``health``), connection leases for ``cluster_max_connections``
(``leases``), remembered broken TLS shared (``broken_tls``), MTA-STS policies
shared (``sts_cache``), one TLS-RPT report per domain and day (``tlsrpt``), the heartbeat and
wiring (``service``) and what ``tlsmta cluster status`` reads (``status``).

May import delivery, reporting, discovery, config and below; never inbound, devrelay or
app.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.cluster._health import local_share
from tlsmta.cluster._keys import Keys
from tlsmta.cluster._redis import Redis, RedisUnavailable
from tlsmta.cluster._service import ClusterService
from tlsmta.cluster._status import FleetStatus, NodeStatus, fleet_status

__all__ = [
    "ClusterService",
    "fleet_status",
    "FleetStatus",
    "Keys",
    "local_share",
    "NodeStatus",
    "Redis",
    "RedisUnavailable",
]
