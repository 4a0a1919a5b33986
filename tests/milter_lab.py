"""A milter the test scripts, on a loopback port: it answers by the protocol until told to
crash, stall or send garbage at one command, and can return end-of-message modifications.

It is written from libmilter's mfdef.h independently of tlsmta's codec (its own framing),
so a test that passes through it checks the bytes on the wire, not the codec against itself.
"""

from __future__ import annotations

import smtplib
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

import attrs
from e2e import in_thread, send_smtplib, start_relay
from twisted.internet import protocol
from twisted.internet.interfaces import IListeningPort

from tlsmta.testing import dev_listener

# libmilter's reply to OPTNEG: version 6, every modification, no protocol flags (every step, every reply).
ALL_ACTIONS = 0x1FF


def frame(command: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">L", len(payload) + 1) + command + payload


@attrs.define
class Script:
    """What the milter does: ``misbehave`` at command ``at`` ("crash", "stall" or "garbage");
    ``replies`` per command byte (default "c"); ``end_of_message``: frames sent before the final reply."""

    misbehave: str | None = None
    at: bytes = b""
    replies: dict[bytes, bytes] = attrs.field(factory=dict)
    end_of_message: list[bytes] = attrs.field(factory=list)
    final: bytes = frame(b"a")
    protocol: int = 0


class ScriptedMilter(protocol.Protocol):
    def __init__(self, factory: ScriptedMilterFactory):
        self.factory = factory
        self.buffer = b""

    def connectionMade(self) -> None:
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack(">L", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                return
            command, payload = self.buffer[4:5], self.buffer[5 : 4 + length]
            self.buffer = self.buffer[4 + length :]
            self.factory.seen.append((command, payload))
            if not self.handle(command, payload):
                return

    def handle(self, command: bytes, payload: bytes) -> bool:
        script = self.factory.script
        if script.misbehave and command == script.at:
            if script.misbehave == "crash":
                self.transport.abortConnection()  # type: ignore[attr-defined]
            elif script.misbehave == "garbage":
                self.transport.write(b"\xff\xff\xff\xffnonsense")  # type: ignore[union-attr]
            return False  # "stall": say nothing, ever
        if command == b"O":
            self.transport.write(frame(b"O", struct.pack(">LLL", 6, ALL_ACTIONS, script.protocol)))  # type: ignore[union-attr]
        elif command == b"E":
            self.transport.write(b"".join(script.end_of_message) + script.final)  # type: ignore[union-attr]
        elif command not in (b"D", b"A", b"Q"):  # macros, abort, quit: no reply
            self.transport.write(script.replies.get(command, frame(b"c")))  # type: ignore[union-attr]
        return True


class ScriptedMilterFactory(protocol.Factory):
    def __init__(self, script: Script):
        self.script = script
        self.seen: list[tuple[bytes, bytes]] = []
        self.connections = 0

    def buildProtocol(self, addr: Any) -> ScriptedMilter:
        return ScriptedMilter(self)

    def macros(self) -> dict[str, str]:
        """Every macro the MTA sent, by name (the last value)."""
        out: dict[str, str] = {}
        for command, payload in self.seen:
            if command == b"D":
                parts = payload[1:].split(b"\0")[:-1]
                out.update({parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)})
        return out


def listen(reactor: Any, script: Script) -> tuple[IListeningPort, ScriptedMilterFactory]:
    factory = ScriptedMilterFactory(script)
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), factory


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """Stop a milter daemon the test started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_started(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, log: Callable[[], str]) -> None:
    """Wait (bounded) until ``ready()``; a daemon that exits or never gets ready is stopped and its log shown."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            terminate(process)
            raise AssertionError(f"{process.args[0]} did not start:\n{log()[-4000:]}")
        time.sleep(0.05)


async def through_milter(directory: Any, milter: str, *bodies: str, sender: str = "alice@example.test") -> list[Any]:
    """Send each message through a relay (storing into ``directory``/maildir) whose listener asks
    ``milter``; smtplib's answer to each (the refused dict, or the exception it raised)."""
    relay = await start_relay(directory, [dev_listener(milters=[milter])])

    def send(body: str) -> Any:
        try:
            return send_smtplib(relay.port, sender=sender, rcpts=("bob@example.com",), body=body)
        except smtplib.SMTPException as e:
            return e

    try:
        return [await in_thread(send, body) for body in bodies]
    finally:
        await relay.stop()
