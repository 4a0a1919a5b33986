"""The ESMTP server: a hardened subclass of twisted.mail.smtp.ESMTP.

The stock class is kept for its identity (isinstance checks, TimeoutMixin)
but its input handling is replaced, because each of these is a fault in it
(each shown against the stock class in tests/test_stock_twisted_faults.py),
fixed by the session state machine (:mod:`tlsmta.smtp.server_session`) and
this shell, and proved by tests:

- bytes pipelined after STARTTLS are discarded, never run inside TLS;
- STARTTLS resets the whole session; the client must EHLO again;
- MAIL before HELO/EHLO is 503;
- DATA ends only at CRLF.CRLF; bare CR/LF, NUL, over-long lines and a first
  line starting with SP/HTAB (it would fold into our Received: header)
  reject the message at the end of DATA without leaving DATA mode or
  buffering lines (:mod:`tlsmta.smtp._data`);
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

The SMTP state machine is :class:`tlsmta.smtp.server_session.ServerSession`
(no I/O); this class feeds it bytes, carries out its events and answers its
questions with the listener's policy (inbound.acceptance, tls.policy,
client certificates, AUTH users) and storage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsmta.config import BAD_CERTIFICATE_LAB_MODES, Config, ListenerConfig, ListenerTLS, resolve, split_address
from tlsmta.discovery import Resolver
from tlsmta.inbound._acceptance import (
    ClientStanding,
    Refusal,
    check_client_certificate,
    check_recipient,
    client_pinned,
    in_networks,
)
from tlsmta.inbound._auth import Credentials
from tlsmta.inbound._door import Door, TurnedAway
from tlsmta.inbound._milter import Outcome, SessionMilters, milters_for
from tlsmta.inbound._milter_protocol import Rcpt
from tlsmta.inbound._received import TraceFacts, received_header
from tlsmta.inbound._recipients import check_mailbox_name, expand_recipient
from tlsmta.inbound._sender_login import check_sender_login
from tlsmta.inbound._session_log import SessionLog, port_of
from tlsmta.inbound._submission import CompletingWriter, HeaderCompletion
from tlsmta.network import ImmediateWriter, StreamTransport, installed_reactor, set_no_delay
from tlsmta.reporting import EventBus
from tlsmta.smtp import DomainNameError, Reject, Reply, normalize_domain
from tlsmta.smtp.server_session import (
    CheckCredentials,
    Close,
    CommitMessage,
    LineReceived,
    MailAllowed,
    MessageData,
    MessageRefused,
    OpenMessage,
    Phase,
    RcptTo,
    ReplyOverride,
    Send,
    ServerSession,
    ServerSettings,
    StartTLS,
)
from tlsmta.storage import (
    Envelope,
    MessageSink,
    MessageWriter,
    Recipient,
    StoreError,
    Throttle,
    free_bytes,
    new_message_id,
    space_refusal,
)
from tlsmta.tls import (
    CertificateCheck,
    HookContext,
    Hooks,
    ServerTLS,
    SessionFacts,
    Verdict,
    VerifyMode,
    certificate_sha256,
    spki_sha256,
    ssl_error_text,
    tls_connection,
    tls_log_fields,
)

log = Logger(namespace="tlsmta.inbound")

CLOSE_GRACE = 10  # seconds a closing connection may take to flush before it is aborted
BACKLOG_LIMIT = 64 * 1024  # pipelined bytes held while a command is in progress
REPLY_BATCH = 16 * 1024  # replies to a pipelined flight held for one write at most
# AUTH brute force: a failed AUTH is answered 535 only after a delay that doubles with
# each failure on the connection (1, 2, 4 s ..., capped); the session counts the
# failures and ends itself at its AUTH_FAILURE_LIMIT.
AUTH_FAILURE_DELAY = 1.0
AUTH_FAILURE_DELAY_CAP = 8.0



@attrs.define
class ListenerRuntime:
    """What every session of one listener shares; replaced as a whole on reload."""

    listener: ListenerConfig
    config: Config
    hostname: str
    sink: MessageSink
    tls: ServerTLS | None = None
    users: Credentials | None = None
    hooks: Hooks = attrs.field(factory=Hooks)
    resolver: Resolver | None = None  # reverse DNS for client-certificate name checks
    run_in_thread: Callable[..., Deferred[Any]] | None = None  # for password checks
    events: EventBus = attrs.field(factory=EventBus)  # the service's
    reply_override: ReplyOverride | None = None  # the dev relay's chaos rules, asked at each stage

    @property
    def offers_starttls(self) -> bool:
        return self.tls is not None and self.listener.tls.starttls and self.listener.tls_lab != "no-starttls"

    def session_settings(self) -> ServerSettings:
        listener = self.listener
        return ServerSettings(
            hostname=self.hostname,
            max_message_size=listener.max_message_size,
            max_line_length=listener.max_line_length,
            max_recipients=listener.max_recipients,
            max_hops=self.config.max_hops,
            implicit_tls=listener.tls is ListenerTLS.IMPLICIT,
            offers_starttls=self.offers_starttls,
            auth_available=self.users is not None,
            auth_requires_tls=listener.require_tls_for_auth,
            tls_required=listener.tls is ListenerTLS.REQUIRED,
            auth_mechanisms=self.users.mechanisms if self.users is not None else (),
            reply_override=self.reply_override,
            auth_required=listener.role == "submission",
        )


@implementer(IHandshakeListener)
class InboundSMTP(smtp.ESMTP):
    """One inbound SMTP session: a :class:`ServerSession` and the I/O it asks for."""

    # Twisted's ITransport | None has neither the TCP/TLS/producer methods nor the connected state.
    transport: StreamTransport  # type: ignore[assignment]

    def __init__(self, runtime: ListenerRuntime, factory: InboundFactory | None = None, clock: IReactorTime | None = None):
        super().__init__()
        self.runtime = runtime
        self.factory = factory
        self.clock = clock if clock is not None else installed_reactor()
        self.hostname = runtime.hostname
        self.session = ServerSession(runtime.session_settings())
        self.tls_facts: SessionFacts | None = None
        self.certificate_check = self._new_certificate_check() if runtime.tls else None
        self.peer_ip = "unknown"
        self._writer: MessageWriter | None = None
        self._envelope: Envelope | None = None
        self._pumping = False
        self._replies: list[bytes] = []  # written while pumping, sent together when it stops
        self._replies_size = 0
        self._paused_for: set[str] = set()
        self._abort_timer: IDelayedCall | None = None
        self._session_timer: IDelayedCall | None = None
        self._auth_delay: IDelayedCall | None = None
        self._pregreet_timer: IDelayedCall | None = None
        self._replies_blocked = False  # the transport holds too many unsent replies
        self._client_verify_counted = False
        self._reverse_lookup: Deferred[list[str]] | None = None
        self.reverse_names: list[str] | None = None
        self.session_log = SessionLog(runtime.events, runtime.listener.name, self.clock.seconds())
        self.milters = milters_for(runtime.listener, runtime.events)

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's scheduler (and ours), on this session's clock."""
        return self.clock.callLater(period, func)

    # The session's state, as the log lines and headers need it.
    state = property(lambda self: self.session.phase)
    tls_active = property(lambda self: self.session.tls_active)
    helo = property(lambda self: self.session.helo)
    esmtp = property(lambda self: self.session.esmtp)
    authenticated_as = property(lambda self: self.session.authenticated_as)
    sender = property(lambda self: self.session.sender)
    mail_params = property(lambda self: self.session.mail_params)
    recipients = property(lambda self: self.session.recipients)
    errors = property(lambda self: self.session.errors)
    auth_failures = property(lambda self: self.session.auth_failures)

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
            record=bool(listener.relay_client_pins),  # ask for a certificate to compare with the pins
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
        self._out = ImmediateWriter(self.transport)
        peer = self.transport.getPeer()
        self.peer_ip = self.session.peer = getattr(peer, "host", str(peer))
        self.session_log.connected(self.peer_ip, port_of(peer), port_of(self.transport.getHost()))
        if self.certificate_check is not None and self.certificate_check.hook_context is not None:
            self.certificate_check.hook_context = attrs.evolve(self.certificate_check.hook_context, peer=self.peer_ip)
        refusal = self.factory.admit(self) if self.factory is not None else None
        if refusal is not None:
            self.session_log.refused = refusal
            self.session.refuse_connection(refusal)
            self._pump(closing=True)
            return
        if self.session.refused_at_connect():
            self.session_log.refused = "reply override (dev relay chaos)"
            self._pump(closing=True)
            return
        # Stop reading commands while our replies pile up unread (a client that never reads).
        self.transport.registerProducer(_ReplyBackpressure(self), True)
        set_no_delay(self.transport)  # replies are small writes; never hold one for an ACK
        self._session_timer = self.callLater(self.runtime.listener.session_timeout, self._session_deadline)
        self._screen_then_greet()

    def _screen_then_greet(self) -> None:
        """Greet now, or after ``pregreet_wait`` and the DNSBL answers, whichever comes later."""
        listener, door = self.runtime.listener, self.factory.door if self.factory is not None else None
        if door is None or in_networks(self.peer_ip, listener.relay_networks) or not (listener.pregreet_wait or listener.dnsbl):
            self._greet()
            return
        self.session.hold_greeting()
        waited = Deferred[None]()
        if listener.pregreet_wait:
            self._pregreet_timer = self.callLater(listener.pregreet_wait, lambda: waited.callback(None))
        else:
            waited.callback(None)
        lookup = self.runtime.resolver.addresses if self.runtime.resolver is not None else None
        verdict = door.screen(listener, self.peer_ip, lookup, self.runtime.events)
        verdict.addCallback(lambda refusal: waited.addCallback(lambda _: refusal)).addCallback(self._screened)

    def _screened(self, refusal: TurnedAway | None) -> None:
        if self.state is Phase.CLOSED:
            return  # an early talker, already answered, or gone
        if refusal is not None:
            self.session_log.refused = refusal.reason
            self.session.turn_away(refusal.reply)
            self._pump(closing=True)
            return
        self._greet()
        self._pump()  # the session reads nothing before its greeting

    def _greet(self) -> None:
        self._out.write(self.session.greet().wire())
        self.setTimeout(self.runtime.listener.idle_timeout)

    def close(self) -> None:
        """Close after what was written is sent, but never wait for the peer forever:
        a client that stops reading, or stalls a TLS handshake, is cut off after CLOSE_GRACE."""
        self._send_replies()
        self.transport.loseConnection()
        if self._abort_timer is None:
            self._abort_timer = self.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        for timer in (self._abort_timer, self._session_timer, self._auth_delay, self._pregreet_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self.tls_active and self.tls_facts is None and reason is not None and reason.check(SSL.Error):
            self.runtime.events.emit("tls_failed", listener=self.runtime.listener.name, peer=self.peer_ip, reason=ssl_error_text(reason.value))
        if self._writer is not None and self.state is Phase.DATA:
            self._writer.abort()
            self._log_transaction(self._envelope, self.session.data_received, "connection lost during DATA")
        self.session.connection_lost()
        if self.milters is not None:
            self.milters.close()
        if self.factory is not None:
            self.factory.release(self)
        self.session_log.disconnected(self.clock.seconds(), self._tls_fields())

    def timeoutConnection(self) -> None:
        if self._writer is not None and self.state is Phase.DATA:
            self._writer.abort()
            self._writer = None
        self.session.timed_out()
        self._pump(closing=True)

    def _session_deadline(self) -> None:
        self.session.deadline_passed()
        # Between commands the session ends now, even if the client stopped reading.
        self._pump(closing=self.session.phase in (Phase.COMMAND, Phase.AUTH) and self.session.pending is None)

    def handshakeCompleted(self) -> None:
        self.tls_facts = SessionFacts.from_connection(tls_connection(self.transport))
        self.runtime.events.emit("tls_inbound", quiet=True, listener=self.runtime.listener.name, protocol=self.tls_facts.protocol)
        self._start_reverse_lookup()

    # -- input: the session decides, this class carries out ---------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is Phase.CLOSED:
            return
        if self.state is Phase.DATA:
            self.resetTimeout()  # data_timeout: a message streams for as long as it keeps coming
        # Otherwise idle_timeout restarts only when a complete line arrives (LineReceived):
        # a client trickling a byte at a time cannot hold the session.
        self.session.receive_data(data)
        if (self.session.pending is not None or self._replies_blocked) and self.session.buffered > BACKLOG_LIMIT:
            self._pause("backlog")
        self._pump()

    def _pump(self, closing: bool = False) -> None:
        """Carry out the session's events until it needs input or an answer.

        ``closing``: the session is ending (timeout, refusal); its last reply and the
        close are carried out even while the transport holds replies back (a client
        that stopped reading, or a TLS handshake that stalls, pauses us)."""
        if self._pumping:
            return  # an answer given while handling an event: the running loop goes on
        self._pumping = True
        try:
            while closing or not self._replies_blocked:
                event = self.session.next_event()
                if event is None:
                    break
                self._HANDLERS[type(event)](self, event)
        finally:
            self._pumping = False
            self._send_replies()
        if self.session.pending is None and not self._replies_blocked:
            self._resume("backlog")

    def _pause(self, reason: str) -> None:
        if not self._paused_for:
            self.transport.pauseProducing()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and self.state is not Phase.CLOSED:
                self.transport.resumeProducing()

    def _settle(self, question: object, answer: Callable[[], None]) -> None:
        """Give the open question its answer; a Reject raised by ``answer`` refuses it."""
        if self.session.pending is not question:
            return  # the connection went away meanwhile
        try:
            answer()
        except Reject as refusal:
            self.session.refuse(refusal.reply)
        except Exception:
            log.failure("command handler failed")
            self.session.fail()
        self._pump()

    # -- events ------------------------------------------------------------------------

    def _send(self, event: Send) -> None:
        # The replies to a pipelined flight (RFC 2920) leave in one write when the loop stops;
        # a long flight's go out as they pile up, so the transport's flow control can stop it.
        self._replies.append(event.data)
        self._replies_size += len(event.data)
        if self._replies_size >= REPLY_BATCH:
            self._send_replies()

    def _send_replies(self) -> None:
        if self._replies:
            data = b"".join(self._replies)
            self._replies.clear()
            self._replies_size = 0
            self._out.write(data)

    def _line_received(self, event: LineReceived) -> None:
        self.resetTimeout()  # a complete line: the client gets idle_timeout for the next one
        self.session_log.commands += 1

    def _start_tls(self, event: StartTLS) -> None:
        assert self.runtime.tls is not None
        self._send_replies()  # the 220 before the handshake
        self._out.start_tls(self.runtime.tls.bound_to(self.certificate_check))

    def _message_data(self, event: MessageData) -> None:
        assert self._writer is not None
        self._writer.write(event.data)

    def _message_refused(self, event: MessageRefused) -> None:
        assert self._writer is not None
        self._writer.abort()
        self._log_transaction(self._envelope, event.size, event.reply.text, event.reply.code)
        self._writer = self._envelope = None
        self.setTimeout(self.runtime.listener.idle_timeout)

    def _close(self, event: Close) -> None:
        if self.session.talked_early:
            self.session_log.refused = "pregreet: talked before the greeting"
        self.close()

    def _mail_allowed(self, question: MailAllowed) -> None:
        if self._reverse_lookup is not None and self.reverse_names is None:

            def settle(result: list[str] | Failure) -> list[str] | Failure:
                self._settle(question, lambda: self._check_client(question))
                return result

            self._reverse_lookup.addBoth(settle)
            return
        self._settle(question, lambda: self._check_client(question))

    def _check_client(self, question: MailAllowed) -> None:
        listener = self.runtime.listener
        verdict = self.client_verdict()
        if verdict is not None and not self._client_verify_counted:
            self._client_verify_counted = True
            self.runtime.events.emit("client_verify", quiet=True, tls_verify=listener.tls_verify, verified=verdict.outcome.word)
        check_client_certificate(VerifyMode(listener.tls_verify), self.tls_active, verdict)
        self._check_sender_login(question.sender)
        self._check_message_rate()
        self._check_free_space(question.size)
        if question.sender is None:  # the MAIL syntax error is answered now
            self.session.accept()
            return
        self._ask_milters(question, lambda m: m.mail(self, question.sender or ""), self.session.accept)

    def _check_sender_login(self, sender: str | None) -> None:
        try:
            check_sender_login(self.runtime.listener.sender_login_maps, self.authenticated_as, sender)
        except Refusal as refusal:
            self.runtime.events.emit("mail_refused", peer=self.peer_ip, sender=sender, auth=self.authenticated_as,
                                     code=refusal.code, text=refusal.text, reason=refusal.reason)
            raise

    def _check_message_rate(self) -> None:
        """450 4.7.1 at MAIL past the listener's max_message_rate for this client address."""
        listener = self.runtime.listener
        if self.factory is None or in_networks(self.peer_ip, listener.relay_networks):
            return
        refusal = self.factory.door.message_refusal(listener, self.peer_ip)
        if refusal is not None:
            self.runtime.events.emit("refused", listener=listener.name, peer=self.peer_ip, reason=refusal.reason,
                                     code=refusal.reply.code, text=refusal.reply.text)
            raise Reject(refusal.reply.code, refusal.reply.text)

    def _check_free_space(self, declared_size: int | None) -> None:
        """452 4.3.1 at MAIL when the spool's filesystem cannot take the message and keep [spool] min_free."""
        spool = self.runtime.config.spool
        try:
            free = free_bytes(spool["path"])
        except OSError:
            return  # not known (no spool here): writing the message gives the answer
        refusal = space_refusal(declared_size, free, spool["min_free"])
        if refusal is not None:
            reject = _refusal(refusal)
            self.runtime.events.emit("mail_refused", peer=self.peer_ip, size=declared_size, free=free,
                                     min_free=spool["min_free"], code=reject.reply.code, text=reject.reply.text)
            raise reject

    def _rcpt_to(self, question: RcptTo) -> None:
        self._settle(question, lambda: self._check_recipient(question))

    def _check_recipient(self, question: RcptTo) -> None:
        listener = self.runtime.listener
        address = question.address
        if question.local:
            domain = normalize_domain(question.domain)
        else:
            domain = _recipient_domain(question.domain)
            try:
                check_recipient(
                    domain, listener.local_domains, self._standing(), listener.relay_networks,
                    listener.tls_verified_peer_can_relay,
                )
            except Reject:
                self.runtime.events.emit("rcpt_rejected", peer=self.peer_ip, sender=self.sender, rcpt=address, reason="relay denied")
                raise
        try:
            records = self._recipients_for(address, domain)
        except Refusal as refusal:
            self.runtime.events.emit("rcpt_rejected", peer=self.peer_ip, sender=self.sender, rcpt=address,
                                     reason=refusal.reason)
            raise
        self._ask_milters(question, lambda m: m.rcpt(Rcpt(address, macros=m.macros(self, rcpt=address))),
                          lambda: self.session.accept_recipients(records))

    def _recipients_for(self, address: str, domain: str) -> list[tuple[Recipient, tuple[str, str]]]:
        """The recipients an accepted RCPT adds, each with the (local part, domain) it is kept once by:
        the address itself, or what the listener's recipient_maps expand it to."""
        listener = self.runtime.listener
        maps = listener.recipient_maps
        if maps is None or domain not in listener.local_domains:
            return [(self._recipient(address, domain), (address.rpartition("@")[0], domain))]
        targets = expand_recipient(address, maps, listener.local_domains)
        return [(self._recipient(target, split_address(target)[1]), split_address(target)) for target in targets]

    def _recipient(self, address: str, domain: str) -> Recipient:
        """Where mail for ``address`` goes, as the queue will record it."""
        binding = self._binding_for(address, domain)
        route = resolve(self.runtime.config, domain, binding)["route"].value
        if not self.runtime.sink.accepts(route):
            raise Reject(451, f"4.3.2 Error: cannot deliver to route {route} yet")
        check_mailbox_name(address, route)
        return Recipient(address, route, binding)

    def _ask_milters(self, question: object, ask: Callable[[SessionMilters], Any], go_on: Callable[[], None]) -> None:
        """The milter hook (MAIL, RCPT): their refusal answers the question, else ``go_on``."""
        if self.milters is None:
            go_on()
            return

        def answered(outcome: Outcome) -> None:
            refusal = outcome.refusal
            self._settle(question, go_on if refusal is None else lambda: self.session.refuse(refusal))

        def broken(failure: Failure) -> None:
            log.failure("asking the milters failed", failure)
            self._settle(question, self.session.fail)

        Deferred.fromCoroutine(ask(self.milters)).addCallbacks(answered, broken)

    def recipient_for_milter(self, address: str) -> Recipient:
        """The record of a recipient a milter added (the milter is trusted: no relay check)."""
        domain = _recipient_domain(address.rpartition("@")[2] or self.hostname)
        binding = self._binding_for(address, domain)
        return Recipient(address, resolve(self.runtime.config, domain, binding)["route"].value, binding)

    def _standing(self) -> ClientStanding:
        verdict = self.client_verdict()
        return ClientStanding(
            address=self.peer_ip,
            authenticated=self.authenticated_as is not None,
            cert_verified=verdict is not None and verdict.verified,
            cert_pinned=self._certificate_pinned(),
        )

    def _certificate_pinned(self) -> bool:
        pins = self.runtime.listener.relay_client_pins
        leaf = self.certificate_check.leaf if self.certificate_check is not None and self.tls_active else None
        return bool(pins) and leaf is not None and client_pinned(pins, spki_sha256(leaf), certificate_sha256(leaf))

    def _binding_for(self, address: str, domain: str) -> str:
        return self.runtime.hooks.choose_binding(self.runtime.config, self.sender or "", address, self.runtime.listener.name, domain)

    def _open_message(self, question: OpenMessage) -> None:
        self._settle(question, self._open_writer)

    def _open_writer(self) -> None:
        listener = self.runtime.listener
        now = datetime.fromtimestamp(self.clock.seconds()).astimezone()
        envelope = Envelope(
            message_id=new_message_id(now.timestamp()),
            sender=self.sender or "",
            recipients=tuple(self.recipients),
            received_at=now,
            helo=self.helo or "",
            peer=self.peer_ip,
            listener=listener.name,
            smtputf8=self.mail_params.smtputf8,
            body_type=self.mail_params.body,
            esmtp=self.esmtp,
            authenticated=self.authenticated_as is not None,
            auth_user=self.authenticated_as,
            tls=self._receipt_fields(),
        )
        writer: MessageWriter
        try:
            if self.milters is not None:  # held until the milters answered its end
                writer = self.milters.writer(self, self.runtime.sink, envelope)
            else:
                writer = self.runtime.sink.open(envelope, Throttle(lambda: self._pause("disk"), lambda: self._resume("disk")))
        except OSError as e:
            log.error("cannot open a message for writing: {error}", error=e)
            raise _refusal(StoreError.from_os_error(e)) from None
        writer.write(received_header(self._trace_facts(envelope)))
        if listener.role == "submission":
            completion = HeaderCompletion(format_datetime(now), f"<{envelope.message_id}@{self.hostname}>")
            writer = CompletingWriter(writer, completion)
        self._envelope, self._writer = envelope, writer
        self.session.accept()
        self.setTimeout(listener.data_timeout)

    def _commit_message(self, question: CommitMessage) -> None:
        writer, envelope = self._writer, self._envelope
        assert writer is not None and envelope is not None
        self._writer = self._envelope = None
        self.setTimeout(self.runtime.listener.idle_timeout)

        def stored(_: Any) -> Reply:
            return Reply.of(250, "2.0.0", f"Ok: queued as {envelope.message_id}")

        def failed(failure: Failure) -> Reply:
            if not failure.check(StoreError):
                log.failure("storing a message failed", failure)
            err = failure.value if failure.check(StoreError) else StoreError(451, "4.3.0", "temporary failure")
            return _refusal(err).reply

        def answer(reply: Reply) -> None:
            if reply.code == 250:
                self.session_log.messages += 1
            self._log_transaction(envelope, question.size, reply.text, reply.code, question.message_id)
            self._settle(question, lambda: self.session.finish_message(reply))

        writer.commit(question.tls_required_no, message_id_header=question.message_id).addCallbacks(stored, failed).addCallback(answer)

    def _check_credentials(self, question: CheckCredentials) -> None:
        users = self.runtime.users
        assert users is not None
        run = self.runtime.run_in_thread
        check: Callable[..., bool] = users.check
        args: tuple[str, ...] = (question.user, question.password)
        if question.cram_md5 is not None:
            check, args = users.check_cram_md5, (question.user, *question.cram_md5)
        checking = run(check, *args) if run else maybeDeferred(check, *args)

        def answer(ok: bool) -> None:
            # The payload is never logged; the user name is.
            self.runtime.events.emit("auth", peer=self.peer_ip, user=question.user, result="ok" if ok else "failed")
            if ok:
                self._settle(question, lambda: self.session.credentials_accepted(question.user))
                return
            # 535 only after a delay that doubles with each failure on the connection;
            # input waits meanwhile, as the question stays open.
            delay = min(AUTH_FAILURE_DELAY * 2**self.session.auth_failures, AUTH_FAILURE_DELAY_CAP)
            self._auth_delay = self.callLater(delay, refused)

        def refused() -> None:
            self._auth_delay = None
            self._settle(question, self.session.credentials_refused)

        def broken(failure: Failure) -> None:
            log.failure("checking a password failed", failure)
            self._settle(question, self.session.fail)

        checking.addCallbacks(answer, broken)

    _HANDLERS: dict[type, Callable[[InboundSMTP, Any], None]] = {
        Send: _send,
        LineReceived: _line_received,
        StartTLS: _start_tls,
        MessageData: _message_data,
        MessageRefused: _message_refused,
        Close: _close,
        MailAllowed: _mail_allowed,
        RcptTo: _rcpt_to,
        OpenMessage: _open_message,
        CommitMessage: _commit_message,
        CheckCredentials: _check_credentials,
    }

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
        fields = tls_log_fields(self.tls_facts, self.runtime.listener.tls_verify,
                                verdict.outcome.word if verdict else "no", verdict.reason if verdict else "")
        if self.runtime.listener.tls_lab in BAD_CERTIFICATE_LAB_MODES:
            fields["lab"] = self.runtime.listener.tls_lab  # the client went on with the lab's bad certificate
        return fields

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

    def _log_transaction(self, envelope: Envelope | None, size: int, text: str, code: int | None = None,
                         message_id: str = "") -> None:
        tls = envelope.tls if envelope is not None else self._tls_fields()
        self.runtime.events.emit(
            "received",
            msgid=envelope.message_id if envelope else None,
            message_id=message_id or None,
            listener=self.runtime.listener.name,
            peer=self.peer_ip,
            peer_port=self.session_log.peer_port,
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


def _refusal(error: StoreError) -> Reject:
    """The reply to give the client for a storage failure (never 250)."""
    return Reject(error.code, f"{error.reply.enhanced} Error: {error.reply.detail}")


def _recipient_domain(domain: str) -> str:
    """The normalized domain of a recipient; one that is not a valid IDNA name is refused."""
    try:
        return normalize_domain(domain)
    except DomainNameError:
        raise Reject(501, "5.1.3 bad recipient domain") from None


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
        self.session._pump()  # the input that waited meanwhile

    def stopProducing(self) -> None:
        pass


class InboundFactory(protocol.ServerFactory):
    """Builds sessions for one listener and enforces its connection limit."""

    noisy = False

    def __init__(self, runtime: ListenerRuntime, clock: IReactorTime | None = None):
        self.runtime = runtime
        self.clock = clock
        self.sessions: set[InboundSMTP] = set()
        self.connections_total = 0  # sessions admitted since start
        self.per_ip: dict[str, int] = {}
        self.door = Door(clock if clock is not None else installed_reactor())

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
        rate_refusal = None if exempt else self.door.connection_refusal(listener, ip)
        if rate_refusal is not None:
            return rate_refusal
        self.sessions.add(session)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.connections_total += 1
        self.runtime.events.emit("session", quiet=True, listener=listener.name, peer=ip)
        return None

    def release(self, session: InboundSMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            left = self.per_ip.get(session.peer_ip, 1) - 1
            if left:
                self.per_ip[session.peer_ip] = left
            else:
                self.per_ip.pop(session.peer_ip, None)
