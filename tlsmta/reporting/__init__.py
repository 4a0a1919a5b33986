"""What tlsmta tells operators and peers: log events and their text/JSON
observers (``events``), Prometheus metrics (``metrics``), the TLS-RPT store
and report (``tlsrpt``) and its daily sender (``tlsrpt_sender``).

``events`` and ``metrics`` import nothing of tlsmta but each other; never
inbound, delivery or app.
"""
