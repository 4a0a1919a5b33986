"""Milter addresses as Postfix writes them: ``inet:HOST:PORT``, ``inet6:[HOST]:PORT``, ``unix:PATH``.

HOST is an IP address: a milter is asked on every message, and a DNS
lookup in that path would make a resolver failure a mail failure.
"""

from __future__ import annotations

import ipaddress
from typing import Any


def milter_address(text: str) -> str:
    """The address, checked; ValueError says what is wrong."""
    kind, colon, rest = text.partition(":")
    if not colon or kind not in ("inet", "inet6", "unix"):
        raise ValueError(f"{text!r}: expected inet:HOST:PORT, inet6:[HOST]:PORT or unix:PATH")
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: the socket path must be absolute")
        return text
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: needs a port from 1 to 65535")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return text


def milter_addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of milter addresses (got {value!r})")
    return tuple(milter_address(v) for v in value)
