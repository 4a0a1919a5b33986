"""The ``connect`` and ``disconnect`` lines of one inbound session.

Every session gets both, also one that sent no mail (a scanner, a client
whose TLS handshake failed, one refused for too many connections), so an
operator can see who connected, on which listener and port, for how long,
what it did and what TLS it had: version, cipher, the SNI name it sent and
its certificate, or ``tls=none``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from tlsmta.reporting import EventBus


@attrs.define
class SessionLog:
    """Counts one session's commands and messages and logs its start and end."""

    events: EventBus
    listener: str
    started: float
    peer: str = "unknown"
    peer_port: int | None = None
    port: int | None = None  # the local port the client connected to
    commands: int = 0  # complete command lines
    messages: int = 0  # messages accepted (250 after DATA)
    refused: str | None = None  # why the connection was turned away at its start

    def _where(self) -> dict[str, Any]:
        return {"listener": self.listener, "peer": self.peer, "peer_port": self.peer_port, "port": self.port}

    def connected(self, peer: str, peer_port: int | None, port: int | None) -> None:
        self.peer, self.peer_port, self.port = peer, peer_port, port
        self.events.emit("connect", **self._where())

    def disconnected(self, now: float, tls_fields: Mapping[str, Any]) -> None:
        fields = self._where()
        fields.update(duration=round(max(0.0, now - self.started), 3), commands=self.commands, messages=self.messages)
        if self.refused is not None:
            fields["refused"] = self.refused
        fields.update(tls_fields)
        self.events.emit("disconnect", **fields)


def port_of(address: Any) -> int | None:
    """The TCP port of a Twisted address (None for a UNIX socket or the like)."""
    port = getattr(address, "port", None)
    return port if isinstance(port, int) else None
