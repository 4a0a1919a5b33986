"""``[dev] auth`` must not make an open relay: a check of the loader, pure.

With ``[dev] auth`` and no ``[dev] auth_users_file``, a listener without its own
``auth_users_file`` accepts any user name and password, and an authenticated
client may relay.  On loopback, or when every route keeps mail on this machine
(``maildir:``, ``discard``, the dev relay's capture), that is the point; on
another address with a route that sends mail out (``mx``, ``smtp:``), anyone
who can connect could relay through it, so the configuration is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from tlsmta.config._endpoints import tcp_parts
from tlsmta.config._routes import Route

SENDS_OUT = ("mx", "smtp")  # route kinds whose mail leaves the machine


class _Listener(Protocol):
    """What is asked of a ``[[listener]]`` (the loader's ListenerConfig)."""

    @property
    def name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def auth_users_file(self) -> str | None: ...


def on_loopback(endpoint: str) -> bool:
    """Whether a server endpoint is reachable from this machine only (a unix socket, a loopback TCP address)."""
    parts = tcp_parts(endpoint)
    if parts is None:  # not TCP: a unix socket is local; another kind is not known to be
        return endpoint.removeprefix("haproxy:").startswith("unix:")
    interface = parts[1].get("interface", "")
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False  # every interface (""), or a host name: not known to be local


def open_relays(listeners: Iterable[_Listener], dev: Mapping[str, Any], routes: Iterable[Route | None]) -> list[str]:
    """The listeners where ``[dev] auth``'s any-credentials AUTH would let anyone relay out (None: the
    default route, mx)."""
    if not dev.get("auth") or dev.get("auth_users_file") is not None:
        return []
    if not any(route is None or route.kind in SENDS_OUT for route in routes):
        return []
    return [item.name for item in listeners if item.auth_users_file is None and not on_loopback(item.endpoint)]
