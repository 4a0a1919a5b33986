"""A protocol-level harness: one InboundSMTP session over a fake transport."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from tlsmta.config._loader import parse_protocols
from tlsmta.inbound._server import InboundFactory, InboundSMTP, ListenerRuntime
from tlsmta.testing import FakeTLSTransport, MemorySink, build_config, dev_listener
from tlsmta.tls import _contexts as tls

HOSTNAME = "mx.test"


def runtime(
    sink: Any = None,
    listener: dict[str, Any] | None = None,
    global_options: dict[str, Any] | None = None,
    tls_pair: Any = None,
    users: Any = None,
    extra: dict[str, Any] | None = None,
) -> ListenerRuntime:
    """A ListenerRuntime over a MemorySink; ``tls_pair`` (a conftest Pair) enables STARTTLS."""
    listener = dict(listener or {})
    if tls_pair is not None:
        listener.update(tls_certificate=tls_pair.cert, tls_key=tls_pair.key)
    raw: dict[str, Any] = {
        "global": {"hostname": HOSTNAME, "route": "discard", **(global_options or {})},
        "listener": [dev_listener(**listener)],
        **(extra or {}),
    }
    config = build_config(raw)
    server_tls = None
    if tls_pair is not None:
        ctx = tls.server_context(tls_pair.cert, tls_pair.key, parse_protocols("+ALL"))
        server_tls = tls.ServerTLS(ctx)
    return ListenerRuntime(
        listener=config.listeners[0],
        config=config,
        hostname=HOSTNAME,
        sink=sink if sink is not None else MemorySink(),
        tls=server_tls,
        users=users,
    )


class Session:
    """Drives one session: ``send`` bytes, read ``replies``."""

    def __init__(self, rt: ListenerRuntime, peer: str = "127.0.0.1", factory: InboundFactory | None = None):
        self.clock = Clock()
        self.runtime = rt
        self.proto = InboundSMTP(rt, factory, self.clock)
        self.transport = FakeTLSTransport(peerAddress=_Address(peer))
        self.proto.makeConnection(self.transport)
        self._seen = 0

    @property
    def sink(self) -> MemorySink:
        return self.runtime.sink  # type: ignore[return-value]

    def send(self, data: bytes | str) -> list[str]:
        """Feed ``data`` in one read; return the reply lines it produced."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.dataReceived(data)
        return self.new_replies()

    def new_replies(self) -> list[str]:
        out = self.transport.value()[self._seen :]
        self._seen += len(out)
        return out.decode("utf-8").splitlines()

    def codes(self, data: bytes | str) -> list[int]:
        """Final reply codes for what ``data`` produced (continuation lines dropped)."""
        return [int(line[:3]) for line in self.send(data) if line[3:4] == " "]

    def ehlo(self, name: str = "client.test") -> list[str]:
        return self.send(f"EHLO {name}\r\n")

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


class _Address:
    """Just enough of an IPv4Address for getPeer()."""

    def __init__(self, host: str):
        self.host = host
        self.port = 40000
        self.type = "TCP"
