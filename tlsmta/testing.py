"""Fakes and helpers for tests, ours and an application's.

- :class:`MemorySink`: a message store in memory, with control over commit.
- :class:`FakeTLSTransport`: a StringTransport that records ``startTLS``.
- :class:`RunningRelay`: a whole tlsmta service inside the test process,
  listening on a free loopback port (for tests that run a Twisted reactor).
- :class:`Relay` and the pytest fixture ``tlsmta_relay``: the dev relay for
  an application's (synchronous) test suite, like aiosmtpd's Controller.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from tlsmta.app import checked_config
from tlsmta.config import Config, Route
from tlsmta.network import IServiceReactor, installed_reactor
from tlsmta.storage import NO_THROTTLE, Envelope, StoreError, Throttle


@attrs.define
class StoredMessage:
    """A message a MemorySink committed."""

    envelope: Envelope
    data: bytes


class MemoryWriter:
    """Collects one message; what commit does is decided by its sink."""

    def __init__(self, sink: MemorySink, envelope: Envelope):
        self.sink = sink
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def commit(self, tls_required_no: bool = False, message_id_header: str = "") -> Deferred[None]:
        if self.sink.fail_with is not None:
            return fail(self.sink.fail_with)
        if self.sink.hold:
            d: Deferred[None] = Deferred()
            self.sink.held.append((d, self))
            return d
        self.sink.stored.append(StoredMessage(self.envelope, b"".join(self.chunks)))
        return succeed(None)

    def release(self) -> None:
        """For held commits: store the message (then fire the Deferred)."""
        self.sink.stored.append(StoredMessage(self.envelope, b"".join(self.chunks)))

    def abort(self) -> None:
        self.aborted = True
        self.sink.aborted.append(self.envelope)


class MemorySink:
    """A MessageSink in memory.

    ``fail_with``: commit fails with this StoreError.  ``hold``: commit
    returns a Deferred kept in ``held`` until the test fires it.
    """

    def __init__(self, fail_with: StoreError | None = None, hold: bool = False):
        self.fail_with = fail_with
        self.hold = hold
        self.held: list[tuple[Deferred[None], MemoryWriter]] = []
        self.stored: list[StoredMessage] = []
        self.aborted: list[Envelope] = []
        self.opened: list[MemoryWriter] = []

    def accepts(self, route: Route) -> bool:
        return route.is_local

    def open(self, envelope: Envelope, throttle: Throttle = NO_THROTTLE) -> MemoryWriter:
        writer = MemoryWriter(self, envelope)
        self.opened.append(writer)
        return writer


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):
    """A StringTransport that records STARTTLS instead of doing it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tls_started_with: Any = None
        self.written_before_tls: bytes | None = None
        self.tcp_no_delay = self.tcp_keep_alive = False

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_started_with = contextFactory
        self.written_before_tls = self.value()

    # The rest of ITCPTransport (ITLSTransport extends it): options are kept, nothing is sent.
    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def getTcpNoDelay(self) -> bool:
        return self.tcp_no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.tcp_no_delay = enabled

    def getTcpKeepAlive(self) -> bool:
        return self.tcp_keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.tcp_keep_alive = enabled


def _port_number(port: IListeningPort) -> int:
    address = port.getHost()
    if not isinstance(address, (IPv4Address, IPv6Address)):
        raise TypeError(f"not a TCP port: {address}")
    return address.port


def dev_listener(**overrides: Any) -> dict[str, Any]:
    """A ``[[listener]]`` table for a loopback test listener on a free port."""
    table: dict[str, Any] = {
        "name": "test",
        "endpoint": "tcp:0:interface=127.0.0.1",
        "tls": "no",
        "relay_networks": ["127.0.0.0/8", "::1/128"],
    }
    table.update(overrides)
    return table


def build_config(raw: Mapping[str, Any], path: str = "<test>") -> Config:
    """Validate a config given as a dict (the TOML document's shape)."""
    return checked_config(raw, path)


class RunningRelay:
    """A tlsmta service running in this process (start/stop from a test).

    ``ports`` maps listener names to the port numbers they got.
    """

    def __init__(self, config: Config, reactor: IServiceReactor | None = None, dns_backend: Any = None):
        if reactor is None:
            reactor = installed_reactor()
        from tlsmta.app import TlsmtaService
        from tlsmta.discovery import OfflineBackend

        # Only [dns] pinned answers: a test never queries a real resolver.
        self.service = TlsmtaService(config, reactor, dns_backend or OfflineBackend())
        self.ports: dict[str, int] = {}
        self.http_port: int | None = None
        self.mail_access_ports: dict[str, int] = {}  # "pop3", "imap" ([dev]) -> port

    @property
    def port(self) -> int:
        """The port of the only (or first) listener."""
        return next(iter(self.ports.values()))

    async def start(self) -> RunningRelay:
        self.service.startService()
        for name, listener in self.service.listeners.items():
            self.ports[name] = _port_number(await listener.ready)
        if self.service.web is not None:
            self.http_port = _port_number(await self.service.web.ready)
        for access in self.service.mail_access:
            self.mail_access_ports[access.key] = _port_number(await access.ready)
        return self

    async def stop(self) -> None:
        for listener in self.service.listeners.values():
            for session in list(listener.inbound.sessions):
                session.transport.abortConnection()
        await self.service.stopService()


# -- the dev relay for an application's tests ------------------------------------------------


@attrs.frozen
class CapturedMessage:
    """One message the relay received: the parsed message plus its envelope and TLS facts.

    ``msg["Subject"]`` reads a header of :attr:`message` (an
    ``email.message.EmailMessage``, ``policy.default``); :attr:`text` and
    :attr:`html` are its bodies.
    """

    id: str
    sender: str  # MAIL FROM ("" for the null sender)
    recipients: tuple[str, ...]  # RCPT TO
    message: Any  # email.message.EmailMessage
    # {"used": bool, "protocol", "cipher", "client_certificate", "lab": the TLS lab's bad-certificate
    #  mode the client went on with (None: none), "client_accepted_bad_certificate": bool}
    tls: Mapping[str, Any]
    raw: bytes  # the Maildir file (the delivery's Return-Path and Delivered-To lines first)
    tags: tuple[str, ...] = ()  # automatic (plus-address, [http] tag_rules) and manual ones
    auth_user: str | None = None  # the SMTP AUTH user name; None: the client did not AUTH

    def __getitem__(self, header: str) -> Any:
        return self.message[header]

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def text(self) -> str | None:
        body = self.message.get_body(("plain",))
        return None if body is None else str(body.get_content())

    @property
    def html(self) -> str | None:
        body = self.message.get_body(("html",))
        return None if body is None else str(body.get_content())

    @property
    def html_problems(self) -> list[dict[str, Any]]:
        """What the major mail clients do not support in the HTML body (caniemail's data):
        one dict per feature with ``feature``, ``title``, ``found``, ``unsupported`` and
        ``partial`` clients; empty without an HTML body."""
        from tlsmta.devrelay import html_problems

        html = self.html
        return [] if html is None else html_problems(html)

    @property
    def links(self) -> list[str]:
        """Every link and image URL in the HTML body, then URLs written in the text body, each once."""
        from tlsmta.devrelay import links_of

        return [link.url for link in links_of(self.html, self.text)]


def _captured(entry: Mapping[str, Any], data: bytes) -> CapturedMessage:
    from tlsmta.devrelay import envelope_of, parse_message

    message = parse_message(data)
    sender, recipients = envelope_of(data)
    return CapturedMessage(entry["id"], sender, tuple(recipients), message, entry["receipt"]["tls"], data,
                           tuple(entry["tags"]), entry["receipt"]["auth_user"])


class _ReactorThread:
    """Twisted's global reactor, run in a daemon thread for test suites that do not run it.

    Started on first use and stopped at the end of the pytest session (the
    plugin's ``pytest_unconfigure``) or by :func:`stop_reactor_thread`; a
    reactor cannot be restarted, so it is shared by every Relay in the process.
    """

    thread: threading.Thread | None = None

    @classmethod
    def reactor(cls) -> IServiceReactor:
        reactor = installed_reactor()

        if cls.thread is not None and not cls.thread.is_alive():
            raise RuntimeError("the reactor thread was stopped; a Twisted reactor cannot start again")
        if cls.thread is None:
            if reactor.running:
                raise RuntimeError(
                    "the Twisted reactor already runs in this process (pytest-twisted?): "
                    "use tlsmta.testing.RunningRelay from Twisted tests instead of Relay"
                )
            started = threading.Event()
            reactor.callWhenRunning(started.set)
            cls.thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, name="tlsmta-reactor", daemon=True
            )
            cls.thread.start()
            if not started.wait(30):
                raise RuntimeError("the Twisted reactor did not start")
        return reactor

    @classmethod
    def stop(cls) -> None:
        reactor = installed_reactor()
        if cls.thread is not None and cls.thread.is_alive():
            reactor.callFromThread(reactor.stop)
            cls.thread.join(30)


def stop_reactor_thread() -> None:
    """Stop the reactor thread Relay started (once, at the very end: it cannot restart)."""
    _ReactorThread.stop()


class Relay:
    """The dev relay in this process, for a synchronous test suite (like aiosmtpd's Controller).

    It listens on a free port of 127.0.0.1, offers STARTTLS with a
    certificate from its dev CA (``ca_pem``: trust it to verify), accepts
    mail for any recipient and keeps every message in a Maildir under
    ``directory``.  The relay's reactor runs in a background thread, so the
    test talks to it with plain blocking code (smtplib, the application)::

        with Relay(tmp_path) as relay:
            send_welcome_mail(smtp_host=relay.host, smtp_port=relay.port)
            msg = relay.wait_for(to="bob@example.org", timeout=5)
            assert "Welcome" in msg["Subject"]

    ``tls_lab``: serve a bad TLS peer (see :mod:`tlsmta.devrelay._tlslab`);
    ``tls=False``: no STARTTLS; ``http=True``: also serve the web page and
    API (``http_port``); ``tag_rules``: automatic tags as ``[http] tag_rules``
    takes them (``"invoice=subject:Invoice"``), for ``wait_for(tag=...)``;
    ``keep_messages``: prune to the newest N (default 0: a test's relay keeps all).
    """

    host = "127.0.0.1"

    def __init__(self, directory: Any, tls: bool = True, tls_lab: str | None = None, http: bool = False,
                 hostname: str = "localhost", tag_rules: Sequence[str] = (), keep_messages: int = 0):
        import os
        import threading

        directory = str(directory)
        self.maildir = os.path.join(directory, "maildir")
        self.state_dir = os.path.join(directory, "state")
        # AUTH in plain text too: an application without TLS may still be configured with a password.
        listener = dev_listener(name="dev", tls="starttls" if tls else "no", require_tls_for_auth=False)
        if tls:
            listener["tls_certificate"] = "auto"
        if tls_lab is not None:
            listener["tls_lab"] = tls_lab
        raw: dict[str, Any] = {
            "global": {"hostname": hostname, "state_dir": self.state_dir, "route": f"maildir:{self.maildir}"},
            "listener": [listener],
            "spool": {"path": os.path.join(self.state_dir, "spool")},
            "control": {"shutdown_grace": 0},
            "dev": {"auth": True},  # AUTH with any credentials: msg.auth_user
        }
        # [http] maildir named: the relay keeps each message's facts of receipt (msg.tls).
        raw["http"] = {"maildir": self.maildir, "tag_rules": list(tag_rules), "keep_messages": keep_messages}
        if http:
            raw["http"]["endpoint"] = "tcp:0:interface=127.0.0.1"
        self.config = build_config(raw, f"<tlsmta.testing.Relay {directory}>")
        self._running: RunningRelay | None = None
        self._mail: Any = None  # the CapturedMail index, made on first read
        self._arrivals = threading.Condition()
        self._arrived = 0

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> Relay:
        """Start listening (blocks until the port is open)."""
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.threads import blockingCallFromThread


        reactor = _ReactorThread.reactor()

        def start() -> Deferred[RunningRelay]:
            self._running = RunningRelay(self.config, reactor)
            return ensureDeferred(self._running.start())

        # Twisted's annotation (a callable returning _R or Deferred[_R]) cannot be solved by mypy.
        blockingCallFromThread(reactor, start)  # type: ignore[arg-type]
        assert self._running is not None
        self._running.service.events.add_sink(self._on_event)
        return self

    def stop(self) -> None:
        """Stop listening and close sessions; the Maildir stays."""
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.threads import blockingCallFromThread


        running, self._running = self._running, None
        if running is None:
            return
        running.service.events.remove_sink(self._on_event)
        # Twisted's annotation (a callable returning _R or Deferred[_R]) cannot be solved by mypy.
        blockingCallFromThread(_ReactorThread.reactor(), lambda: ensureDeferred(running.stop()))  # type: ignore[arg-type]

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _on_event(self, event: str, fields: dict[str, Any]) -> None:
        if (event == "received" and fields.get("code") == 250) or event == "queue_done":  # SMTP, or the queue
            with self._arrivals:
                self._arrived += 1
                self._arrivals.notify_all()

    # -- where it is --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._running is not None, "the relay is not started"
        return self._running.port

    @property
    def http_port(self) -> int | None:
        return self._running.http_port if self._running is not None else None

    @property
    def ca_pem(self) -> str:
        """The dev CA's PEM file: trust it to verify the relay's certificate (name: localhost, 127.0.0.1)."""
        from tlsmta.devrelay import dev_ca_path

        return dev_ca_path(self.state_dir)

    # -- what it received ----------------------------------------------------------------------

    @property
    def messages(self) -> list[CapturedMessage]:
        """Every message received so far, oldest first."""
        from tlsmta.devrelay import MessageNotFound

        mail = self._captured_mail()
        found = []
        for entry in reversed(mail.summaries()):
            try:
                found.append(_captured(entry, mail.raw(entry["id"])[0]))
            except MessageNotFound:
                continue  # cleared meanwhile
        return found

    def _captured_mail(self) -> Any:
        from tlsmta.devrelay import CapturedMail

        if self._mail is None:
            self._mail = CapturedMail(self.maildir, self.config.http["tag_rules"])
        return self._mail

    def wait_for(self, to: str | None = None, sender: str | None = None, subject: str | None = None,
                 timeout: float = 5.0, tag: str | None = None) -> CapturedMessage:
        """The first message matching every given term (envelope recipient ``to``,
        envelope ``sender``, substring of the Subject, one of its ``tags``), waiting up to ``timeout``
        seconds for it to arrive; AssertionError naming what did arrive otherwise."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            with self._arrivals:
                seen = self._arrived
            messages = self.messages
            for message in messages:
                if _matches(message, to, sender, subject) and (tag is None or tag.lower() in message.tags):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = [(m.sender, m.recipients, m.subject) for m in messages] or "nothing"
                tagged = "" if tag is None else f" tag={tag!r}"
                raise AssertionError(
                    f"no message to={to!r} sender={sender!r} subject={subject!r}{tagged} within {timeout}s; "
                    f"received: {got}"
                )
            with self._arrivals:
                self._arrivals.wait_for(lambda: self._arrived != seen, remaining)

    def clear(self) -> None:
        """Delete every captured message."""
        self._captured_mail().clear()

    def fail(self, stage: str, code: int, text: str | None = None, status: str | None = None,
             probability: float = 1.0, times: int | None = None, recipient: str | None = None) -> int:
        """Answer ``stage`` (CONNECT, EHLO, MAIL, RCPT, DATA or END-OF-DATA) with ``code``
        (4xx/5xx), ``status`` (default X.0.0) and ``text`` from now on: with ``probability``,
        the next ``times`` times (None: until :meth:`remove_failure` or :meth:`clear_failures`),
        for recipients matching the glob ``recipient``.  Returns the rule's id::

            relay.fail(stage="RCPT", code=452, times=1)  # the next recipient gets 452 4.0.0
        """
        assert self._running is not None, "the relay is not started"
        chaos = self._running.service.chaos
        assert chaos is not None  # a Relay names [http] maildir: a dev relay
        return chaos.add(stage, code, text, status, probability, times, recipient).id

    def remove_failure(self, rule_id: int) -> None:
        """Stop one failure rule :meth:`fail` made (KeyError when it is gone: used up or removed)."""
        assert self._running is not None and self._running.service.chaos is not None, "the relay is not started"
        if not self._running.service.chaos.remove(rule_id):
            raise KeyError(rule_id)

    def clear_failures(self) -> None:
        """Stop every failure rule: the relay answers normally again."""
        if self._running is not None and self._running.service.chaos is not None:
            self._running.service.chaos.clear()

    def set_tls_lab(self, mode: str | None) -> None:
        """Switch the listener's TLS lab mode (None: the good dev certificate) for new sessions."""
        from twisted.internet.threads import blockingCallFromThread

        assert self._running is not None, "the relay is not started"
        blockingCallFromThread(_ReactorThread.reactor(), self._running.service.switch_tls_lab, "dev", mode)


def _matches(message: CapturedMessage, to: str | None, sender: str | None, subject: str | None) -> bool:
    if to is not None and to.lower() not in (r.lower() for r in message.recipients):
        return False
    if sender is not None and sender.lower() != message.sender.lower():
        return False
    return subject is None or subject in message.subject
