"""Structured log events: one ``key=value`` line per event, every field kept.

Each event is emitted through twisted.logger with its fields as event keys,
so a JSON observer (``--log-format json``) gets them as data, while the
text format is a grep-friendly line.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger

_log = Logger(namespace="tlsmta")


_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[^\x20-\x7e]')
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _quote(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    if _NEEDS_QUOTES.search(text) is None:
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = _UNPRINTABLE.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode("utf-8")), text)
    return f'"{text}"'


def kv_line(event: str, fields: dict[str, Any]) -> str:
    """``event key=value key="value with spaces"``."""
    return " ".join([event] + [f"{k}={_quote(v)}" for k, v in fields.items()])


def emit(event: str, **fields: Any) -> None:
    """Log one structured event (e.g. ``received``, ``delivery``)."""
    # The text line is pre-formatted once; observers substitute a single field.
    _log.info("{tlsmta_line}", tlsmta_line=kv_line(event, fields), tlsmta_event=event, **fields)
