"""Remembered broken TLS as ``tlsmta policy --mx`` and ``tlsmta probe`` show it.

The memory is the running daemon's (``delivery.broken_tls``), so it is asked
over the control socket; without a daemon the answer is "unknown", never a
guess.  Nothing is printed when ``tls_remember_broken`` is off.
"""

from __future__ import annotations

import datetime

from tlsmta.app._control import ControlClient, ControlError
from tlsmta.delivery import broken_tls_key, may_skip_tls
from tlsmta.tls import Requirement

CONTROL_TIMEOUT = 5  # seconds: a daemon busy for longer is reported as not answering


def remembered_broken_lines(socket_path: str, mx: str, port: int, remember_for: float | None, req: Requirement) -> list[str]:
    """One line: whether the daemon on ``socket_path`` would skip STARTTLS to ``mx``:``port`` under ``req``."""
    if remember_for is None:
        return []
    key = broken_tls_key(mx, port)
    if not may_skip_tls(req):
        return [f"Remembered broken TLS: never applied to {key} ({req.policy} policy: TLS is required or not falling back)."]
    try:
        entry = ControlClient(socket_path, timeout=CONTROL_TIMEOUT).request("tls.broken", key=key)
    except ControlError as e:
        return [f"Remembered broken TLS for {key}: unknown ({e})."]
    if entry is None:
        return [f"Remembered broken TLS for {key}: none; STARTTLS is tried (a failed handshake is remembered "
                f"for {remember_for:g}s)."]
    return [f"Remembered broken TLS for {key}: since {_when(entry['since'])}, until {_when(entry['until'])} "
            f"({entry['reason']}): sessions go straight to plain text (tls_fallback=remembered-broken)."]


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
