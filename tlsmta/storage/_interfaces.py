"""The message-store interface shared by the Maildir store and the spool.

The inbound protocol opens a :class:`MessageWriter` at DATA, streams the
message into it, and answers 250 only after :meth:`MessageWriter.commit`
has fired: by then the message is durable.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from tlsmta.config import Route
from tlsmta.smtp import Reply, SMTPError, domain_of


@attrs.frozen
class Recipient:
    """One accepted recipient and where its copy goes."""

    address: str
    route: Route
    binding: str = "default"

    @property
    def domain(self) -> str:
        return domain_of(self.address)


@attrs.frozen
class Envelope:
    """Everything known about a message besides its bytes."""

    message_id: str
    sender: str
    recipients: tuple[Recipient, ...]
    received_at: datetime
    helo: str = ""
    peer: str = ""
    listener: str = ""
    smtputf8: bool = False
    body_type: str = "7BIT"
    esmtp: bool = True  # EHLO, not HELO
    authenticated: bool = False  # the client used AUTH
    auth_user: str | None = None  # as whom (kept in the dev relay's receipts)
    tls: dict[str, Any] = attrs.field(factory=dict)  # facts of receipt, for the queue and logs
    held: bool = False  # quarantined (by a milter): spooled and held until `tlsmta queue release`


@attrs.frozen
class Throttle:
    """Lets a writer apply back-pressure to the connection feeding it."""

    pause: Callable[[], None]
    resume: Callable[[], None]


NO_THROTTLE = Throttle(lambda: None, lambda: None)


class StoreError(SMTPError):
    """Storing failed; ``reply`` is the SMTP answer to give (never 250)."""

    def __init__(self, code: int, status: str, text: str):
        super().__init__(Reply.of(code, status, text))

    @classmethod
    def insufficient_storage(cls) -> StoreError:
        return cls(452, "4.3.1", "insufficient system storage")

    @classmethod
    def from_os_error(cls, error: OSError) -> StoreError:
        if is_disk_full(error):
            return cls.insufficient_storage()
        return cls(451, "4.3.0", "temporary failure storing the message")


def is_disk_full(error: BaseException) -> bool:
    """The filesystem or the user's quota is full: an expected condition, not a bug."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class MessageWriter(Protocol):
    """One message being received."""

    def write(self, data: bytes) -> None: ...

    def commit(self, tls_required_no: bool = False, message_id_header: str = "") -> Deferred[None]:
        """Fires once the message is durable; fails with StoreError otherwise.

        ``tls_required_no``: the header section says ``TLS-Required: No``
        (RFC 8689 5), as the inbound side found while the message arrived;
        ``message_id_header``: its ``Message-ID:`` (``<...>``, "" when none), for the log.
        """
        ...

    def abort(self) -> None:
        """Forget the message; nothing half-written stays visible."""
        ...


class MessageSink(Protocol):
    """Where received messages go."""

    def accepts(self, route: Route) -> bool:
        """Whether this sink can take mail for ``route`` (checked at RCPT)."""
        ...

    def open(self, envelope: Envelope, throttle: Throttle = NO_THROTTLE) -> MessageWriter: ...
