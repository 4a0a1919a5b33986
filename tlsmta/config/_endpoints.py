"""Which TCP address a server endpoint string binds, read without Twisted.

Enough of Twisted's description syntax (``type:arg:key=value``, ``\\:`` for a
colon inside a value) to find the port and interface of the TCP kinds tlsmta
listens with, so that two listeners on one port are refused when the file is
checked instead of when the second one fails to bind.  Whether a string
parses at all is asked of Twisted itself (``tlsmta.app._preflight``).
"""

from __future__ import annotations

import ipaddress

TCP_KINDS = ("tcp", "tcp6", "reuseport")
WRAPPERS = ("haproxy",)  # prefixes that wrap another endpoint string


def _fields(text: str) -> list[str]:
    """Split at the colons that are not escaped, and unescape."""
    fields, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return fields


def tcp_parts(endpoint: str) -> tuple[str, dict[str, str]] | None:
    """The port as written and the keyword arguments of a TCP endpoint; None for other kinds."""
    fields = _fields(endpoint)
    while fields and fields[0] in WRAPPERS:
        fields = fields[1:]
    if not fields or fields[0] not in TCP_KINDS:
        return None
    positional = [f for f in fields[1:] if "=" not in f]
    named = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    return named.get("port", positional[0] if positional else ""), named


def port_problem(endpoint: str) -> str | None:
    """Why a TCP endpoint's port is not one, or None (other kinds are checked by Twisted)."""
    parts = tcp_parts(endpoint)
    if parts is None:
        return None
    port = parts[0]
    if not port.isdigit() or int(port) > 65535:
        return f"{endpoint!r}: the port must be a number from 0 to 65535 (got {port!r})"
    return None


def tcp_address(endpoint: str) -> tuple[int, str] | None:
    """(port, interface) a TCP endpoint binds, "" for every interface; None for other kinds,
    for port 0 (the kernel picks a free one) and for what does not parse (reported elsewhere)."""
    parts = tcp_parts(endpoint)
    if parts is None or port_problem(endpoint) is not None or int(parts[0]) == 0:
        return None
    return int(parts[0]), parts[1].get("interface", "")


def _every_interface(interface: str) -> bool:
    try:
        return interface == "" or ipaddress.ip_address(interface).is_unspecified
    except ValueError:
        return False  # a host name: compared as written


def overlaps(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Whether two TCP addresses cannot both be bound: same port, and the same interface
    or one of them on every interface (as Linux refuses without SO_REUSEPORT)."""
    if a[0] != b[0]:
        return False
    return a[1] == b[1] or _every_interface(a[1]) or _every_interface(b[1])
