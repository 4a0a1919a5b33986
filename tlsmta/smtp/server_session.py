"""The SMTP server session, sans I/O: bytes in, replies and actions out.

:class:`ServerSession` is the receiving side of RFC 5321 as a state machine,
in the style of h11's ``Connection``: the shell feeds it what the client
sent (:meth:`~ServerSession.receive_data`) and takes events out of it
(:meth:`~ServerSession.next_event`) until it returns ``None``. Events are
either things to do (:class:`Send` a reply, :class:`StartTLS`,
:class:`MessageData` to store, :class:`Close`) or questions only the shell
can answer because they need policy, storage or time (:class:`MailAllowed`,
:class:`RcptTo`, :class:`OpenMessage`, :class:`CommitMessage`,
:class:`CheckCredentials`). While a question is open the session reads no
further input; pipelined commands wait in its buffer, and the answer
(:meth:`~ServerSession.accept`, :meth:`~ServerSession.refuse`, ...) lets it
go on. All of one read may be handled in one pass.

What the session decides by itself, because it is SMTP and nothing else:
command order (HELO/EHLO first, no nested MAIL, RCPT needs MAIL), syntax
and line limits, what EHLO offers, MAIL and RCPT parameters, the AUTH
exchange, the DATA reader's checks and hop limit, the hard error limit,
and the STARTTLS rules (bytes pipelined behind STARTTLS are dropped, and
the session starts over inside TLS). It has no clock: the shell tells it
when a timeout or the session deadline passed.
"""

from __future__ import annotations

import base64
import enum
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from tlsmta.smtp._commands import (
    COMMAND_LINE_LIMIT,
    PARAMETER_ALLOWANCE,
    MailParams,
    Reject,
    greeting_name,
    line_limit,
    mail_params,
    parse_path,
    rcpt_params,
    split_command,
)
from tlsmta.smtp._data import TOO_MANY_HOPS, DataReader, HeaderScanner, HopCounter
from tlsmta.smtp._reply import Reply
from tlsmta.smtp._sasl import decode_b64_text, decode_cram_md5, decode_plain

HARD_ERROR_LIMIT = 20  # like Postfix's smtpd_hard_error_limit
LONGEST_COMMAND = COMMAND_LINE_LIMIT + PARAMETER_ALLOWANCE
AUTH_FAILURE_LIMIT = 3  # the third failed AUTH on a connection ends it
INTERNAL_ERROR = Reply.of(451, "4.3.0", "Error: internal error, try again later")


class Phase(enum.Enum):
    COMMAND = "command"
    AUTH = "auth"  # waiting for a SASL response line
    DATA = "data"
    CLOSED = "closed"


class Stage(enum.Enum):
    """Where in a session a reply override (the dev relay's chaos rules) is asked."""

    CONNECT = "CONNECT"  # instead of the greeting; the connection is closed after the reply
    EHLO = "EHLO"  # HELO too
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"  # the DATA command, before 354
    END_OF_DATA = "END-OF-DATA"  # after the final dot, instead of storing the message


# Asked at each Stage with the recipients it concerns (RCPT: the one named; DATA and
# END_OF_DATA: those accepted); a Reply (4xx/5xx) is sent instead of going on, None goes on.
ReplyOverride = Callable[[Stage, tuple[str, ...]], Reply | None]


@attrs.frozen
class ServerSettings:
    """What one listener offers and enforces, as the session needs it."""

    hostname: str
    max_message_size: int = 50 * 1024 * 1024
    max_line_length: int = 998
    max_recipients: int = 1000
    max_hops: int = 50
    implicit_tls: bool = False  # the connection is TLS from the first byte
    offers_starttls: bool = False
    auth_available: bool = False  # a users file is configured
    auth_requires_tls: bool = True
    tls_required: bool = False  # listener tls = required: no MAIL, RCPT or AUTH before STARTTLS
    # CRAM-MD5 needs the password in clear on the server: only the dev relay's any-credentials AUTH offers it.
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    reply_override: ReplyOverride | None = attrs.field(default=None, eq=False)
    auth_required: bool = False  # a submission listener: no MAIL before AUTH


# -- events: things to do ---------------------------------------------------------------


@attrs.frozen
class Send:
    """Write this reply (``data``: its bytes on the wire, made once)."""

    reply: Reply
    data: bytes = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "data", self.reply.wire())


@attrs.frozen
class LineReceived:
    """A complete command line arrived (the idle timer starts again)."""


@attrs.frozen
class StartTLS:
    """Start the TLS handshake now; the reply to STARTTLS was the last thing sent in clear."""


@attrs.frozen
class MessageData:
    """Message bytes to store (dot-unstuffed, in order)."""

    data: bytes


@attrs.frozen
class MessageRefused:
    """DATA ended with a problem: drop the stored bytes. The reply is sent by the session."""

    reply: Reply
    size: int


@attrs.frozen
class Close:
    """Close the connection after what was sent is flushed."""


# The replies every transaction gives, made once: the hot path only appends them.
_OK = Send(Reply.of(250, "2.0.0", "Ok"))
_MAIL_OK = Send(Reply.of(250, "2.1.0", "Ok"))
_RCPT_OK = Send(Reply.of(250, "2.1.5", "Ok"))
_GO_AHEAD = Send(Reply.of(354, None, "End data with <CR><LF>.<CR><LF>"))
_BYE = Send(Reply.of(221, "2.0.0", "Bye"))
_LINE = LineReceived()


# -- events: questions, each answered by the shell -------------------------------------------


@attrs.frozen
class MailAllowed:
    """May this client start a transaction (client certificate policy, free storage)? accept() or refuse().

    ``size``: what ``SIZE=`` declared, and ``sender`` the reverse-path, when the MAIL command
    parsed (its syntax error, if any, is answered only after the shell accepted)."""

    size: int | None = None
    sender: str | None = None  # the reverse-path, when the MAIL command parsed (for milters)


@attrs.frozen
class RcptTo:
    """May mail go to this recipient? ``accept_recipient()`` with the shell's record, or refuse()."""

    address: str
    domain: str  # of the address, not normalised yet; the hostname for <postmaster>
    local: bool  # <postmaster>: RFC 5321 4.5.1 says always accept, locally


@attrs.frozen
class OpenMessage:
    """DATA: open somewhere to store the message; accept() to send 354, or refuse()."""


@attrs.frozen
class CommitMessage:
    """The message ended well: make it durable, then finish_message() with the reply."""

    size: int
    tls_required_no: bool
    message_id: str = ""  # the header section's Message-ID (<...>), "" when none


@attrs.frozen
class CheckCredentials:
    """AUTH: check these; credentials_accepted() or credentials_refused().

    ``cram_md5``: (challenge, hex digest) for AUTH CRAM-MD5 (RFC 2195); ``password`` is "" then."""

    user: str
    password: str
    cram_md5: tuple[str, str] | None = None


Event = Send | LineReceived | StartTLS | MessageData | MessageRefused | Close
Question = MailAllowed | RcptTo | OpenMessage | CommitMessage | CheckCredentials


class ServerSession:
    """One SMTP server session, without I/O."""

    def __init__(self, settings: ServerSettings, peer: str = "unknown"):
        self.settings = settings
        self.peer = peer
        self.phase = Phase.COMMAND
        self.tls_active = settings.implicit_tls
        self.errors = 0
        self.auth_failures = 0  # on this connection; STARTTLS does not reset it
        self.pending: Question | None = None
        self._outbox: deque[Event | Question] = deque()
        self._buffer = b""
        self._discarding_line = False
        self._deadline_passed = False
        self._auth_step: Any = None
        self._greeting_held = False
        self.talked_early = False  # sent bytes while the greeting was held (postscreen's pregreet test)
        self._reset_session()

    # -- state ---------------------------------------------------------------------------

    def _reset_session(self) -> None:
        self.helo: str | None = None
        self.esmtp = False
        self.authenticated_as: str | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.mail_params = MailParams()
        self.recipients: list[Any] = []  # the shell's records, from accept_recipient()
        self.recipient_addresses: list[str] = []  # as the client named them, for reply overrides
        self._recipient_keys: set[tuple[str, str]] = set()
        self._reader: DataReader | None = None
        self._hops = HopCounter()
        self._headers = HeaderScanner()
        self._pending_mail: tuple[str, MailParams] | Reject = Reject(503, "5.5.1 Error: need MAIL command")

    @property
    def buffered(self) -> int:
        """Bytes received and not handled yet (pipelined behind an open question)."""
        return len(self._buffer)

    @property
    def data_received(self) -> int:
        """Octets of the message in progress, as received."""
        return self._reader.received if self._reader is not None else 0

    @property
    def auth_offered(self) -> bool:
        return self.settings.auth_available and (self.tls_active or not self.settings.auth_requires_tls)

    def greeting(self) -> Reply:
        return Reply(220, (f"{self.settings.hostname} ESMTP tlsmta",))

    def hold_greeting(self) -> None:
        """The shell waits before greeting: a client that sends anything meanwhile
        is an early talker (a spambot not waiting for the 220, RFC 5321 3.1), refused with 554 5.5.1."""
        self._greeting_held = True

    def greet(self) -> Reply:
        """The held greeting is due: input from now on is SMTP."""
        self._greeting_held = False
        return self.greeting()

    def turn_away(self, reply: Reply) -> None:
        """Instead of the greeting (a DNSBL listing): this reply, then close (RFC 5321 3.1 allows a 554 greeting)."""
        self._outbox.append(Send(reply))
        self._close()

    # -- the shell's side -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.phase is not Phase.CLOSED:
            self._buffer = self._buffer + data if self._buffer else data

    def next_event(self) -> Event | Question | None:
        """The next thing to do, or None: more input is needed, or a question is open."""
        while not self._outbox:
            if self.phase is Phase.CLOSED or self.pending is not None:
                return None
            if self._end_if_expired():
                break
            if not self._buffer or not self._step():
                break  # no complete unit of input (an over-long line may have been answered)
        return self._outbox.popleft() if self._outbox else None

    def deadline_passed(self) -> None:
        """The session time limit passed: end at the next point between commands."""
        self._deadline_passed = True

    def timed_out(self) -> None:
        """No input for the idle (or DATA) timeout: say so and close."""
        self._send(421, "4.4.2", f"{self.settings.hostname} Error: timeout exceeded")
        self._close()

    def connection_lost(self) -> None:
        """The connection is gone: nothing more is read, and no question waits for an answer."""
        self.phase = Phase.CLOSED
        self.pending = None
        self._buffer = b""
        self._outbox.clear()

    def refused_at_connect(self) -> bool:
        """Whether the reply override refuses the connection: its reply is queued, then Close."""
        reply = self._override(Stage.CONNECT)
        if reply is None:
            return False
        self._outbox.append(Send(reply))
        self._close()
        return True

    def refuse_connection(self, reason: str) -> None:
        """The shell's admission control said no (connection limits)."""
        self._send(421, "4.7.0", f"{self.settings.hostname} {reason}, try again later")
        self._close()

    # -- answers to questions ----------------------------------------------------------

    def accept(self) -> None:
        """Yes to MailAllowed or OpenMessage."""
        question = self._answer((MailAllowed, OpenMessage))
        if isinstance(question, MailAllowed):
            self._guarded(self._start_transaction)
        else:
            self._reader = DataReader(self.settings.max_line_length, self.settings.max_message_size)
            self.phase = Phase.DATA
            self._outbox.append(_GO_AHEAD)

    def accept_recipient(self, record: Any, domain: str) -> None:
        """Yes to RcptTo; ``record`` is what the shell keeps for it, ``domain`` its normalised domain.

        A repeated recipient is answered like the first and kept once (as Postfix does):
        two entries for one address would be delivered twice."""
        question = self.pending
        local = question.address.rpartition("@")[0] if isinstance(question, RcptTo) else ""
        self.accept_recipients([(record, (local, domain))])  # with no RcptTo open, RuntimeError there

    def accept_recipients(self, records: list[tuple[Any, tuple[str, str]]]) -> None:
        """Yes to RcptTo for the addresses it expanded to (aliases): (record, (local part, domain)) each,
        every address kept once."""
        question = self._answer((RcptTo,))
        assert isinstance(question, RcptTo)
        self.recipient_addresses.append(question.address)  # as the client named it, for reply overrides
        for record, key in records:
            if key not in self._recipient_keys:
                self._recipient_keys.add(key)
                self.recipients.append(record)
        self._outbox.append(_RCPT_OK)

    def refuse(self, reply: Reply) -> None:
        """No to MailAllowed, RcptTo or OpenMessage; counts toward the hard error limit."""
        self._answer((MailAllowed, RcptTo, OpenMessage))
        self._error(reply)

    def finish_message(self, reply: Reply) -> None:
        """The answer to CommitMessage: 250 once durable, else the storage failure."""
        self._answer((CommitMessage,))
        self._outbox.append(Send(reply))

    def credentials_accepted(self, user: str) -> None:
        self._answer((CheckCredentials,))
        self.authenticated_as = user
        self._send(235, "2.7.0", "Authentication successful")

    def credentials_refused(self) -> None:
        """535; the AUTH_FAILURE_LIMIT-th failure also ends the session (the shell delays this answer)."""
        self._answer((CheckCredentials,))
        self.auth_failures += 1
        if self.auth_failures < AUTH_FAILURE_LIMIT:
            self._error(Reply.of(535, "5.7.8", "Error: authentication failed"))
            return
        self._send(535, "5.7.8", "Error: authentication failed")
        self._send(421, "4.7.0", f"{self.settings.hostname} Error: too many authentication failures")
        self._close()

    def fail(self) -> None:
        """The shell could not answer the open question (a bug or a failed lookup): 451, go on."""
        self.pending = None
        self._outbox.append(Send(INTERNAL_ERROR))

    def _answer(self, kinds: tuple[type, ...]) -> Question:
        question = self.pending
        if question is None or not isinstance(question, kinds):
            raise RuntimeError(f"no {' or '.join(k.__name__ for k in kinds)} question is open (open: {question!r})")
        self.pending = None
        return question

    # -- input ---------------------------------------------------------------------------

    def _step(self) -> bool:
        """Handle one unit of input; False when the buffer holds no complete unit."""
        if self._greeting_held:
            self.talked_early = True
            self._send(554, "5.5.1", "Error: you talked before the greeting")
            self._close()
            return True
        if self.phase is Phase.DATA:
            self._data_input()
            return True
        newline = self._buffer.find(b"\n")
        if newline < 0:
            if len(self._buffer) > LONGEST_COMMAND:
                if not self._discarding_line:
                    self._error(Reply.of(500, "5.5.2", "Error: line too long"))
                self._discarding_line = True
                self._buffer = b""
            return False
        line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
        self._outbox.append(_LINE)
        if self._discarding_line:
            self._discarding_line = False  # the tail of a line already answered
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.phase is Phase.AUTH:
            self._guarded(self._auth_line, line)
        elif len(line) + 2 > line_limit(line[:4]):
            self._error(Reply.of(500, "5.5.2", "Error: line too long"))
        else:
            self._guarded(self._dispatch, line)
        return True

    def _guarded(self, handler: Any, *args: Any) -> None:
        try:
            handler(*args)
        except Reject as refusal:
            self._error(refusal.reply)

    def _end_if_expired(self) -> bool:
        """Past the deadline, end the session between commands (not in DATA, not with a question open)."""
        if not self._deadline_passed or self.phase not in (Phase.COMMAND, Phase.AUTH):
            return False
        self._send(421, "4.4.2", f"{self.settings.hostname} Error: session time limit exceeded")
        self._close()
        return True

    def _override(self, stage: Stage, recipients: tuple[str, ...] = ()) -> Reply | None:
        hook = self.settings.reply_override
        return hook(stage, recipients) if hook is not None else None

    def _overridden(self, stage: Stage, recipients: tuple[str, ...] = ()) -> bool:
        """Whether the reply override answered the command instead (its reply is sent)."""
        reply = self._override(stage, recipients)
        if reply is not None:
            self._refuse_with(reply)
        return reply is not None

    def _refuse_with(self, reply: Reply) -> None:
        """An error reply; 421 says the service is closing the channel (RFC 5321 3.8), so it does."""
        if reply.code == 421:
            self._outbox.append(Send(reply))
            self._close()
        else:
            self._error(reply)

    def _send(self, code: int, status: str | None, text: str | list[str]) -> None:
        self._outbox.append(Send(Reply.of(code, status, text)))

    def _ask(self, question: Question) -> None:
        self.pending = question
        self._outbox.append(question)

    def _error(self, reply: Reply) -> None:
        """An error reply; too many of them end the session (Postfix's hard error limit)."""
        self.errors += 1
        if self.errors >= HARD_ERROR_LIMIT:
            self._send(421, "4.7.0", f"{self.settings.hostname} Error: too many errors")
            self._close()
            return
        self._outbox.append(Send(reply))

    def _close(self) -> None:
        self.phase = Phase.CLOSED
        self.pending = None
        self._buffer = b""
        self._outbox.append(Close())

    def _dispatch(self, line: bytes) -> None:
        verb, arg = split_command(line)
        handler = self._COMMANDS.get(verb)
        if handler is None:
            raise Reject(500, "5.5.2 Error: command not recognized")
        handler(self, arg)

    # -- commands --------------------------------------------------------------------------

    def _ehlo_lines(self) -> list[str]:
        settings = self.settings
        lines = [
            f"{settings.hostname} Hello {self.helo} [{self.peer}]",
            "PIPELINING",
            f"SIZE {settings.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ]
        if settings.offers_starttls and not self.tls_active:
            lines.append("STARTTLS")
        if self.tls_active:
            lines.append("REQUIRETLS")  # RFC 8689 2: offered only inside TLS
        if self.auth_offered:
            lines.append("AUTH " + " ".join(self.settings.auth_mechanisms))
        return lines

    def _greet(self, arg: bytes, esmtp: bool) -> None:
        name = greeting_name(arg, "EHLO" if esmtp else "HELO")
        if self._overridden(Stage.EHLO):
            return
        self._reset_transaction()
        self.helo = name
        self.esmtp = esmtp
        self._send(250, None, self._ehlo_lines() if esmtp else self.settings.hostname)

    def do_EHLO(self, arg: bytes) -> None:
        self._greet(arg, esmtp=True)

    def do_HELO(self, arg: bytes) -> None:
        self._greet(arg, esmtp=False)

    def do_STARTTLS(self, arg: bytes) -> None:
        if arg:
            raise Reject(501, "5.5.4 Syntax: STARTTLS")
        if self.tls_active:
            raise Reject(503, "5.5.1 Error: TLS already active")
        if not self.settings.offers_starttls:
            raise Reject(502, "5.5.1 Error: command not implemented")
        self._send(220, "2.0.0", "Ready to start TLS")
        # RFC 3207 4.2 and CVE-2011-0411: nothing sent before the handshake
        # may be acted on inside TLS, and the client must start over.
        self._buffer = b""
        self._discarding_line = False
        self._reset_session()
        self.tls_active = True
        self._outbox.append(StartTLS())

    def _require_tls(self) -> None:
        """RFC 3207 4: a server that requires TLS answers 530 until STARTTLS, client certificate or not."""
        if self.settings.tls_required and not self.tls_active:
            raise Reject(530, "5.7.0 Must issue a STARTTLS command first")

    def do_AUTH(self, arg: bytes) -> None:
        self._require_tls()
        if not self.auth_offered:
            if self.settings.auth_available:
                raise Reject(538, "5.7.11 Encryption required for requested authentication mechanism")
            raise Reject(502, "5.5.1 Error: authentication not enabled")
        if self.helo is None or not self.esmtp:
            raise Reject(503, "5.5.1 Error: send EHLO first")
        if self.authenticated_as is not None:
            raise Reject(503, "5.5.1 Error: already authenticated")
        if self.sender is not None:
            raise Reject(503, "5.5.1 Error: MAIL transaction in progress")
        mechanism, _, initial = arg.partition(b" ")
        mechanism = mechanism.upper()
        if mechanism.decode("ascii", "replace") not in self.settings.auth_mechanisms:
            raise Reject(504, "5.5.4 Error: unsupported authentication mechanism")
        if mechanism == b"CRAM-MD5":
            if initial:
                raise Reject(501, "5.5.2 Error: CRAM-MD5 takes no initial response")
            challenge = f"<{secrets.token_hex(8)}@{self.settings.hostname}>"
            self._await_auth(lambda r: self._cram_md5(challenge, r), base64.b64encode(challenge.encode()).decode("ascii"))
        elif mechanism == b"PLAIN":
            if initial:
                self._auth_plain(initial.strip())
            else:
                self._await_auth(self._auth_plain, "")
        elif mechanism == b"LOGIN":
            if initial:
                self._login_user(initial.strip())
            else:
                self._await_auth(self._login_user, "VXNlcm5hbWU6")  # "Username:"
        else:
            raise Reject(504, "5.5.4 Error: unsupported authentication mechanism")

    def _await_auth(self, step: Any, challenge: str) -> None:
        self.phase = Phase.AUTH
        self._auth_step = step
        self._send(334, None, challenge)

    def _auth_line(self, line: bytes) -> None:
        self.phase = Phase.COMMAND
        step, self._auth_step = self._auth_step, None
        if line.strip() == b"*":
            raise Reject(501, "5.7.0 Authentication aborted")
        step(line.strip())

    def _auth_plain(self, response: bytes) -> None:
        creds = decode_plain(response)
        if creds is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        self._ask(CheckCredentials(*creds))

    def _cram_md5(self, challenge: str, response: bytes) -> None:
        answer = decode_cram_md5(response)
        if answer is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        self._ask(CheckCredentials(answer[0], "", (challenge, answer[1])))

    def _login_user(self, response: bytes) -> None:
        user = decode_b64_text(response)
        if user is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        self._await_auth(lambda r: self._login_password(user, r), "UGFzc3dvcmQ6")  # "Password:"

    def _login_password(self, user: str, response: bytes) -> None:
        password = decode_b64_text(response)
        if password is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        self._ask(CheckCredentials(user, password))

    def do_MAIL(self, arg: bytes) -> None:
        self._require_tls()
        if self.helo is None:
            raise Reject(503, "5.5.1 Error: send HELO/EHLO first")
        if self.sender is not None:
            raise Reject(503, "5.5.1 Error: nested MAIL command")
        if self.settings.auth_required and self.authenticated_as is None:
            raise Reject(530, "5.7.0 Authentication required")
        if self._overridden(Stage.MAIL):
            return
        try:
            self._pending_mail = self._parse_mail(arg)
        except Reject as syntax_error:
            self._pending_mail = syntax_error
        parsed = None if isinstance(self._pending_mail, Reject) else self._pending_mail
        self._ask(MailAllowed(parsed[1].size, parsed[0]) if parsed else MailAllowed())  # the client-certificate policy speaks before the syntax

    def _parse_mail(self, arg: bytes) -> tuple[str, MailParams]:
        path = parse_path(arg, "FROM", allow_null=True)
        if path.params and not self.esmtp:
            raise Reject(555, "5.5.4 MAIL parameters need EHLO")
        return path.address, mail_params(path.params, self.settings.max_message_size, self.tls_active)

    def _start_transaction(self) -> None:
        if isinstance(self._pending_mail, Reject):
            raise self._pending_mail
        self.sender, self.mail_params = self._pending_mail
        self._outbox.append(_MAIL_OK)

    def do_RCPT(self, arg: bytes) -> None:
        self._require_tls()
        if self.sender is None:
            raise Reject(503, "5.5.1 Error: need MAIL command")
        if len(self.recipients) >= self.settings.max_recipients:
            raise Reject(452, "4.5.3 Error: too many recipients")
        path = parse_path(arg, "TO", utf8=self.mail_params.smtputf8)
        rcpt_params(path.params)
        if self._overridden(Stage.RCPT, (path.address,)):
            return
        if path.address == "postmaster":
            hostname = self.settings.hostname
            self._ask(RcptTo(f"postmaster@{hostname}", hostname, local=True))
        else:
            self._ask(RcptTo(path.address, path.domain, local=False))

    def do_DATA(self, arg: bytes) -> None:
        if arg:
            raise Reject(501, "5.5.4 Syntax: DATA")
        if self.sender is None:
            raise Reject(503, "5.5.1 Error: need MAIL command")
        if not self.recipients:
            raise Reject(554, "5.5.1 Error: no valid recipients")
        if self._overridden(Stage.DATA, tuple(self.recipient_addresses)):
            return
        self._ask(OpenMessage())

    def do_RSET(self, arg: bytes) -> None:
        self._reset_transaction()
        self._outbox.append(_OK)

    def do_NOOP(self, arg: bytes) -> None:
        self._outbox.append(_OK)

    def do_VRFY(self, arg: bytes) -> None:
        self._send(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, arg: bytes) -> None:
        raise Reject(502, "5.5.1 Error: command not implemented")

    def do_HELP(self, arg: bytes) -> None:
        self._send(214, "2.0.0", "See RFC 5321")

    def do_QUIT(self, arg: bytes) -> None:
        self._outbox.append(_BYE)
        self._close()

    _COMMANDS = {
        "EHLO": do_EHLO,
        "HELO": do_HELO,
        "STARTTLS": do_STARTTLS,
        "AUTH": do_AUTH,
        "MAIL": do_MAIL,
        "RCPT": do_RCPT,
        "DATA": do_DATA,
        "RSET": do_RSET,
        "NOOP": do_NOOP,
        "VRFY": do_VRFY,
        "EXPN": do_EXPN,
        "HELP": do_HELP,
        "QUIT": do_QUIT,
    }

    # -- DATA --------------------------------------------------------------------------------

    def _data_input(self) -> None:
        assert self._reader is not None
        result = self._reader.feed(self._buffer)
        self._buffer = result.rest
        if result.body:
            self._hops.feed(result.body)
            self._headers.feed(result.body)
            self._outbox.append(MessageData(result.body))
        if result.ended:
            self.phase = Phase.COMMAND
            self._end_of_data()

    def _end_of_data(self) -> None:
        reader, hops = self._reader, self._hops.hops
        assert reader is not None
        self._headers.finish()
        tls_required_no, message_id = self._headers.tls_required_no, self._headers.message_id
        problem = reader.problem
        if problem is None and hops > self.settings.max_hops:
            problem = attrs.evolve(TOO_MANY_HOPS, text=TOO_MANY_HOPS.text.format(hops=hops))
        override = self._override(Stage.END_OF_DATA, tuple(self.recipient_addresses)) if problem is None else None
        self._reset_transaction()
        refusal = problem.reply if problem is not None else override
        if refusal is not None:
            self._outbox.append(MessageRefused(refusal, reader.received))
            self._refuse_with(refusal)
            return
        self._ask(CommitMessage(reader.received, tls_required_no, message_id))
