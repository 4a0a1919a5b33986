"""The ESMTP server: a hardened subclass of twisted.mail.smtp.ESMTP.

The stock class is kept for its identity (isinstance checks, TimeoutMixin)
but its input handling is replaced, because each of these is a fault in it
(each shown against the stock class in tests/test_stock_twisted_faults.py),
fixed here and proved by tests:

- bytes pipelined after STARTTLS are discarded, never run inside TLS;
- STARTTLS resets the whole session; the client must EHLO again;
- MAIL before HELO/EHLO is 503;
- DATA ends only at CRLF.CRLF; bare CR/LF, over-long lines and a first
  line starting with SP/HTAB (it would fold into our Received: header)
  reject the message at the end of DATA without leaving DATA mode or
  buffering lines (:mod:`tlsmta.smtp.data`);
- an over-long command line is 500 and the session goes on;
- EHLO advertises what is implemented, and MAIL parameters are enforced
  (REQUIRETLS, RFC 8689, only inside TLS);
- 250 only after the message is durable; a storage failure is 4xx;
- a failed AUTH is answered after a growing delay, and too many end the
  session; passwords are checked in a thread, never on the reactor;
- a client cannot hold a session by trickling bytes: ``idle_timeout``
  restarts only when a complete command line arrives (DATA restarts
  ``data_timeout`` on every read, as a big message streams for long), and
  ``session_timeout`` bounds the whole session; it is checked between
  commands, so a DATA transfer in progress is finished and answered first.

Decisions live in pure modules (tlsmta.smtp, inbound.acceptance,
tls.policy); this class routes bytes and replies.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsmta.config.loader import Config, ListenerConfig, normalize_domain, resolve, select_binding
from tlsmta.discovery.resolver import Resolver
from tlsmta.inbound.acceptance import ClientStanding, check_client_certificate, check_recipient, in_networks
from tlsmta.inbound.auth import UserDB, decode_b64_text, decode_plain
from tlsmta.inbound.received import TraceFacts, received_header
from tlsmta.network import set_no_delay
from tlsmta.reporting import events
from tlsmta.smtp.commands import (
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
from tlsmta.smtp.data import TOO_MANY_HOPS, DataReader, HopCounter, TLSRequiredScanner
from tlsmta.storage.ids import new_message_id
from tlsmta.storage.interfaces import Envelope, MessageSink, MessageWriter, Recipient, StoreError, Throttle
from tlsmta.tls.contexts import CertificateCheck, HookContext, ServerTLS, SessionFacts, ssl_error_text, tls_log_fields
from tlsmta.tls.hooks import Hooks
from tlsmta.tls.policy import Verdict, VerifyMode

log = Logger(namespace="tlsmta.inbound")

HARD_ERROR_LIMIT = 20  # like Postfix's smtpd_hard_error_limit
CLOSE_GRACE = 10  # seconds a closing connection may take to flush before it is aborted
BACKLOG_LIMIT = 64 * 1024  # pipelined bytes held while a command is in progress
LONGEST_COMMAND = COMMAND_LINE_LIMIT + PARAMETER_ALLOWANCE
# AUTH brute force: a failed AUTH is answered 535 only after a delay that doubles with
# each failure on the connection (1, 2, 4 s ..., capped), and the AUTH_FAILURE_LIMIT-th
# failure ends the session with 421 4.7.0 (what is pipelined behind it is not run).
AUTH_FAILURE_DELAY = 1.0
AUTH_FAILURE_DELAY_CAP = 8.0
AUTH_FAILURE_LIMIT = 3


class State(enum.Enum):
    COMMAND = "command"
    AUTH = "auth"  # waiting for a SASL response line
    DATA = "data"
    CLOSED = "closed"


@attrs.define
class ListenerRuntime:
    """What every session of one listener shares; replaced as a whole on reload."""

    listener: ListenerConfig
    config: Config
    hostname: str
    sink: MessageSink
    tls: ServerTLS | None = None
    users: UserDB | None = None
    hooks: Hooks = attrs.field(factory=Hooks)
    resolver: Resolver | None = None  # reverse DNS for client-certificate name checks
    run_in_thread: Callable[..., Deferred[Any]] | None = None  # for password checks

    @property
    def offers_starttls(self) -> bool:
        return self.tls is not None and self.listener.tls == "starttls" and self.listener.tls_lab != "no-starttls"


@implementer(IHandshakeListener)
class InboundSMTP(smtp.ESMTP):
    """One inbound SMTP session."""

    def __init__(self, runtime: ListenerRuntime, factory: InboundFactory | None = None, clock: Any = None):
        super().__init__()
        self.runtime = runtime
        self.factory = factory
        if clock is not None:
            self.callLater = clock.callLater  # TimeoutMixin's scheduler
        self.hostname = runtime.hostname
        self.state = State.COMMAND
        self.tls_active = runtime.listener.tls == "implicit"
        self.tls_facts: SessionFacts | None = None
        self.certificate_check = self._new_certificate_check() if runtime.tls else None
        self.peer_ip = "unknown"
        self.errors = 0
        self._inbuf = b""
        self._discarding_line = False
        self._busy = False
        self._processing = False
        self._paused_for: set[str] = set()
        self._abort_timer: Any = None
        self._session_timer: Any = None
        self._session_expired = False
        self._replies_blocked = False  # the transport holds too many unsent replies
        self._client_verify_counted = False
        self._auth_step: Callable[[bytes], Deferred[None] | None] | None = None
        self.auth_failures = 0  # on this connection; STARTTLS does not reset it
        self._auth_delay: Any = None
        self._reverse_lookup: Deferred[list[str]] | None = None
        self.reverse_names: list[str] | None = None
        self._reset_session()

    # -- session state ---------------------------------------------------------

    def _reset_session(self) -> None:
        self.helo: str | None = None
        self.esmtp = False
        self.authenticated_as: str | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.mail_params = MailParams()
        self.recipients: list[Recipient] = []
        self._recipient_keys: set[tuple[str, str]] = set()
        self._reader: DataReader | None = None
        self._hops = HopCounter()
        self._tls_required = TLSRequiredScanner()
        self._writer: MessageWriter | None = None
        self._envelope: Envelope | None = None

    def _new_certificate_check(self) -> CertificateCheck:
        listener = self.runtime.listener
        return CertificateCheck(
            VerifyMode(listener.tls_verify),
            hook=self.runtime.hooks.inbound_tls_verify_callback,
            hook_context=HookContext(direction="inbound", listener=listener.name),
            enforce_in_handshake=False,  # refuse at MAIL with 530 instead
            # The EHLO name is not known yet: the hook is shown the chain result
            # only, so its depth-0 answer cannot override the name check (policy.decide).
            names_in_handshake=False,
        )

    def client_verdict(self) -> Verdict | None:
        """Client-certificate verdict against the EHLO name and the
        forward-confirmed reverse DNS names (None: no certificate asked for)."""
        check = self.certificate_check
        if check is None or not self.tls_active or not check.wants_certificate:
            return None
        wanted = ([self.helo] if self.helo else []) + (self.reverse_names or [])
        return check.verdict(wanted=wanted)

    def _start_reverse_lookup(self) -> None:
        """Names are checked at MAIL; look the client's reverse name up meanwhile."""
        check, resolver = self.certificate_check, self.runtime.resolver
        if resolver is None or check is None or check.leaf is None or not check.mode.checks_names:
            return

        def got(names: list[str]) -> list[str]:
            self.reverse_names = names
            return names

        self._reverse_lookup = resolver.verified_ptr(self.peer_ip).addCallback(got)

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", str(peer))
        if self.certificate_check is not None and self.certificate_check.hook_context is not None:
            self.certificate_check.hook_context = attrs.evolve(self.certificate_check.hook_context, peer=self.peer_ip)
        refusal = self.factory.admit(self) if self.factory is not None else None
        if refusal is not None:
            self.reply(421, f"4.7.0 {self.hostname} {refusal}, try again later")
            self.close()
            return
        # Stop reading commands while our replies pile up unread (a client that never reads).
        self.transport.registerProducer(_ReplyBackpressure(self), True)
        set_no_delay(self.transport)  # replies are small writes; never hold one for an ACK
        self.reply(220, f"{self.hostname} ESMTP tlsmta")
        self.setTimeout(self.runtime.listener.idle_timeout)
        self._session_timer = self.callLater(self.runtime.listener.session_timeout, self._session_deadline)

    def close(self) -> None:
        """Close after what was written is sent, but never wait for the peer forever:
        a client that stops reading, or stalls a TLS handshake, is cut off after CLOSE_GRACE."""
        self.state = State.CLOSED
        self.transport.loseConnection()
        if self._abort_timer is None:
            self._abort_timer = self.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        for timer in (self._abort_timer, self._session_timer, self._auth_delay):
            if timer is not None and timer.active():
                timer.cancel()
        if self.tls_active and self.tls_facts is None and reason is not None and reason.check(SSL.Error):
            events.emit("tls_failed", listener=self.runtime.listener.name, peer=self.peer_ip, reason=ssl_error_text(reason.value))
        if self._writer is not None and self.state is State.DATA:
            self._writer.abort()
            received = self._reader.received if self._reader else 0
            self._log_transaction(self._envelope, received, "connection lost during DATA")
        self.state = State.CLOSED
        if self.factory is not None:
            self.factory.release(self)

    def timeoutConnection(self) -> None:
        self.reply(421, f"4.4.2 {self.hostname} Error: timeout exceeded")
        if self._writer is not None and self.state is State.DATA:
            self._writer.abort()
            self._writer = None
        self.close()

    def _session_deadline(self) -> None:
        self._session_expired = True
        self._end_if_expired()

    def _end_if_expired(self) -> bool:
        """Past session_timeout, end the session at the first point between commands
        (not in DATA, not while a command is being answered); True if it ended now."""
        if not self._session_expired or self._busy or self.state not in (State.COMMAND, State.AUTH):
            return False
        self.reply(421, f"4.4.2 {self.hostname} Error: session time limit exceeded")
        self.close()
        return True

    def handshakeCompleted(self) -> None:
        self.tls_facts = SessionFacts.from_connection(self.transport.getHandle())
        events.emit("tls_inbound", quiet=True, listener=self.runtime.listener.name, protocol=self.tls_facts.protocol)
        self._start_reverse_lookup()

    def reply(self, code: int, text: str | list[str]) -> None:
        """Send a (possibly multi-line) reply in one write."""
        lines = text if isinstance(text, list) else [text]
        out = [f"{code}-{line}\r\n" for line in lines[:-1]] + [f"{code} {lines[-1]}\r\n"]
        self.transport.write("".join(out).encode("utf-8"))

    def _error(self, code: int, text: str) -> None:
        """An error reply; too many of them end the session (Postfix's hard error limit)."""
        self.errors += 1
        if self.errors >= HARD_ERROR_LIMIT:
            self.reply(421, f"4.7.0 {self.hostname} Error: too many errors")
            self.close()
            return
        self.reply(code, text)

    # -- input -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.DATA:
            self.resetTimeout()  # data_timeout: a message streams for as long as it keeps coming
        # Otherwise idle_timeout restarts only when a complete line arrives (_command_input):
        # a client trickling a byte at a time cannot hold the session.
        self._inbuf = self._inbuf + data if self._inbuf else data
        if (self._busy or self._replies_blocked) and len(self._inbuf) > BACKLOG_LIMIT:
            self._pause("backlog")
        if not self._processing:
            self._process()

    def _process(self) -> None:
        self._processing = True
        try:
            while self._inbuf and not self._busy and self.state is not State.CLOSED and not self._replies_blocked:
                if self.state is State.DATA:
                    self._data_input()
                elif self._end_if_expired():
                    break
                elif not self._command_input():
                    break  # an incomplete line: wait for more bytes
        finally:
            self._processing = False
        if self._end_if_expired():
            return
        if not self._busy and not self._replies_blocked:
            self._resume("backlog")

    def _command_input(self) -> bool:
        """Handle one command line; False when no complete line is buffered yet."""
        newline = self._inbuf.find(b"\n")
        if newline < 0:
            if len(self._inbuf) > LONGEST_COMMAND:
                if not self._discarding_line:
                    self._error(500, "5.5.2 Error: line too long")
                self._discarding_line = True
                self._inbuf = b""
            return False
        line, self._inbuf = self._inbuf[:newline], self._inbuf[newline + 1 :]
        self.resetTimeout()  # a complete line: the client gets idle_timeout for the next one
        if self._discarding_line:
            self._discarding_line = False  # the tail of a line already answered
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.state is State.AUTH:
            self._run(self._auth_line, line)
        elif len(line) + 2 > line_limit(line[:4]):
            self._error(500, "5.5.2 Error: line too long")
        else:
            self._run(self._dispatch, line)
        return True

    def _run(self, fn: Callable[[bytes], Deferred[None] | None], line: bytes) -> None:
        """Run a handler; a Deferred it returns holds input until it fires."""
        try:
            d = fn(line)
        except Reject as r:
            self._error(r.code, r.text)
            return
        except Exception:
            log.failure("command handler failed")
            self.reply(451, "4.3.0 Error: internal error, try again later")
            return
        if d is None:
            return
        self._busy = True
        d.addErrback(self._handler_failed)
        d.addBoth(self._unbusy)

    def _handler_failed(self, failure: Failure) -> None:
        if failure.check(Reject):
            self._error(failure.value.code, failure.value.text)
            return
        log.failure("command handler failed", failure)
        self.reply(451, "4.3.0 Error: internal error, try again later")

    def _unbusy(self, _: Any) -> None:
        self._busy = False
        if self.state is not State.CLOSED and not self._processing:
            self._process()  # ends the session here if session_timeout passed meanwhile

    def _continue(self) -> None:
        """Resume work on buffered input (after the client read our replies)."""
        if not self._busy and not self._processing and self.state is not State.CLOSED:
            self._process()

    def _pause(self, reason: str) -> None:
        if not self._paused_for:
            self.transport.pauseProducing()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and self.state is not State.CLOSED:
                self.transport.resumeProducing()

    def _dispatch(self, line: bytes) -> Deferred[None] | None:
        verb, arg = split_command(line)
        handler = self._COMMANDS.get(verb)
        if handler is None:
            raise Reject(500, "5.5.2 Error: command not recognized")
        return handler(self, arg)

    # -- commands ---------------------------------------------------------------

    def _ehlo_lines(self) -> list[str]:
        listener = self.runtime.listener
        lines = [
            f"{self.hostname} Hello {self.helo} [{self.peer_ip}]",
            "PIPELINING",
            f"SIZE {listener.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ]
        if self.runtime.offers_starttls and not self.tls_active:
            lines.append("STARTTLS")
        if self.tls_active:
            lines.append("REQUIRETLS")  # RFC 8689 2: offered only inside TLS
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        return lines

    def _auth_offered(self) -> bool:
        if self.runtime.users is None:
            return False
        return self.tls_active or not self.runtime.listener.require_tls_for_auth

    def _greet(self, arg: bytes, esmtp: bool) -> None:
        name = greeting_name(arg, "EHLO" if esmtp else "HELO")
        self._reset_transaction()
        self.helo = name
        self.esmtp = esmtp
        if esmtp:
            self.reply(250, self._ehlo_lines())
        else:
            self.reply(250, self.hostname)

    def do_EHLO(self, arg: bytes) -> None:
        self._greet(arg, esmtp=True)

    def do_HELO(self, arg: bytes) -> None:
        self._greet(arg, esmtp=False)

    def do_STARTTLS(self, arg: bytes) -> None:
        if arg:
            raise Reject(501, "5.5.4 Syntax: STARTTLS")
        if self.tls_active:
            raise Reject(503, "5.5.1 Error: TLS already active")
        if not self.runtime.offers_starttls:
            raise Reject(502, "5.5.1 Error: command not implemented")
        assert self.runtime.tls is not None
        self.reply(220, "2.0.0 Ready to start TLS")
        # RFC 3207 4.2 and CVE-2011-0411: nothing sent before the handshake
        # may be acted on inside TLS, and the client must start over.
        self._inbuf = b""
        self._discarding_line = False
        self._reset_session()
        self.tls_active = True
        self.transport.startTLS(self.runtime.tls.bound_to(self.certificate_check))

    def do_AUTH(self, arg: bytes) -> Deferred[None] | None:
        if not self._auth_offered():
            if self.runtime.users is not None:
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
        if mechanism == b"PLAIN":
            if initial:
                return self._auth_plain(initial.strip())
            self._await_auth(self._auth_plain, "")
            return None
        if mechanism == b"LOGIN":
            if initial:
                return self._login_user(initial.strip())
            self._await_auth(self._login_user, "VXNlcm5hbWU6")  # "Username:"
            return None
        raise Reject(504, "5.5.4 Error: unsupported authentication mechanism")

    def _await_auth(self, step: Callable[[bytes], Deferred[None] | None], challenge: str) -> None:
        self.state = State.AUTH
        self._auth_step = step
        self.reply(334, challenge)

    def _auth_line(self, line: bytes) -> Deferred[None] | None:
        self.state = State.COMMAND
        step, self._auth_step = self._auth_step, None
        if line.strip() == b"*":
            raise Reject(501, "5.7.0 Authentication aborted")
        assert step is not None
        return step(line.strip())

    def _auth_plain(self, response: bytes) -> Deferred[None] | None:
        creds = decode_plain(response)
        if creds is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        return self._check_credentials(*creds)

    def _login_user(self, response: bytes) -> None:
        user = decode_b64_text(response)
        if user is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        self._await_auth(lambda r: self._login_password(user, r), "UGFzc3dvcmQ6")  # "Password:"

    def _login_password(self, user: str, response: bytes) -> Deferred[None] | None:
        password = decode_b64_text(response)
        if password is None:
            raise Reject(501, "5.5.2 Error: malformed authentication response")
        return self._check_credentials(user, password)

    def _check_credentials(self, user: str, password: str) -> Deferred[None]:
        users = self.runtime.users
        assert users is not None
        run = self.runtime.run_in_thread
        d = run(users.check, user, password) if run else maybeDeferred(users.check, user, password)

        def answer(ok: bool) -> Deferred[None] | None:
            # The payload is never logged; the user name is.
            events.emit("auth", peer=self.peer_ip, user=user, result="ok" if ok else "failed")
            if not ok:
                return self._auth_failed()
            self.authenticated_as = user
            self.reply(235, "2.7.0 Authentication successful")
            return None

        return d.addCallback(answer)

    def _auth_failed(self) -> Deferred[None]:
        """535 after a delay growing per failure (input waits meanwhile: the session is busy);
        the AUTH_FAILURE_LIMIT-th failure also ends the session with 421 4.7.0."""
        self.auth_failures += 1
        delay = min(AUTH_FAILURE_DELAY * 2 ** (self.auth_failures - 1), AUTH_FAILURE_DELAY_CAP)
        waited: Deferred[None] = Deferred()
        # TimeoutMixin.callLater (the reactor's, unless a test clock replaced it) takes no arguments.
        self._auth_delay = self.callLater(delay, lambda: waited.callback(None))

        def answer(_: Any) -> None:
            self._auth_delay = None
            if self.auth_failures < AUTH_FAILURE_LIMIT:
                raise Reject(535, "5.7.8 Error: authentication failed")
            self.reply(535, "5.7.8 Error: authentication failed")
            self.reply(421, f"4.7.0 {self.hostname} Error: too many authentication failures")
            self.close()

        return waited.addCallback(answer)

    def _standing(self) -> ClientStanding:
        verdict = self.client_verdict()
        return ClientStanding(
            address=self.peer_ip,
            authenticated=self.authenticated_as is not None,
            cert_verified=verdict is not None and verdict.verified,
        )

    def do_MAIL(self, arg: bytes) -> Deferred[None] | None:
        if self._reverse_lookup is not None and self.reverse_names is None:
            waiter: Deferred[None] = Deferred()
            self._reverse_lookup.addBoth(lambda result: (waiter.callback(None), result)[1])
            return waiter.addCallback(lambda _: self._mail(arg))
        self._mail(arg)
        return None

    def _mail(self, arg: bytes) -> None:
        if self.helo is None:
            raise Reject(503, "5.5.1 Error: send HELO/EHLO first")
        if self.sender is not None:
            raise Reject(503, "5.5.1 Error: nested MAIL command")
        listener = self.runtime.listener
        verdict = self.client_verdict()
        if verdict is not None and not self._client_verify_counted:
            self._client_verify_counted = True
            events.emit("client_verify", quiet=True, tls_verify=listener.tls_verify, verified=verdict.outcome.word)
        check_client_certificate(VerifyMode(listener.tls_verify), self.tls_active, verdict)
        path = parse_path(arg, "FROM", allow_null=True)
        if path.params and not self.esmtp:
            raise Reject(555, "5.5.4 MAIL parameters need EHLO")
        params = mail_params(path.params, listener.max_message_size, self.tls_active)
        self.sender = path.address
        self.mail_params = params
        self.reply(250, "2.1.0 Ok")

    def do_RCPT(self, arg: bytes) -> None:
        if self.sender is None:
            raise Reject(503, "5.5.1 Error: need MAIL command")
        listener = self.runtime.listener
        if len(self.recipients) >= listener.max_recipients:
            raise Reject(452, "4.5.3 Error: too many recipients")
        path = parse_path(arg, "TO", utf8=self.mail_params.smtputf8)
        rcpt_params(path.params)
        if path.address == "postmaster":  # RFC 5321 4.5.1: always accepted, local
            address, domain, local = f"postmaster@{self.hostname}", normalize_domain(self.hostname), True
        else:
            address, domain, local = path.address, _recipient_domain(path.domain), False
        if not local:
            try:
                check_recipient(
                    domain, listener.local_domains, self._standing(), listener.relay_networks,
                    listener.tls_verified_peer_can_relay,
                )
            except Reject:
                events.emit("rcpt_rejected", peer=self.peer_ip, sender=self.sender, rcpt=address, reason="relay denied")
                raise
        config = self.runtime.config
        binding = self._binding_for(address, domain)
        route = resolve(config, domain, binding)["route"].value
        if not self.runtime.sink.accepts(route):
            raise Reject(451, f"4.3.2 Error: cannot deliver to route {route} yet")
        # A repeated recipient is answered like the first and kept once (as Postfix does):
        # the queue tracks each recipient's state, and two entries for one address would
        # leave one pending for ever and the message delivered again at every retry.
        key = (address.rpartition("@")[0], domain)
        if key not in self._recipient_keys:
            self._recipient_keys.add(key)
            self.recipients.append(Recipient(address, route, binding))
        self.reply(250, "2.1.5 Ok")

    def _binding_for(self, address: str, domain: str) -> str:
        """The outbound_binding hook's choice, else the first matching [[binding_rule]], else default."""
        config, listener = self.runtime.config, self.runtime.listener
        hook = self.runtime.hooks.outbound_binding
        if hook is not None:
            try:
                chosen = hook(self.sender, address, listener.name)
            except Exception:
                log.failure("outbound_binding hook raised; using binding rules")
                chosen = None
            if chosen:
                if chosen == "default" or chosen in config.bindings:
                    return str(chosen)
                log.warn("outbound_binding hook chose unknown binding {binding}", binding=chosen)
        return select_binding(config, listener.name, _domain_key(_domain_of(self.sender or "")), domain)

    def do_DATA(self, arg: bytes) -> None:
        if arg:
            raise Reject(501, "5.5.4 Syntax: DATA")
        if self.sender is None:
            raise Reject(503, "5.5.1 Error: need MAIL command")
        if not self.recipients:
            raise Reject(554, "5.5.1 Error: no valid recipients")
        listener = self.runtime.listener
        now = datetime.now().astimezone()
        envelope = Envelope(
            message_id=new_message_id(now.timestamp()),
            sender=self.sender,
            recipients=tuple(self.recipients),
            received_at=now,
            helo=self.helo or "",
            peer=self.peer_ip,
            listener=listener.name,
            smtputf8=self.mail_params.smtputf8,
            body_type=self.mail_params.body,
            esmtp=self.esmtp,
            authenticated=self.authenticated_as is not None,
            tls=self._receipt_fields(),
        )
        try:
            writer = self.runtime.sink.open(envelope, Throttle(lambda: self._pause("disk"), lambda: self._resume("disk")))
        except OSError as e:
            log.failure("cannot open a message for writing")
            err = StoreError.from_os_error(e)
            raise Reject(err.code, f"{err.reply.enhanced} Error: {err.reply.detail}") from None
        writer.write(received_header(self._trace_facts(envelope)))
        self._envelope, self._writer = envelope, writer
        self._reader = DataReader(listener.max_line_length, listener.max_message_size)
        self.reply(354, "End data with <CR><LF>.<CR><LF>")
        self.state = State.DATA
        self.setTimeout(listener.data_timeout)

    def do_RSET(self, arg: bytes) -> None:
        self._reset_transaction()
        self.reply(250, "2.0.0 Ok")

    def do_NOOP(self, arg: bytes) -> None:
        self.reply(250, "2.0.0 Ok")

    def do_VRFY(self, arg: bytes) -> None:
        self.reply(252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, arg: bytes) -> None:
        raise Reject(502, "5.5.1 Error: command not implemented")

    def do_HELP(self, arg: bytes) -> None:
        self.reply(214, "2.0.0 See RFC 5321")

    def do_QUIT(self, arg: bytes) -> None:
        self.reply(221, "2.0.0 Bye")
        self.close()

    _COMMANDS: dict[str, Callable[[InboundSMTP, bytes], Deferred[None] | None]] = {
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

    # -- DATA ---------------------------------------------------------------------

    def _data_input(self) -> None:
        assert self._reader is not None and self._writer is not None
        result = self._reader.feed(self._inbuf)
        self._inbuf = result.rest
        if result.body:
            self._hops.feed(result.body)
            self._tls_required.feed(result.body)
            self._writer.write(result.body)
        if result.ended:
            self.state = State.COMMAND
            self.setTimeout(self.runtime.listener.idle_timeout)
            self._run(lambda _: self._end_of_data(), b"")

    def _end_of_data(self) -> Deferred[None] | None:
        reader, writer, envelope = self._reader, self._writer, self._envelope
        assert reader is not None and writer is not None and envelope is not None
        hops = self._hops.hops
        self._tls_required.finish()
        tls_required_no = self._tls_required.tls_required_no
        self._reset_transaction()
        problem = reader.problem
        if problem is None and hops > self.runtime.config.max_hops:
            problem = attrs.evolve(TOO_MANY_HOPS, text=TOO_MANY_HOPS.text.format(hops=hops))
        if problem is not None:
            writer.abort()
            code, text = problem.reply.code, problem.reply.text
            self._log_transaction(envelope, reader.received, text, code)
            self._error(code, text)
            return None

        def stored(_: Any) -> None:
            text = f"2.0.0 Ok: queued as {envelope.message_id}"
            self._log_transaction(envelope, reader.received, text, 250)
            self.reply(250, text)

        def failed(failure: Failure) -> None:
            err = failure.value if failure.check(StoreError) else StoreError(451, "4.3.0", "temporary failure")
            if not failure.check(StoreError):
                log.failure("storing a message failed", failure)
            text = f"{err.reply.enhanced} Error: {err.reply.detail}"
            self._log_transaction(envelope, reader.received, text, err.code)
            self.reply(err.code, text)

        return writer.commit(tls_required_no).addCallbacks(stored, failed)

    # -- facts for headers and logs -----------------------------------------------------

    def _client_cert_words(self) -> str:
        verdict = self.client_verdict()
        if verdict is None:
            return "not requested"
        check = self.certificate_check
        assert check is not None
        if check.leaf is None:
            return "none"
        subject = self._tls_fields().get("subject") or "?"
        return f"{verdict.outcome.word} ({subject})" + (f": {verdict.reason}" if verdict.reason else "")

    def _tls_fields(self) -> dict[str, Any]:
        if not self.tls_active or self.tls_facts is None:
            return {"tls": "none"}
        verdict = self.client_verdict()
        return tls_log_fields(self.tls_facts, self.runtime.listener.tls_verify,
                              verdict.outcome.word if verdict else "no", verdict.reason if verdict else "")

    def _receipt_fields(self) -> dict[str, Any]:
        """The TLS facts of receipt plus ``requiretls`` (RFC 8689) when the client asked for it;
        the spool lifts ``requiretls`` into its own metadata field."""
        fields = self._tls_fields()
        if self.mail_params.requiretls:
            fields["requiretls"] = True
        return fields

    def _trace_facts(self, envelope: Envelope) -> TraceFacts:
        return TraceFacts(
            helo=self.helo or "",
            peer_ip=self.peer_ip,
            by_host=self.hostname,
            message_id=envelope.message_id,
            when=envelope.received_at,
            esmtp=self.esmtp,
            tls_protocol=self.tls_facts.protocol if self.tls_active and self.tls_facts else None,
            tls_cipher=self.tls_facts.cipher if self.tls_active and self.tls_facts else None,
            authenticated=self.authenticated_as is not None,
            client_cert=self._client_cert_words(),
            recipient=envelope.recipients[0].address if len(envelope.recipients) == 1 else None,
            smtputf8=envelope.smtputf8,
        )

    def _log_transaction(self, envelope: Envelope | None, size: int, text: str, code: int | None = None) -> None:
        tls = envelope.tls if envelope is not None else self._tls_fields()
        events.emit(
            "received",
            msgid=envelope.message_id if envelope else None,
            listener=self.runtime.listener.name,
            peer=self.peer_ip,
            helo=self.helo,
            sender=envelope.sender if envelope else self.sender,
            rcpts=len(envelope.recipients) if envelope else len(self.recipients),
            domains=",".join(sorted({r.domain for r in envelope.recipients})) if envelope else None,
            size=size,
            code=code,
            text=text,
            auth=self.authenticated_as,
            **tls,
        )

    # Stock methods that must never run: their behaviour is replaced above.
    def lineReceived(self, line: bytes) -> None:  # pragma: no cover - guard
        raise AssertionError("InboundSMTP does its own line handling")


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def _recipient_domain(domain: str) -> str:
    """The normalized domain of a recipient; one that is not a valid IDNA name is refused."""
    try:
        return normalize_domain(domain)
    except ValueError:
        raise Reject(501, "5.1.3 bad recipient domain") from None


def _domain_key(domain: str) -> str:
    """Normalized recipient domain; address literals and junk stay as given."""
    try:
        return normalize_domain(domain)
    except ValueError:
        return domain.lower()


@implementer(IPushProducer)
class _ReplyBackpressure:
    """Registered with the transport, which pauses it when unsent replies exceed its buffer."""

    def __init__(self, session: InboundSMTP):
        self.session = session

    def pauseProducing(self) -> None:
        # Only stop handling commands: pausing the socket here would also stall
        # a TLS handshake, which pauses producers while it waits for the peer.
        # Input then piles up to BACKLOG_LIMIT, and reading stops there.
        self.session._replies_blocked = True

    def resumeProducing(self) -> None:
        self.session._replies_blocked = False
        self.session._continue()

    def stopProducing(self) -> None:
        pass


class InboundFactory(protocol.ServerFactory):
    """Builds sessions for one listener and enforces its connection limit."""

    noisy = False

    def __init__(self, runtime: ListenerRuntime, clock: Any = None):
        self.runtime = runtime
        self.clock = clock
        self.sessions: set[InboundSMTP] = set()
        self.connections_total = 0  # sessions admitted since start
        self.per_ip: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> InboundSMTP:
        return InboundSMTP(self.runtime, self, self.clock)

    def admit(self, session: InboundSMTP) -> str | None:
        """None to admit the session, else why it is refused."""
        listener = self.runtime.listener
        if len(self.sessions) >= listener.max_connections:
            return "too many connections"
        ip = session.peer_ip
        exempt = in_networks(ip, listener.relay_networks)
        if not exempt and self.per_ip.get(ip, 0) >= listener.max_connections_per_ip:
            return "too many connections from your address"
        self.sessions.add(session)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.connections_total += 1
        events.emit("session", quiet=True, listener=listener.name, peer=ip)
        return None

    def release(self, session: InboundSMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            left = self.per_ip.get(session.peer_ip, 1) - 1
            if left:
                self.per_ip[session.peer_ip] = left
            else:
                self.per_ip.pop(session.peer_ip, None)
