"""POP3 (RFC 1939) over the dev relay's captured mail, with STLS (RFC 2595): ``[dev] pop3``.

Twisted's ``twisted.mail.pop3.POP3`` does the protocol; this adds STLS (it has
none), drops what a client pipelined behind STLS (as the SMTP side does after
STARTTLS), and answers QUIT only after the messages marked with DELE are
deleted from the capture (the UPDATE state of RFC 1939 section 6).
"""

from __future__ import annotations

import io
from typing import Any

from OpenSSL import SSL
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsmta.devrelay._mailaccess import Access, CapturedCopy
from tlsmta.network import StreamTransport
from tlsmta.tls import ServerTLS

log = Logger(namespace="tlsmta.devrelay.pop3")


@implementer(pop3.IMailbox)
class CapturedMailbox:
    """The captured mail as it was at login (a POP3 maildrop does not change during a session)."""

    def __init__(self, access: Access, copies: list[CapturedCopy]):
        self.access = access
        self.copies = copies
        self.deleted: set[int] = set()

    def _copy(self, index: int) -> CapturedCopy:
        if not 0 <= index < len(self.copies) or index in self.deleted:
            raise ValueError(f"no message {index + 1}")
        return self.copies[index]

    def listMessages(self, index: int | None = None) -> Any:
        if index is None:
            return [0 if i in self.deleted else len(copy.data) for i, copy in enumerate(self.copies)]
        return len(self._copy(index).data)

    def getMessage(self, index: int) -> io.BytesIO:
        copy = self._copy(index)
        self.access.seen.add(copy.id)
        return io.BytesIO(copy.data.replace(b"\r\n", b"\n"))  # Twisted's RETR sends each LF as CRLF

    def getUidl(self, index: int) -> bytes:
        return self._copy(index).id.encode("ascii", "replace")

    def deleteMessage(self, index: int) -> None:
        self._copy(index)
        self.deleted.add(index)

    def undeleteMessages(self) -> None:
        self.deleted.clear()

    def sync(self) -> Deferred[list[str]]:
        ids = [self.copies[i].id for i in sorted(self.deleted)]
        return self.access.delete(ids) if ids else succeed([])


class CapturedPOP3(pop3.POP3):
    """POP3 with STLS (when the factory has a TLS context) and a QUIT that waits for the deletes."""

    AUTH_CMDS = [*pop3.POP3.AUTH_CMDS, b"STLS"]
    starttls: SSL.Context | None = None  # what STLS offers (None: no STLS)
    # Twisted's ITransport | None has neither startTLS nor the connected state.
    transport: StreamTransport  # type: ignore[assignment]
    _tls_started = False
    _dropping = False  # the rest of the read that carried STLS

    def dataReceived(self, data: bytes) -> None:
        self._dropping = False  # a new read: after STLS, it came through TLS
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._dropping:
            super().lineReceived(line)

    def listCapabilities(self) -> list[bytes]:
        capabilities: list[bytes] = super().listCapabilities()
        if self._can_start_tls():
            capabilities.append(b"STLS")
        return capabilities

    def _can_start_tls(self) -> bool:
        return self.starttls is not None and not self.mbox and not self._tls_started

    def do_STLS(self) -> None:
        if not self._can_start_tls():
            self.failResponse(b"STLS not available")
            return
        assert self.starttls is not None
        self.successResponse(b"Begin TLS negotiation")
        # Nothing sent before the handshake is acted on inside TLS (RFC 2595 4, CVE-2011-0411):
        # LineOnlyReceiver has split the whole read already, so its other lines are dropped.
        self._buffer = b""
        self._dropping = self._tls_started = True
        self.transport.startTLS(ServerTLS(self.starttls))

    def do_QUIT(self) -> None:
        deleting = maybeDeferred(self.mbox.sync) if self.mbox else succeed(None)

        def answer(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("deleting messages at POP3 QUIT failed", result)
                self.failResponse(b"the messages marked deleted could not all be removed")
            else:
                self.successResponse()
            self.transport.loseConnection()

        deleting.addBoth(answer)


class POP3Factory(ServerFactory):
    """POP3 sessions over the capture; ``starttls``: the context STLS offers (None: none)."""

    noisy = False

    def __init__(self, portal: Any, starttls: SSL.Context | None):
        self.portal = portal
        self.starttls = starttls

    # Twisted types POP3.factory as None, so POP3 is not a protocol "with a factory" to mypy.
    def buildProtocol(self, addr: Any) -> CapturedPOP3:  # type: ignore[override]
        session = CapturedPOP3()
        session.factory = self  # type: ignore[assignment]
        session.portal = self.portal
        session.starttls = self.starttls
        return session


@implementer(IRealm)
class POP3Realm:
    """A POP3 login's maildrop: the capture as it is now."""

    def __init__(self, access: Access):
        self.access = access

    def requestAvatar(self, avatar_id: bytes | tuple[()], mind: object, *interfaces: Any) -> Deferred[tuple[Any, ...]]:
        assert pop3.IMailbox in interfaces, "only POP3 logs in here"
        return self.access.load().addCallback(lambda copies: (pop3.IMailbox, CapturedMailbox(self.access, copies), _no_logout))


def _no_logout() -> None:
    """Nothing to release: the maildrop is a snapshot."""
