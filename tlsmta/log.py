"""Structured log events: one ``key=value`` line per event, every field kept.

Each event is emitted through twisted.logger with its fields as event keys,
so a JSON observer (``--log-format json``) gets them as data, while the
text format is a grep-friendly line.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

_log = Logger(namespace="tlsmta")


def _quote(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    if any(c in text for c in ' "=\\') or not text.isprintable():
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text


def kv_line(event: str, fields: dict[str, Any]) -> str:
    """``event key=value key="value with spaces"``."""
    return " ".join([event] + [f"{k}={_quote(v)}" for k, v in fields.items()])


def emit(event: str, **fields: Any) -> None:
    """Log one structured event (e.g. ``received``, ``delivery``)."""
    line = kv_line(event, fields)
    # Braces in values must not be read as format fields by twisted.logger.
    _log.info(line.replace("{", "{{").replace("}", "}}"), tlsmta_event=event, **fields)
