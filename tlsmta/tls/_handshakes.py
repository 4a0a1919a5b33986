"""TLS handshakes computed off the reactor thread.

A handshake's key exchange and signatures are most of a TLS session's CPU
and all of it is C: pyOpenSSL releases the GIL around ``do_handshake``, so
a thread computes it while the reactor serves the other sessions (two
threads ran 1.75 times the handshakes of one here: bench/profile-issue13.md).

:class:`OffloadedHandshakeTLS` is the TLS layer of every ``startTLS`` and
TLS listener in the process.  A step of the handshake that follows received
bytes runs in a :class:`HandshakeThreads` thread when the connection's
creator asked for it (``handshake_in_thread``: tlsmta's own
:class:`~tlsmta.tls.ServerTLS` and :class:`~tlsmta.tls.ClientTLS`, unless a
verify hook is configured, since a hook is promised the reactor thread) and
the service runs the threads.  Anything else (Twisted's own TLS options,
whose callbacks call into the transport, or no threads running) steps on
the reactor as stock Twisted does.

While a step runs, nothing on the reactor thread touches the
``SSL.Connection``: bytes received are held and fed after it, writes are
buffered as before a finished handshake, a TLS shutdown and the connection's
loss wait for it.  The result comes back through ``callFromThread`` and is
handled as ``TLSMemoryBIOProtocol`` handles its own.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IReactorFromThreads
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

import tlsmta.network  # noqa: F401  # sets the stock layer first; this module's assignment at the end replaces it

_WANT_READ = "want read"  # a step's outcome: the peer must speak next
_DONE = "done"  # the handshake is complete


class HandshakeThreads:
    """The threads handshake steps run in; one set per process, started by each service that
    wants it and ended when the last one stops (tests run several services in one process)."""

    def __init__(self, threads: int | None = None):
        self.size = threads if threads is not None else max(1, min(4, os.cpu_count() or 1))
        self._tasks: queue.SimpleQueue[tuple[SSL.Connection, Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._users = 0
        self.reactor: IReactorFromThreads | None = None

    @property
    def running(self) -> bool:
        return self._users > 0

    def start(self, reactor: IReactorFromThreads) -> None:
        self._users += 1
        self.reactor = reactor
        while len(self._threads) < self.size:
            thread = threading.Thread(target=self._work, name=f"tlsmta-tls-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """One user fewer; with none left the threads end after the steps already queued."""
        self._users -= 1
        if self._users == 0:
            for _ in self._threads:
                self._tasks.put(None)
            self._threads = []

    def step(self, tls: OffloadedHandshakeTLS) -> None:
        """Run ``tls``'s next handshake step in a thread; its outcome goes to ``tls.stepped``."""
        self._tasks.put((tls._tlsConnection, tls.stepped))

    def _work(self) -> None:
        reactor = self.reactor
        assert reactor is not None
        while (task := self._tasks.get()) is not None:
            connection, stepped = task
            reactor.callFromThread(stepped, handshake_step(connection))


def handshake_step(connection: SSL.Connection) -> str | Failure:
    """One ``do_handshake`` (in a handshake thread), as an outcome for :meth:`OffloadedHandshakeTLS.stepped`."""
    try:
        connection.do_handshake()
        return _DONE
    except SSL.WantReadError:
        return _WANT_READ
    except BaseException:  # a handshake failure, or a callback's exception pyOpenSSL re-raised
        return Failure()


THREADS = HandshakeThreads()


class OffloadedHandshakeTLS(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` whose handshake steps may run in :data:`THREADS` (module docstring)."""

    handshake_in_thread = False  # set by the connection's creator
    threads = THREADS
    _stepping = False  # a step runs in a thread: the SSL.Connection is not ours to touch
    _held_loss: Failure | None = None
    _shutdown_after_step = False

    _received = False  # bytes from the peer have arrived: a step has work to do

    def makeConnection(self, transport: Any) -> None:
        self._held_data: list[bytes] = []
        super().makeConnection(transport)  # its first step (a ClientHello at most) runs here

    def dataReceived(self, data: bytes) -> None:
        if self._stepping:
            self._held_data.append(data)
            return
        self._received = True
        super().dataReceived(data)

    def _checkHandshakeStatus(self) -> None:
        if self.handshake_in_thread and self._received and self.threads.running and not self._aborted:
            self._stepping = True
            self.threads.step(self)
            return
        super()._checkHandshakeStatus()

    def stepped(self, outcome: str | Failure) -> None:
        """A step's outcome, on the reactor thread, then what arrived while it ran, in order:
        the bytes held, then the connection's loss (which a failed handshake's reason names)."""
        self._stepping = False
        held, self._held_data = self._held_data, []
        loss, self._held_loss = self._held_loss, None
        if not self._aborted:
            self._apply(outcome)
        if held and self._alive:
            self.dataReceived(b"".join(held))  # may start the next step
        if loss is not None:
            self.connectionLost(loss)  # held again if a step started

    @property
    def _alive(self) -> bool:
        return self._tlsConnection is not None and not self._lostTLSConnection and not self._aborted

    def _apply(self, outcome: str | Failure) -> None:
        """What the stock layer does after ``do_handshake`` and, once it is done, in ``dataReceived``."""
        if isinstance(outcome, Failure):
            self._tlsShutdownFinished(outcome)
            return
        if outcome == _WANT_READ:
            self._flushSendBIO()
        else:
            self._handshakeDone = True
            if IHandshakeListener.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.handshakeCompleted()
            if not self._alive:
                return
            if self._appSendBuffer:
                self._unbufferPendingWrites()
            self._flushReceiveBIO()  # application bytes that came with the peer's last flight
        if self._shutdown_after_step and self._alive:
            self._shutdown_after_step = False
            super()._shutdownTLS()

    def write(self, data: bytes) -> None:
        if self._stepping:
            if not (self.disconnecting and self._producer is None):
                self._bufferedWrite(data)
            return
        super().write(data)

    def _shutdownTLS(self) -> None:
        if self._stepping:
            self._shutdown_after_step = True
            return
        super()._shutdownTLS()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._stepping:
            self._held_loss = reason
            return
        super().connectionLost(reason)


TLSMemoryBIOFactory.protocol = OffloadedHandshakeTLS
