"""What tlsmta tells operators and peers: log events, one ``EventBus`` per
service, and their text/JSON observers (``events``), Prometheus metrics
(``metrics``), the TLS-RPT store and report (``tlsrpt``) and its daily
sender (``tlsrpt_sender``).

May import smtp, tls, discovery, storage and config; never inbound,
delivery or app.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.reporting._events import EventBus, json_observer, text_observer
from tlsmta.reporting._metrics import Metrics, metrics_site
from tlsmta.reporting._tlsrpt import TLSRPTStore
from tlsmta.reporting._tlsrpt_sender import TLSRPTService, store_directory

__all__ = [
    "EventBus",
    "json_observer",
    "Metrics",
    "metrics_site",
    "store_directory",
    "text_observer",
    "TLSRPTService",
    "TLSRPTStore",
]
