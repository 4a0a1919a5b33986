"""IMAP4rev1 over the dev relay's captured mail, with STARTTLS: ``[dev] imap``.

Twisted's ``twisted.mail.imap4.IMAP4Server`` does the protocol (and refuses
LOGIN before STARTTLS when STARTTLS is offered: LOGINDISABLED); this module is
the one mailbox it serves, INBOX, read from the capture at each SELECT.
``BODY[]`` and ``RFC822`` are the message's bytes exactly (see
:mod:`tlsmta.devrelay._mailaccess`); ``\\Deleted`` then ``EXPUNGE`` deletes
from the capture.  UIDs are given in arrival order and kept while the relay
runs; UIDVALIDITY is the relay's start time, so a client resynchronises
after a restart.
"""

from __future__ import annotations

import email.utils
import io
from email import policy
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from typing import Any

from OpenSSL import SSL
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.mail import imap4
from twisted.mail.interfaces import IMessageIMAPFile
from zope.interface import implementer

from tlsmta.devrelay._mailaccess import Access, CapturedCopy
from tlsmta.tls import ServerTLS

INBOX = "INBOX"
SEEN, DELETED = "\\Seen", "\\Deleted"
_PARSER = BytesParser(policy=policy.compat32)
_CRLF = policy.compat32.clone(linesep="\r\n")


class Uids:
    """UIDs for captured messages: increasing in arrival order, stable while the relay runs."""

    def __init__(self, validity: int):
        self.validity = validity
        self.by_id: dict[str, int] = {}
        self.next = 1

    def of(self, message_id: str) -> int:
        uid = self.by_id.get(message_id)
        if uid is None:
            uid = self.by_id[message_id] = self.next
            self.next += 1
        return uid


def _name(value: bytes | str) -> str:
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else value).lower()


@implementer(imap4.IMessagePart)
class Part:
    """One MIME part: its headers and body from the parsed bytes."""

    def __init__(self, message: Message, raw: bytes):
        self.message = message
        self.raw = raw  # the part's bytes, header section included

    @classmethod
    def of(cls, message: Message) -> Part:
        out = io.BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_CRLF).flatten(message)
        return cls(message, out.getvalue())

    def getHeaders(self, negate: bool, *names: bytes | str) -> dict[str, str]:
        wanted = {_name(n) for n in names}
        return {
            key.lower(): str(value) for key, value in self.message.items()
            if not names or (key.lower() in wanted) != negate
        }

    def getBodyFile(self) -> io.BytesIO:
        end = self.raw.find(b"\r\n\r\n")
        return io.BytesIO(b"" if end < 0 else self.raw[end + 4:])

    def getSize(self) -> int:
        return len(self.raw)

    def isMultipart(self) -> bool:
        return self.message.is_multipart()

    def getSubPart(self, part: int) -> Part:
        if not self.message.is_multipart():
            raise TypeError("not a multipart message")
        parts = self.message.get_payload()
        assert isinstance(parts, list)
        sub = parts[part]
        assert isinstance(sub, Message)
        return Part.of(sub)


@implementer(imap4.IMessage, IMessageIMAPFile)
class CapturedIMAPMessage(Part):
    """A captured message: ``open()`` gives its bytes exactly, for BODY[] and RFC822."""

    def __init__(self, copy: CapturedCopy, uid: int, flags: list[str]):
        super().__init__(_PARSER.parsebytes(copy.data), copy.data)
        self.copy = copy
        self.uid = uid
        self.flags = flags

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.copy.data)

    def getUID(self) -> int:
        return self.uid

    def getFlags(self) -> list[str]:
        return self.flags

    def getInternalDate(self) -> str:
        return email.utils.formatdate(self.copy.received_ts, localtime=True)


@implementer(imap4.IMailbox)
class CapturedInbox:
    """INBOX: the capture as it was at SELECT; \\Seen is kept for the relay, \\Deleted for the session."""

    def __init__(self, access: Access, uids: Uids, copies: list[CapturedCopy]):
        self.access = access
        self.uids = uids
        self.copies = copies
        self.deleted: set[str] = set()
        self.listeners: list[Any] = []

    # -- what the mailbox is ----------------------------------------------------------------

    def getFlags(self) -> list[str]:
        return [SEEN, DELETED]

    def getHierarchicalDelimiter(self) -> str:
        return "/"

    def getUIDValidity(self) -> int:
        return self.uids.validity

    def getUIDNext(self) -> int:
        return self.uids.next

    def getUID(self, message: int) -> int:
        return self.uids.of(self.copies[message - 1].id)

    def getMessageCount(self) -> int:
        return len(self.copies)

    def getRecentCount(self) -> int:
        return 0

    def getUnseenCount(self) -> int:
        return sum(1 for copy in self.copies if copy.id not in self.access.seen)

    def isWriteable(self) -> bool:
        return True

    def destroy(self) -> None:
        raise imap4.MailboxException("INBOX cannot be deleted")

    def requestStatus(self, names: Any) -> Any:
        return imap4.statusRequestHelper(self, names)

    def addListener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def removeListener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def addMessage(self, message: Any, flags: Any = (), date: Any = None) -> Deferred[Any]:
        raise imap4.ReadOnlyMailbox("captured mail comes in over SMTP only")

    # -- messages ---------------------------------------------------------------------------

    def _flags(self, copy: CapturedCopy) -> list[str]:
        return [flag for flag, on in ((SEEN, copy.id in self.access.seen), (DELETED, copy.id in self.deleted)) if on]

    def _selected(self, messages: Any, uid: bool) -> list[tuple[int, CapturedCopy]]:
        """(sequence number, copy) for a MessageSet of sequence numbers or UIDs."""
        numbered = list(enumerate(self.copies, 1))
        if uid:
            messages.last = max((self.uids.of(copy.id) for copy in self.copies), default=1)
            wanted = set(messages)
            return [(n, copy) for n, copy in numbered if self.uids.of(copy.id) in wanted]
        messages.last = max(len(self.copies), 1)
        wanted = set(messages)
        return [(n, copy) for n, copy in numbered if n in wanted]

    def fetch(self, messages: Any, uid: bool) -> list[tuple[int, CapturedIMAPMessage]]:
        return [(n, CapturedIMAPMessage(copy, self.uids.of(copy.id), self._flags(copy)))
                for n, copy in self._selected(messages, uid)]

    def store(self, messages: Any, flags: Any, mode: int, uid: bool) -> dict[int, list[str]]:
        wanted = {str(flag).lower() for flag in flags}
        out = {}
        for n, copy in self._selected(messages, uid):
            for flag, marked in ((SEEN, self.access.seen), (DELETED, self.deleted)):
                if flag.lower() in wanted and mode >= 0:
                    marked.add(copy.id)
                elif (flag.lower() in wanted and mode < 0) or (flag.lower() not in wanted and mode == 0):
                    marked.discard(copy.id)
            out[n] = self._flags(copy)
        return out

    def expunge(self) -> Deferred[list[int]]:
        doomed = [copy.id for copy in self.copies if copy.id in self.deleted]

        def removed(gone: list[str]) -> list[int]:
            # Highest first: each EXPUNGE's number is still right after the ones before it.
            numbers = [n for n, copy in enumerate(self.copies, 1) if copy.id in self.deleted]
            self.copies = [copy for copy in self.copies if copy.id not in self.deleted]
            self.deleted.clear()
            return sorted(numbers, reverse=True)

        return self.access.delete(doomed).addCallback(removed)


@implementer(imap4.IAccount)
class CapturedAccount:
    """The one mailbox there is, INBOX, read from the capture at each SELECT/EXAMINE/STATUS."""

    def __init__(self, access: Access, uids: Uids):
        self.access = access
        self.uids = uids

    def _inbox(self) -> Deferred[CapturedInbox]:
        return self.access.load().addCallback(lambda copies: CapturedInbox(self.access, self.uids, copies))

    def select(self, name: str | bytes, rw: bool = True) -> Deferred[CapturedInbox] | None:
        return self._inbox() if _name(name) == INBOX.lower() else None

    def listMailboxes(self, ref: Any, wildcard: Any) -> Deferred[list[tuple[str, CapturedInbox]]]:
        return self._inbox().addCallback(lambda inbox: [(INBOX, inbox)])

    def isSubscribed(self, name: str | bytes) -> bool:
        return _name(name) == INBOX.lower()

    def subscribe(self, name: str | bytes) -> None:
        if _name(name) != INBOX.lower():
            raise imap4.MailboxException("only INBOX is here")

    unsubscribe = subscribe

    def addMailbox(self, name: Any, mbox: Any = None) -> None:
        raise imap4.MailboxException("only INBOX is here")

    def create(self, pathspec: Any) -> None:
        raise imap4.MailboxException("only INBOX is here")

    def delete(self, name: Any) -> None:
        raise imap4.MailboxException("INBOX cannot be deleted")

    def rename(self, oldname: Any, newname: Any) -> None:
        raise imap4.MailboxException("INBOX cannot be renamed")


class CapturedIMAP(imap4.IMAP4Server):
    """IMAP4Server that drops what a client pipelined behind STARTTLS, as the SMTP side does."""

    def do_STARTTLS(self, tag: bytes) -> None:
        super().do_STARTTLS(tag)
        if self.startedTLS:
            self.clearLineBuffer()

    unauth_STARTTLS = (do_STARTTLS,)  # type: ignore[assignment]  # Twisted's dispatch table


class IMAPFactory(ServerFactory):
    """IMAP sessions over the capture; ``starttls``: the context STARTTLS offers (None: none)."""

    noisy = False

    def __init__(self, portal: Any, starttls: SSL.Context | None):
        self.portal = portal
        self.starttls = starttls

    def buildProtocol(self, addr: Any) -> CapturedIMAP:
        session = CapturedIMAP(contextFactory=ServerTLS(self.starttls) if self.starttls is not None else None)
        session.factory = self
        session.portal = self.portal
        return session


@implementer(IRealm)
class IMAPRealm:
    """An IMAP login's account: INBOX over the capture."""

    def __init__(self, access: Access, uids: Uids):
        self.access = access
        self.uids = uids

    def requestAvatar(self, avatar_id: bytes | tuple[()], mind: object, *interfaces: Any) -> tuple[Any, ...]:
        assert imap4.IAccount in interfaces, "only IMAP logs in here"
        return imap4.IAccount, CapturedAccount(self.access, self.uids), _no_logout


def _no_logout() -> None:
    """Nothing to release: each SELECT reads the capture again."""
