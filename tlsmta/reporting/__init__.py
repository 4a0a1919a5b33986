"""What tlsmta tells operators and peers: log events, one ``EventBus`` per
service, and their text/JSON observers (``events``), one message followed
through the logs (``trace``, for ``tlsmta log trace``), Prometheus metrics
(``metrics``), the TLS-RPT store and report (``tlsrpt``) and its daily
sender (``tlsrpt_sender``), one report per domain and day from a fleet
(``tlsrpt_fleet``), and the receiving side: other senders' reports
parsed (``tlsrpt_inbox``), kept (``tlsrpt_received``) and taken by HTTPS
POST (``tlsrpt_web``).

May import smtp, tls, discovery, storage and config; never inbound,
delivery or app.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.reporting._events import EventBus, json_observer, text_observer
from tlsmta.reporting._metrics import Metrics, metrics_site
from tlsmta.reporting._tlsrpt import TLSRPTStore
from tlsmta.reporting._tlsrpt_fleet import Aggregate, FleetReports, LocalReports, aggregate_to_json, merge_aggregates
from tlsmta.reporting._tlsrpt_inbox import summarize, summary_lines
from tlsmta.reporting._tlsrpt_received import ReceivedReports, TLSRPTInbox, received_directory
from tlsmta.reporting._tlsrpt_sender import TLSRPTService, store_directory
from tlsmta.reporting._tlsrpt_web import tlsrpt_site
from tlsmta.reporting._trace import LogRecord, parse_log_lines, trace_message

__all__ = [
    "Aggregate",
    "aggregate_to_json",
    "EventBus",
    "FleetReports",
    "json_observer",
    "LocalReports",
    "LogRecord",
    "merge_aggregates",
    "Metrics",
    "metrics_site",
    "parse_log_lines",
    "received_directory",
    "ReceivedReports",
    "store_directory",
    "summarize",
    "summary_lines",
    "text_observer",
    "TLSRPTInbox",
    "TLSRPTService",
    "tlsrpt_site",
    "TLSRPTStore",
    "trace_message",
]
