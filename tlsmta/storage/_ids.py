"""Message ids: unique across processes and nodes (the host name is part of it)."""

from __future__ import annotations

import itertools
import os
import re
import socket
import time

_counter = itertools.count()
_NODE = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().split(".")[0].lower()) or "node"


def new_message_id(now: float | None = None) -> str:
    """``<microseconds hex><pid hex><counter hex>.<node>``: sortable by time."""
    t = int((time.time() if now is None else now) * 1_000_000)
    return f"{t:013x}{os.getpid() & 0xFFFFF:05x}{next(_counter) & 0xFFFF:04x}.{_NODE}"
