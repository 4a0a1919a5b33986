"""The control socket: how `tlsmta queue ...` works on a running daemon.

One JSON object per line each way over a UNIX socket (mode 0600, in the
state directory): ``{"cmd": "queue.flush", "args": {...}}`` gets
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
Every change to the queue goes through the daemon, which owns the spool;
the CLI never writes spool files behind its back.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from tlsmta.delivery import BrokenTLS, Queue, QueueError
from tlsmta.errors import TlsmtaError
from tlsmta.network import StreamTransport
from tlsmta.storage import QueuedMessage

log = Logger(namespace="tlsmta.control")

MAX_REQUEST = 64 * 1024


def describe(message: QueuedMessage, in_flight: bool = False) -> dict[str, Any]:
    """A queued message as the CLI shows it."""
    return {
        "id": message.id,
        "sender": message.sender,
        "received_at": message.received_at,
        "size": message.size,
        "attempts": message.attempts,
        "next_attempt": message.next_attempt,
        "in_flight": in_flight,
        "held": message.held,
        "recipients": [
            {"address": r.address, "route": str(r.route), "binding": r.binding, "status": r.status, "last": r.last_shown}
            for r in message.recipients
        ],
        "tls": message.tls,
        "peer": message.peer,
        "helo": message.helo,
    }


class ControlProtocol(LineOnlyReceiver):
    """One control connection; commands run one at a time."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    # Twisted's ITransport | None has neither the TCP/TLS/producer methods nor the connected state.
    transport: StreamTransport  # type: ignore[assignment]

    def lineReceived(self, line: bytes) -> None:
        ensureDeferred(self._handle(line)).addBoth(self._answer)

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = request["cmd"]
            args = request.get("args") or {}
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        handler = self.factory.commands.get(command)
        if handler is None:
            return {"ok": False, "error": f"unknown command {command!r}"}
        try:
            return {"ok": True, "result": await handler(**args)}
        except QueueError as e:
            return {"ok": False, "error": str(e)}
        except TypeError as e:
            return {"ok": False, "error": f"bad arguments: {e}"}
        except Exception as e:
            log.failure("control command {command} failed", command=command)
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}

    def _answer(self, response: Any) -> None:
        if not isinstance(response, dict):
            response = {"ok": False, "error": "internal error"}
        self.sendLine(json.dumps(response).encode("utf-8"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, queue: Queue, reload: Callable[[], list[str]], running: Callable[[], dict[str, Any]] | None = None,
                 broken_tls: Callable[[str], BrokenTLS | None] | None = None):
        """``running``: what the daemon listens on and its start-time settings (``check-config --against-running``);
        ``broken_tls``: whether an MX host's TLS is remembered broken now, by its key (``policy --mx``, ``probe``)."""
        self.queue = queue
        self._broken_tls = broken_tls
        self.commands: dict[str, Callable[..., Awaitable[Any]]] = {
            "queue.list": self.queue_list,
            "queue.show": self.queue_show,
            "queue.flush": self.queue_flush,
            "queue.delete": self.queue_delete,
            "queue.bounce": self.queue_bounce,
            "queue.hold": self.queue_hold,
            "queue.release": self.queue_release,
            "queue.requeue": self.queue_requeue,
            "reload": self.reload,
            "status": self.status,
        }
        self._reload = reload
        if running is not None:
            self.commands["running"] = self._running(running)
        if broken_tls is not None:
            self.commands["tls.broken"] = self.tls_broken

    async def queue_list(self, domain: str | None = None) -> list[dict[str, Any]]:
        messages = sorted(self.queue.messages.values(), key=lambda m: m.received_at)
        if domain is not None:
            messages = [m for m in messages if any(r.domain == domain for r in m.pending)]
        return [describe(m, m.id in self.queue.in_flight) for m in messages]

    async def queue_show(self, id: str) -> dict[str, Any]:
        message = self.queue.messages.get(id)
        if message is None:
            raise QueueError(f"no queued message {id}")
        info = describe(message, id in self.queue.in_flight)
        head = await self.queue.spool.disk.run(self.queue.spool.read_body_blocking, message, HEADERS_SHOWN)
        info["headers"] = read_headers(head)
        return info

    async def queue_flush(self, id: str | None = None, domain: str | None = None) -> int:
        if id is not None and id not in self.queue.messages:
            raise QueueError(f"no queued message {id}")
        return self.queue.flush(message_id=id, domain=domain)

    async def queue_delete(self, id: str) -> str:
        await self.queue.delete(id)
        return id

    async def queue_bounce(self, id: str) -> str:
        await self.queue.bounce(id)
        return id

    async def queue_hold(self, ids: list[str] | None = None, domain: str | None = None, all: bool = False) -> list[str]:
        chosen = self.queue.select(ids or (), domain, all)
        for message_id in chosen:
            await self.queue.hold(message_id)
        return chosen

    async def queue_release(self, ids: list[str] | None = None, domain: str | None = None, all: bool = False) -> list[str]:
        chosen = self.queue.select(ids or (), domain, all)
        for message_id in chosen:
            await self.queue.hold(message_id, held=False)
        return chosen

    async def queue_requeue(self, ids: list[str] | None = None, domain: str | None = None, all: bool = False) -> list[str]:
        """Due now, routes and options resolved afresh (as every attempt does); held mail stays held."""
        chosen = [i for i in self.queue.select(ids or (), domain, all) if not self.queue.messages[i].held]
        for message_id in chosen:
            self.queue.flush(message_id=message_id)
        return chosen

    async def reload(self) -> list[str]:
        return self._reload()

    @staticmethod
    def _running(running: Callable[[], dict[str, Any]]) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def command() -> dict[str, Any]:
            return running()

        return command

    async def tls_broken(self, key: str) -> dict[str, object] | None:
        assert self._broken_tls is not None
        broken = self._broken_tls(key)
        return None if broken is None else broken.to_json()

    async def status(self) -> dict[str, Any]:
        size, oldest = self.queue.stats()
        return {"queued": size, "in_flight": len(self.queue.in_flight), "oldest_received_at": oldest}


HEADERS_SHOWN = 64 * 1024  # `queue show` reads this much of a message for its header section


def read_headers(head: bytes) -> str:
    """The header section of the start of a spooled message (as text, for display)."""
    end = head.find(b"\r\n\r\n")
    return head[: end if end >= 0 else len(head)].decode("utf-8", "replace")


def prepare_socket_path(path: str) -> None:
    """Make the socket's directory; remove a stale socket nobody answers on."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # left by a process that is gone
        else:
            raise OSError(f"another tlsmta is already listening on {path}")
        finally:
            probe.close()


class ControlClient:
    """The CLI's side: one blocking request per call."""

    def __init__(self, path: str, timeout: float = 30):
        self.path = path
        self.timeout = timeout

    def request(self, command: str, **args: Any) -> Any:
        """Send one command; return its result or raise ControlError."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise DaemonUnavailable(f"no tlsmta daemon answers on {self.path}: {e.strerror or e}") from None
        try:
            sock.sendall(json.dumps({"cmd": command, "args": args}).encode("utf-8") + b"\n")
            reply = sock.makefile("rb").readline()
        finally:
            sock.close()
        if not reply:
            raise ControlError("the daemon closed the control connection")
        response = json.loads(reply)
        if not response.get("ok"):
            raise ControlError(response.get("error") or "request refused")
        return response.get("result")


class ControlError(TlsmtaError):
    """The daemon refused or failed a request."""


class DaemonUnavailable(ControlError):
    """Nothing listens on the control socket."""
