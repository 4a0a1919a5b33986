"""What the dev relay's POP3 and IMAP servers share: the captured mail as a mail client
sees it, logins, the dev certificate, and a listening service.

A client gets each captured message as the Maildir holds it (with the
``Return-Path:`` and ``Delivered-To:`` lines the delivery added, as a Maildir
server such as Dovecot would serve it) in wire form, CRLF line ends.  Logins
are checked by what checks the dev relay's SMTP AUTH (``[dev] auth_users_file``,
else any user and password), in a thread.  Deleting a message (POP3 ``DELE``
then ``QUIT``, IMAP ``\\Deleted`` then ``EXPUNGE``) deletes it from the capture and
emits a quiet ``captured_deleted`` event, so the web page's list drops it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tlsmta.config import Config, parse_protocols
from tlsmta.devrelay._capture import CapturedMail, MessageNotFound
from tlsmta.devrelay._devcert import ensure_dev_certificate
from tlsmta.devrelay._tlslab import dev_names
from tlsmta.devrelay._webui import host_allowed
from tlsmta.network import IServiceReactor, PortService
from tlsmta.reporting import EventBus
from tlsmta.tls import ServerTLS, server_context

log = Logger(namespace="tlsmta.devrelay.mailaccess")

RunBlocking = Callable[..., Deferred[Any]]


class LoginCheck(Protocol):
    """What checks a login (``tlsmta.inbound.Credentials`` is one)."""

    def check(self, user: str, password: str) -> bool: ...


@attrs.frozen
class CapturedCopy:
    """One captured message as a mail client gets it."""

    id: str  # its capture id (the queue id): the POP3 UIDL, and what the IMAP UID is mapped from
    data: bytes  # the stored bytes with CRLF line ends
    received_ts: float


def wire_form(stored: bytes) -> bytes:
    """The Maildir's LF line ends back to CRLF (inbound refused bare CR and LF, so this is exact)."""
    return stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def snapshot(mail: CapturedMail) -> list[CapturedCopy]:
    """Every captured message, oldest first (blocking: run it in a thread)."""
    copies = []
    for entry in reversed(mail.summaries()):
        try:
            data, stored_at = mail.raw(entry["id"])
        except MessageNotFound:
            continue  # deleted meanwhile
        copies.append(CapturedCopy(entry["id"], wire_form(data), stored_at))
    return copies


def delete_all(mail: CapturedMail, ids: list[str]) -> list[str]:
    """Delete these messages from the capture (blocking); returns those that were there."""
    gone = []
    for message_id in ids:
        try:
            mail.delete(message_id)
        except MessageNotFound:
            continue
        gone.append(message_id)
    return gone


class Access:
    """The captured mail, the login check and the threads both servers use."""

    def __init__(self, mail: CapturedMail, logins: LoginCheck, run_blocking: RunBlocking, run_in_thread: RunBlocking,
                 events: EventBus):
        self.mail = mail
        self.events = events  # the relay's: the web page's event stream learns of deletes from it
        self.logins = logins
        self.run_blocking = run_blocking  # file reads and deletes (the service's disk thread)
        self.run_in_thread = run_in_thread  # password checks (scrypt is slow)
        self.seen: set[str] = set()  # ids a client retrieved or flagged \\Seen (while the relay runs)

    def load(self) -> Deferred[list[CapturedCopy]]:
        return self.run_blocking(snapshot, self.mail)

    def delete(self, ids: list[str]) -> Deferred[list[str]]:
        return self.run_blocking(delete_all, self.mail, ids).addCallback(self._deleted)

    def _deleted(self, gone: list[str]) -> list[str]:
        if gone:
            self.events.emit("captured_deleted", quiet=True, ids=gone)
        return gone


@implementer(ICredentialsChecker)
class LoginChecker:
    """twisted.cred's checker over the dev relay's login check (run in a thread)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, access: Access):
        self.access = access

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        user = _text(credentials.username)
        password = _text(credentials.password)

        def decided(ok: bool) -> bytes | tuple[()]:
            # !r: the name is the peer's, and a CR or an escape sequence in it must not reach the log raw.
            log.info("POP3/IMAP login {user!r}: {result}", user=user, result="ok" if ok else "refused")
            if not ok:
                raise UnauthorizedLogin("wrong user name or password")
            return user.encode("utf-8")

        return self.access.run_in_thread(self.access.logins.check, user, password).addCallback(decided)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def login_portal(realm: IRealm, access: Access) -> Portal:
    """A portal to ``realm`` whose logins ``access`` checks."""
    return Portal(realm, [LoginChecker(access)])


def dev_tls_context(config: Config, hostname: str) -> SSL.Context:
    """The dev certificate's context (as the SMTP listener with ``tls_certificate = "auto"`` serves it)."""
    paths = ensure_dev_certificate(config.state_dir, dev_names(hostname))
    return server_context(paths.cert_path, paths.key_path, parse_protocols("+ALL:-TLSv1.0:-TLSv1.1"),
                          session_id=b"tlsmta-dev-mail-access")


class MailAccessService(PortService):
    """Listens for POP3 or IMAP on ``endpoint``: with ``implicit`` TLS from the first byte,
    else in clear with STLS/STARTTLS offered (the factory's protocols do that)."""

    def __init__(self, reactor: IServiceReactor, key: str, endpoint: str, factory: ServerFactory,
                 tls: SSL.Context | None):
        self.reactor = reactor
        self.key = key  # "pop3" or "imap": its [dev] key
        self.endpoint = endpoint
        self.factory = factory
        self.tls = tls  # implicit TLS with this context
        self.ready: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        wrapped: Any = self.factory if self.tls is None else TLSMemoryBIOFactory(ServerTLS(self.tls), False, self.factory)
        self.listen_on(serverFromString(self.reactor, self.endpoint).listen(wrapped))

    def listening(self, port: IListeningPort) -> None:
        super().listening(port)
        address = port.getHost()
        if not host_allowed(str(getattr(address, "host", ""))):
            log.warn("{name} listens on {host}, not loopback: whoever logs in reads every captured message "
                     "(without [dev] auth_users_file any user name and password log in)",
                     name=self.key.upper(), host=getattr(address, "host", address))
        log.info("{name} over the captured mail on {host}:{port} ({tls})", name=self.key.upper(),
                 host=getattr(address, "host", address), port=getattr(address, "port", ""),
                 tls="implicit TLS" if self.tls is not None else "STARTTLS offered")
        self.ready.callback(port)
