"""Milters for one SMTP session: the Twisted shell around the milter conversation.

:class:`MilterConnection` carries one :class:`~tlsmta.inbound._milter_protocol.Conversation`
over a socket (``inet:HOST:PORT``, ``inet6:HOST:PORT`` or ``unix:PATH``) with
the listener's timeouts; :class:`SessionMilters` asks a session's milters,
in the configured order, at MAIL (after CONNECT and HELO, sent then so the
TLS and AUTH facts are known), at RCPT and at the end of the message, and
says what the session should answer.

A milter that cannot be reached, stalls past a timeout, closes the
connection or sends garbage gets ``milter_default_action``: ``tempfail``
answers the stage 451 4.7.1 (and every later stage of that transaction),
``accept`` goes on without it; either way a ``milter`` log line says why,
and the next MAIL tries it again on a new connection.

The message is held in memory while it arrives (at most the listener's
``max_message_size``) and goes to storage only once every milter answered
its end: :class:`MilteredWriter` then opens the real writer with the
envelope as the milters left it, writes the edited message and commits;
250 still comes only after fsync.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.python.failure import Failure

from tlsmta.errors import TlsmtaError
from tlsmta.inbound._milter_protocol import (
    Answer,
    Connect,
    Conversation,
    Edited,
    Helo,
    Mail,
    Message,
    MilterProtocolError,
    Rcpt,
    Send,
    Stage,
    Verdict,
    apply_modifications,
    join_message,
    split_message,
)
from tlsmta.network import StreamTransport, installed_reactor
from tlsmta.reporting import EventBus
from tlsmta.smtp import Reply
from tlsmta.storage import Envelope, MessageSink, Recipient, StoreError
from tlsmta.tls import SessionFacts

REJECTED = Reply.of(550, "5.7.1", "Command rejected")
TEMPFAILED = Reply.of(451, "4.7.1", "Service unavailable - try again later")


class MilterFailure(TlsmtaError):
    """The milter did not answer usefully (down, timed out, gone, garbage)."""


@attrs.frozen
class MilterSettings:
    """One listener's milters and what to do when one fails."""

    addresses: tuple[str, ...]
    default_action: str = "tempfail"  # or "accept"
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    content_timeout: float = 300.0


def milter_endpoint(reactor: Any, address: str, timeout: float) -> IStreamClientEndpoint:
    """The client endpoint of ``inet:HOST:PORT``, ``inet6:HOST:PORT`` or ``unix:PATH``
    (the loader has checked the syntax)."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        return UNIXClientEndpoint(reactor, rest, timeout=timeout)
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if ipaddress.ip_address(host).version == 6:
        return TCP6ClientEndpoint(reactor, host, int(port), timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, int(port), timeout=timeout)


class MilterConnection(protocol.Protocol):
    """One connection to a milter; one stage at a time, each bounded by a timeout
    that restarts whenever the milter sends something (SMFIR_PROGRESS included)."""

    transport: StreamTransport  # type: ignore[assignment]

    def __init__(self, clock: Any, negotiate_timeout: float):
        self.clock = clock
        self.conversation = Conversation()
        self._waiting: Deferred[Any] | None = Deferred()  # first: the negotiation
        self._timeout = negotiate_timeout
        self._timer: IDelayedCall | None = None
        self._gone = False

    @property
    def negotiated(self) -> Deferred[Any]:
        assert self._waiting is not None
        return self._waiting

    def connectionMade(self) -> None:
        self.conversation.start()
        self._restart_timer()
        self._flush()

    def ask(self, stage: Stage, timeout: float) -> Deferred[Answer]:
        if self._gone:
            raise MilterFailure("connection closed")
        self._waiting, self._timeout = Deferred(), timeout
        waiting = self._waiting
        self.conversation.ask(stage)
        self._restart_timer()
        self._flush()
        return waiting

    def dataReceived(self, data: bytes) -> None:
        self._restart_timer()
        try:
            self.conversation.receive_data(data)
        except MilterProtocolError as garbage:
            self.fail(f"protocol error: {garbage}")
            return
        self._flush()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._gone = True
        self.fail("connection closed by the milter")

    def fail(self, why: str) -> None:
        """Give up on this milter: the stage waiting fails, the connection is dropped."""
        self._stop_timer()
        waiting, self._waiting = self._waiting, None
        if not self._gone:
            self._gone = True
            self.transport.abortConnection()
        if waiting is not None:
            waiting.errback(MilterFailure(why))

    def close(self) -> None:
        """SMFIC_QUIT and close (the SMTP session ended); a stage in progress fails."""
        if self._waiting is not None:
            self.fail("the SMTP session ended")
            return
        self._stop_timer()
        if not self._gone:
            self._gone = True
            self.transport.write(self.conversation.quit())
            self.transport.loseConnection()

    def _flush(self) -> None:
        while (event := self.conversation.next_event()) is not None:
            if isinstance(event, Send):
                self.transport.write(event.data)
            elif self._waiting is not None:
                self._stop_timer()
                waiting, self._waiting = self._waiting, None
                waiting.callback(event if isinstance(event, Answer) else None)

    def _restart_timer(self) -> None:
        if self._waiting is None:
            return
        self._stop_timer()
        self._timer = self.clock.callLater(self._timeout, self.fail, f"no answer within {self._timeout:g}s")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@attrs.define
class _Milter:
    """One milter as this session sees it."""

    address: str
    connection: MilterConnection | None = None
    done_for_session: bool = False  # it accepted the connection: asked nothing more
    done_for_message: bool = False  # it accepted this message, or failed with default action accept
    failed: bool = False  # failed in this transaction (tempfail: the rest of it is 451)


@attrs.frozen
class Outcome:
    """What the SMTP session does after the milters answered a stage."""

    refusal: Reply | None = None  # answer this instead of going on
    discard: bool = False  # answer 250 and drop the message (end of message only)
    edited: Edited | None = None  # end of message: the message as the milters left it


class SessionMilters:
    """The milters of one SMTP session."""

    def __init__(self, settings: MilterSettings, reactor: Any, events: EventBus):
        self.settings = settings
        self.reactor = reactor
        self.events = events
        self.msgid: str | None = None  # the message's id once DATA opened it, for the log lines
        self.milters = [_Milter(address) for address in settings.addresses]
        self._refusal: Reply | None = None  # a milter refused the connection: every MAIL gets this
        self._discard = False  # a milter said discard for this transaction

    # -- what the SMTP shell asks ----------------------------------------------------------

    def macros(self, shell: Any, **envelope: str) -> dict[str, str]:
        """The macros for a stage, from the shell's facts (``sender``, ``rcpt``, ``msgid``)."""
        tls = shell.tls_facts if shell.tls_active else None
        reverse = shell.reverse_names or ["unknown"]  # forward-confirmed, when a client certificate asked for them
        macros = session_macros(shell.hostname, shell.runtime.listener.name, shell.peer_ip, reverse[0],
                                shell.session_log.peer_port, tls, shell.authenticated_as)
        names = {"sender": "{mail_addr}", "rcpt": "{rcpt_addr}", "msgid": "i"}
        macros.update({names[key]: value for key, value in envelope.items()})
        return macros

    async def mail(self, shell: Any, sender: str) -> Outcome:
        """MAIL FROM from the shell: CONNECT and HELO go first on a new milter connection."""
        macros = self.macros(shell, sender=sender)
        connect, helo = connect_stages(macros, shell.peer_ip, shell.session_log.peer_port, shell.helo or "")
        return await self.transaction(connect, helo, Mail(sender, macros=macros))

    def writer(self, shell: Any, sink: MessageSink, envelope: Envelope) -> MilteredWriter:
        self.msgid = envelope.message_id
        macros = self.macros(shell, sender=envelope.sender, msgid=envelope.message_id)
        return MilteredWriter(self, sink, envelope, macros, shell.recipient_for_milter)

    # -- the stages ---------------------------------------------------------------------------

    async def transaction(self, connect: Connect, helo: Helo, mail: Mail) -> Outcome:
        """MAIL: a new transaction (CONNECT and HELO first on a new milter connection)."""
        self._discard, self.msgid = False, None
        for milter in self.milters:
            milter.done_for_message = milter.failed = False
            if self._refusal is not None or milter.done_for_session:
                continue
            if milter.connection is None and not await self._open(milter, connect, helo):
                if milter.failed:  # unreachable under tempfail: this MAIL is 451
                    return Outcome(TEMPFAILED)
                continue
            refusal = await self._stage(milter, mail)
            if refusal is not None:
                return Outcome(refusal)
        return Outcome(self._refusal)

    async def rcpt(self, rcpt: Rcpt) -> Outcome:
        for milter in self._asked():
            refusal = await self._stage(milter, rcpt)
            if refusal is not None:
                return Outcome(refusal)
        return Outcome()

    async def message(self, edited: Edited, macros: dict[str, str]) -> Outcome:
        """End of message: each milter sees the message as the ones before it left it."""
        for milter in self._asked():
            stage = Message(tuple(edited.headers), edited.body, macros)
            answer = await self._answer(milter, stage, self.settings.content_timeout)
            if answer is None:
                if milter.failed:
                    return Outcome(TEMPFAILED)
                continue
            refusal = self._judge(milter, stage, answer)
            if refusal is not None:
                return Outcome(refusal)
            apply_modifications(edited, answer.modifications)
        return Outcome(discard=self._discard, edited=edited)

    def close(self) -> None:
        for milter in self.milters:
            if milter.connection is not None:
                milter.connection.close()
                milter.connection = None

    def _asked(self) -> list[_Milter]:
        """The milters still taking part in this transaction (a failed one under tempfail included)."""
        return [m for m in self.milters if not m.done_for_session and not m.done_for_message]

    async def _open(self, milter: _Milter, connect: Connect, helo: Helo) -> bool:
        settings = self.settings
        try:
            endpoint = milter_endpoint(self.reactor, milter.address, settings.connect_timeout)
            connection = MilterConnection(self.reactor, settings.connect_timeout)
            negotiated = connection.negotiated
            await endpoint.connect(_SingleUse(connection))
            await negotiated  # bounded by the connection's timer (connect_timeout)
        except Exception as e:
            self._failed(milter, "connect", str(e) or type(e).__name__)
            return False
        milter.connection = connection
        for stage in (connect, helo):
            refusal = await self._stage(milter, stage)
            if milter.done_for_session or milter.connection is None:
                return False
            if refusal is not None:
                self._refusal = refusal  # a refused connection: all its transactions are refused
                return False
        return True

    async def _stage(self, milter: _Milter, stage: Stage) -> Reply | None:
        """Ask one milter one envelope stage: the refusal it calls for, or None."""
        if milter.failed:
            return TEMPFAILED
        answer = await self._answer(milter, stage, self.settings.command_timeout)
        if answer is None:
            return TEMPFAILED if milter.failed else None
        return self._judge(milter, stage, answer)

    async def _answer(self, milter: _Milter, stage: Stage, timeout: float) -> Answer | None:
        """The milter's answer, or None when it failed (the default action is noted on it)."""
        connection = milter.connection
        if connection is None:
            return None
        try:
            answer: Answer = await connection.ask(stage, timeout)
        except MilterFailure as e:
            self._failed(milter, _stage_name(stage), str(e))
            return None
        return answer

    def _judge(self, milter: _Milter, stage: Stage, answer: Answer) -> Reply | None:
        verdict = answer.verdict
        if verdict is Verdict.ACCEPT:
            if isinstance(stage, Connect | Helo):
                milter.done_for_session = True
            else:
                milter.done_for_message = True
        elif verdict is Verdict.DISCARD:
            self._discard = True
            milter.done_for_message = True
        elif verdict in (Verdict.REJECT, Verdict.TEMPFAIL):
            refusal = answer.reply or (REJECTED if verdict is Verdict.REJECT else TEMPFAILED)
            self.events.emit("milter", milter=milter.address, stage=_stage_name(stage), msgid=self.msgid,
                             result=verdict.value, code=refusal.code, text=refusal.text)
            return refusal
        return None

    def _failed(self, milter: _Milter, stage: str, why: str) -> None:
        action = self.settings.default_action
        self.events.emit("milter", milter=milter.address, stage=stage, msgid=self.msgid, result="failed",
                         reason=why, action=action)
        if milter.connection is not None:
            milter.connection.fail(why)
        milter.connection = None  # the next MAIL connects again
        if action == "accept":
            milter.done_for_message = True
        else:
            milter.failed = True


def milters_for(listener: Any, events: EventBus) -> SessionMilters | None:
    """A session's milters, or None when its listener has none."""
    if not listener.milters:
        return None
    settings = MilterSettings(listener.milters, listener.milter_default_action, listener.milter_connect_timeout,
                              listener.milter_command_timeout, listener.milter_content_timeout)
    return SessionMilters(settings, installed_reactor(), events)


def _stage_name(stage: Stage) -> str:
    return {Connect: "connect", Helo: "helo", Mail: "mail", Rcpt: "rcpt", Message: "end-of-message"}[type(stage)]


class _SingleUse(protocol.Factory):
    """Hands out the one connection built beforehand (so its Deferreds exist before connecting)."""

    def __init__(self, connection: MilterConnection):
        self.connection = connection

    def buildProtocol(self, addr: Any) -> MilterConnection:
        return self.connection


class MilteredWriter:
    """A MessageWriter that holds the message until the milters answered its end.

    ``commit`` asks them, then stores the edited message through the sink with
    the envelope they left (sender, recipients), or refuses it with their reply
    (as a StoreError, never 250), or drops it when one said discard."""

    def __init__(self, milters: SessionMilters, sink: MessageSink, envelope: Envelope, macros: dict[str, str],
                 recipient_for: Callable[[str], Recipient]):
        self._milters = milters
        self._sink = sink
        self._envelope = envelope
        self._macros = macros
        self._recipient_for = recipient_for
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def abort(self) -> None:
        self._parts.clear()

    def commit(self, tls_required_no: bool = False, message_id_header: str = "") -> Deferred[None]:
        return Deferred.fromCoroutine(self._commit(tls_required_no, message_id_header))

    async def _commit(self, tls_required_no: bool, message_id_header: str) -> None:
        envelope = self._envelope
        original = b"".join(self._parts)
        self._parts.clear()
        headers, body = split_message(original)
        edited = Edited(envelope.sender, [r.address for r in envelope.recipients], list(headers), body)
        outcome = await self._milters.message(edited, self._macros)
        if outcome.refusal is not None:
            reply = outcome.refusal
            raise StoreError(reply.code, reply.enhanced or ("5.7.1" if reply.code >= 500 else "4.7.1"),
                             reply.detail if reply.enhanced else reply.text)
        if outcome.discard or outcome.edited is None:
            self._milters.events.emit("milter", msgid=envelope.message_id, result="discarded", rcpts=len(envelope.recipients))
            return
        edited = outcome.edited
        if not edited.recipients:
            self._milters.events.emit("milter", msgid=envelope.message_id, result="discarded", reason="no recipients left")
            return
        kept = {r.address.lower(): r for r in envelope.recipients}
        recipients = tuple(kept.get(a.lower()) or self._recipient_for(a) for a in edited.recipients)
        envelope = attrs.evolve(envelope, sender=edited.sender, recipients=recipients, held=bool(edited.quarantine))
        if edited.quarantine:
            self._milters.events.emit("milter", msgid=envelope.message_id, result="quarantined", reason=edited.quarantine)
        try:
            writer = self._sink.open(envelope)
        except OSError as e:
            raise StoreError.from_os_error(e) from None
        # Unchanged bytes stay byte for byte (a DKIM signature made with simple canonicalization survives).
        unchanged = edited.headers == headers and edited.body == body
        writer.write(original if unchanged else join_message(edited.headers, edited.body))
        await writer.commit(tls_required_no, message_id_header)


def session_macros(
    hostname: str,
    listener: str,
    peer_ip: str,
    client_name: str,
    peer_port: int | None,
    tls: SessionFacts | None,
    authenticated_as: str | None,
) -> dict[str, str]:
    """The Sendmail macros common milters read (OpenDKIM, rspamd, SpamAssassin's spamass-milter),
    with Postfix's names; a fact we do not have is left out rather than faked."""
    macros = {
        "j": hostname,
        "{daemon_name}": listener,
        "{client_addr}": peer_ip,
        "{client_name}": client_name,  # "unknown" (Postfix's word) without a verified reverse name
        "_": f"{client_name} [{peer_ip}]",
    }
    if peer_port is not None:
        macros["{client_port}"] = str(peer_port)
    if tls is not None:
        macros["{tls_version}"] = tls.protocol
        macros["{cipher}"] = tls.cipher
        if tls.peer_subject:
            macros["{cert_subject}"] = tls.peer_subject
        if tls.peer_issuer:
            macros["{cert_issuer}"] = tls.peer_issuer
    if authenticated_as is not None:
        macros["{auth_authen}"] = authenticated_as
    return macros


def connect_stages(macros: dict[str, str], peer_ip: str, peer_port: int | None, helo: str) -> tuple[Connect, Helo]:
    family = "6" if ":" in peer_ip else "4"
    return Connect(f"[{peer_ip}]", peer_ip, peer_port or 0, family, macros), Helo(helo, macros)
