"""Delivery attempts: one job is one message's recipients at one destination.

:class:`Deliverer` takes jobs from the queue and returns per-recipient
results.  Local routes (maildir, discard) are handled here; SMTP routes
(mx, smtp:HOST) go to a :class:`Destination`, which resolves where to
connect, keeps at most ``max_connections`` sessions, and lets each
session carry up to ``max_messages_per_connection`` jobs.  The outbound
TLS policy is applied per session (docs/architecture.md, TLS decisions):

- ``tls = required`` without STARTTLS is 4.7.6, a failed handshake 4.7.5;
- ``ifavailable`` falls back to plain text after a failed handshake (a new
  connection) or a 454 (same connection) when ``tls_ifavailable_fallback``,
  but never after a certificate that failed ``ca``/``host``, another answer
  to STARTTLS, or a handshake that completed; the delivery line's
  ``tls_fallback`` says why plain text was used;
- the certificate verdict comes from :mod:`tlsmta.tls._policy`.

Every job produces one ``delivery`` log event with its TLS facts.
"""

from __future__ import annotations

import datetime
import enum
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsmta.config import DELIVERY_OPTIONS, OutboundTLS, Resolved, Route
from tlsmta.delivery import _broken_tls as broken_tls
from tlsmta.delivery import _decisions as decisions
from tlsmta.delivery._backoff import BackedOff, Backoff, destination_key
from tlsmta.delivery._client import ConnectionBroken, EndpointFactory, OutboundSMTP, Timeouts, connect, tcp_endpoints
from tlsmta.delivery._delivery_log import attempt_summary, recipient_lines, relay_of
from tlsmta.delivery._dkim import DkimSigner
from tlsmta.delivery._leases import ConnectionLeases, LocalLeases, lease_key, wait_closed
from tlsmta.delivery._lmtp import connection_class, lmtp_endpoints, unix_socket_host
from tlsmta.delivery._outbound_options import backoff_policy, timeouts_of
from tlsmta.delivery._tlsrpt_route import take_reports
from tlsmta.discovery import (
    DNSError,
    DNSPermanent,
    ExternalFacts,
    MXHost,
    Resolver,
    STSResolver,
    below_self,
    describe_facts,
    gather_facts,
)
from tlsmta.errors import TlsmtaError
from tlsmta.network import IServiceReactor
from tlsmta.reporting import EventBus, TLSRPTInbox
from tlsmta.smtp import Reply
from tlsmta.smtp.client_session import Greeted, GreetingRefused, HelloRefused, StartTLSRefused
from tlsmta.storage import (
    BOUNCED,
    DELIVERED,
    PENDING,
    DiskIO,
    LocalSink,
    QueuedMessage,
    RecipientState,
    Spool,
    crlf_to_lf,
    finish_blocking,
    queued_receipt_record,
)
from tlsmta.tls import (
    DANE_REQUIRED,
    FALLBACK_NOT_OFFERED,
    POLICY_DANE_REQUIRED,
    RPT_DNSSEC_INVALID,
    RPT_STARTTLS_NOT_SUPPORTED,
    RPT_VALIDATION_FAILURE,
    CertificateCheck,
    ClientTLS,
    DANEStatus,
    HookContext,
    Hooks,
    Outcome,
    Requirement,
    TLSAction,
    TLSFailure,
    Verdict,
    VerifyMode,
    certificate_result_type,
    client_context,
    decide,
    fallback_after_handshake,
    fallback_after_refusal,
    handshake_failed,
    requiretls_refused,
    starttls_decision,
    starttls_refused,
    tls_connection,
    tls_log_fields,
)

log = Logger(namespace="tlsmta.delivery")

CONNECT_TIMEOUT = 30
BODY_CHUNK = 256 * 1024
MAX_TLS_SESSIONS = 10_000


# A body is read in as few disk jobs as it takes: most mail is one chunk, so one job
# opens, reads and closes it (each job is a trip to a disk thread and back).
def _open_and_read(path: str, size: int) -> tuple[int | None, bytes, int]:
    """The first chunk of the ``size``-byte body at the start of the file at ``path``:
    see :func:`_read_on`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_on(fd, size)
    except BaseException:
        os.close(fd)
        raise


def _read_on(fd: int, left: int) -> tuple[int | None, bytes, int]:
    """The next chunk of the ``left`` bytes still to read from ``fd``: the chunk, ``fd`` (None
    once the body is read: then it is closed) and what is left after the chunk."""
    chunk = os.read(fd, min(BODY_CHUNK, left))
    left -= len(chunk)
    if left <= 0 or not chunk:  # the body read (or a file cut short: the server sees the dot early)
        os.close(fd)
        return None, chunk, 0
    return fd, chunk, left


class HookFailure(TlsmtaError):
    """A delivery hook raised or returned something unusable: the job is deferred."""


HOOK_OVERRIDABLE = frozenset({"tls", "tls_verify", "tls_ca", "tls_certificate", "tls_key", "tls_ciphers"})


@attrs.frozen
class DeliveryJob:
    """One message's pending recipients that share a destination."""

    message: QueuedMessage
    recipients: tuple[RecipientState, ...]
    route: Route
    domain: str
    binding: str


@attrs.frozen
class RecipientResult:
    """The outcome of one recipient in one attempt."""

    address: str
    status: str  # DELIVERED, PENDING (deferred) or BOUNCED
    reply: Reply  # what the remote host said, or our own verdict (451 4.7.5 certificate ...)
    remote: str = ""  # the host that answered, if any
    ours: bool = False  # tlsmta's own verdict at ``remote`` (TLS policy, timeout), not its reply
    retry_after: float | None = None  # not before this time (the destination is backed off)


def outcome_of(reply: Reply | int) -> str:
    """2xx delivered, 5xx bounced, anything else deferred."""
    code = reply.code if isinstance(reply, Reply) else reply
    if 200 <= code < 300:
        return DELIVERED
    if 500 <= code < 600:
        return BOUNCED
    return PENDING


def results_for(job: DeliveryJob, reply: Reply, remote: str = "", ours: bool = False) -> list[RecipientResult]:
    """The same outcome for every recipient of the job (``ours``: tlsmta's verdict, not ``remote``'s reply)."""
    return [RecipientResult(r.address, outcome_of(reply), reply, remote, ours) for r in job.recipients]


@attrs.frozen
class TLSOptions:
    """The outbound TLS options of one destination (after hook overrides)."""

    tls: OutboundTLS
    verify: VerifyMode
    ca: str | None
    certificate: str | tuple[str, ...] | None  # a tuple: one chain per key type
    key: str | tuple[str, ...] | None
    fallback: bool
    protocols: frozenset[str]
    ciphers: str | None
    tls13: str | None
    pins: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None  # None: tls.default_groups()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TLSOptions:
        return cls(
            tls=OutboundTLS(options["tls"]),
            verify=VerifyMode(options["tls_verify"]),
            ca=options["tls_ca"],
            certificate=options["tls_certificate"],
            key=options["tls_key"],
            fallback=options["tls_ifavailable_fallback"],
            protocols=options["tls_protocols"],
            ciphers=options["tls_ciphers"],
            tls13=options["tlsv13_ciphersuites"],
            pins=options["tls_pins"],
            groups=options["tls_groups"],
        )

    def describe(self) -> str:
        return f"tls={self.tls} tls_verify={self.verify.value}"

    def without_tls(self) -> TLSOptions:
        """For a unix socket (``lmtp:unix:``): no STARTTLS, nothing to verify or pin."""
        return attrs.evolve(self, tls=OutboundTLS.NO, verify=VerifyMode.NO, pins=())


class _Step(enum.Enum):
    """How a session attempt ended, for the host loop."""

    DONE = "done"  # no more jobs for this destination right now
    RETRY_PLAIN = "retry-plain"  # handshake failed; reconnect to the same host without TLS
    NEXT_HOST = "next-host"  # this host failed; try the next one


@attrs.define
class Attempt:
    """What one connection to one host concluded, for the log and the next step."""

    mx: str
    ip: str
    port: int
    tls: dict[str, Any] = attrs.field(factory=lambda: {"tls": "none"})
    failure: Reply | None = None  # the deferral (or bounce) when the session failed before a transaction
    failure_ours: bool = True  # tlsmta decided ``failure``; False: it is the host's greeting or EHLO reply
    unreachable: bool = False  # no usable connection (connect failed, lost before or during the greeting)
    check: CertificateCheck | None = None  # set once TLS is up and acceptable
    req: Requirement | None = None  # the effective TLS requirement for this MX
    facts: ExternalFacts = attrs.field(factory=ExternalFacts)
    # TLS-RPT: (success, RFC 8460 result type, reason); None when no TLS result to report.
    rpt: tuple[bool, str | None, str] | None = None
    message_id: str | None = None  # the first message this connection carries (the verify hook's ctx)
    tls_fallback: str | None = None  # after a failed handshake: why the next connection may use plain text
    connection: OutboundSMTP | None = None  # once connected; under a fleet cap the next one waits for its close


@attrs.frozen
class MessageTLS:
    """What a message itself asks of TLS (RFC 8689): REQUIRETLS, or TLS-Required: No."""

    requiretls: bool = False
    tls_required_no: bool = False

    @classmethod
    def of(cls, message: QueuedMessage) -> MessageTLS:
        return cls(message.requiretls, message.tls_required_no)


class Destination:
    """Sessions to one (route, domain, binding, TLS options)."""

    def __init__(
        self, pool: OutboundPool, route: Route, domain: str, binding: str, options: Mapping[str, Any], tls_options: TLSOptions,
        message_tls: MessageTLS = MessageTLS(),
    ):
        self.pool = pool
        self.message_tls = message_tls
        self.route = route
        self.domain = domain
        self.binding = binding
        self.options = options
        self.tls_options = tls_options
        self.jobs: deque[tuple[DeliveryJob, Deferred[list[RecipientResult]]]] = deque()
        # Sessions with nothing to send, each waiting (connection_cache_time) for the next job.
        self._idle: deque[Deferred[tuple[DeliveryJob, Deferred[list[RecipientResult]]] | None]] = deque()
        self.sessions = 0
        self.key: Any = None  # the pool's key for this destination
        self.backoff_key = destination_key(route, domain)
        self.lease_key = lease_key(binding, route, domain)  # cluster_max_connections, cluster_message_rate

    def submit(self, job: DeliveryJob) -> Deferred[list[RecipientResult]]:
        d: Deferred[list[RecipientResult]] = Deferred()
        if self._idle:  # an open connection waits for it
            self._idle.popleft().callback((job, d))
            return d
        self.jobs.append((job, d))
        self.pool.wake(self)
        return d

    async def _next_job_on(self, proto: OutboundSMTP) -> tuple[DeliveryJob, Deferred[list[RecipientResult]]] | None:
        """Nothing queued: the connection stays open up to connection_cache_time for the next job
        submitted here, unless another destination waits for a connection slot; None: QUIT now."""
        wait = self.options["connection_cache_time"]
        if wait is None or self.pool.slot_wanted():
            return None
        idle: Deferred[tuple[DeliveryJob, Deferred[list[RecipientResult]]] | None] = Deferred()

        def give_up() -> None:
            if not idle.called:
                idle.callback(None)

        def gone(result: Failure | None) -> Failure | None:  # the server (or a shutdown) closed it
            give_up()
            return result

        self._idle.append(idle)
        self.pool.idle.add(self)
        timer = self.pool.reactor.callLater(wait, give_up)
        proto.closed.addBoth(gone)
        try:
            return await idle
        finally:
            if timer.active():
                timer.cancel()
            if idle in self._idle:
                self._idle.remove(idle)
            if not self._idle:
                self.pool.idle.discard(self)

    def release_idle(self) -> None:
        """Every session waiting for a job here QUITs now."""
        while self._idle:
            self._idle.popleft().callback(None)

    def wants_session(self) -> bool:
        """Another session pays off when jobs outnumber what the open ones will soon take
        (each starts with a connection and a handshake, and may find the queue drained)."""
        if not self.jobs or self.sessions >= self.options["max_connections"]:
            return False
        return self.sessions == 0 or len(self.jobs) > 2 * self.sessions

    def take(self) -> tuple[DeliveryJob, Deferred[list[RecipientResult]]] | None:
        return self.jobs.popleft() if self.jobs else None

    # -- one session task: find a host, deliver as many jobs as allowed -----------------

    async def run_session(self) -> None:
        try:
            # cluster_max_connections: wait for a fleet-wide slot (delivery._leases)
            lease = await self.pool.leases.acquire(self.lease_key, self.options["cluster_max_connections"])
            try:
                if self.jobs:  # other sessions may have taken them all during the wait
                    await self._run_session()
            finally:
                lease.release()
        except Exception:
            log.failure("delivery session failed")
            self._fail_queued(Reply.of(451, "4.3.0", "internal error during delivery"))

    async def _run_session(self) -> None:
        try:
            hosts = await self._hosts()
        except DNSError as e:
            status = e.status or ("5.1.2" if e.permanent else "4.4.3")
            code = 556 if status == "5.1.10" else (550 if e.permanent else 451)
            self._fail_queued(Reply.of(code, status, str(e)))
            return
        facts = await gather_facts(
            self.pool.resolver, self.pool.sts, self.domain, self.route.kind,
            [(mx, port) for mx, _, port in hosts], self.options["mta_sts"], self.options["dane"],
            need_mx_status=self.message_tls.requiretls,
        )
        self.pool.report_discovery(self, facts)
        last: Attempt | None = None
        for mx, ip, port in hosts:
            req = self.requirement(mx, facts)
            fallback: str | None = None  # set once a handshake here failed and plain text is allowed
            broken_key, remember_for = broken_tls.broken_tls_key(mx, port), self.options["tls_remember_broken"]
            if broken_tls.remembered(self.pool.broken_tls, broken_key, req, remember_for, self.pool.reactor.seconds()):
                fallback = broken_tls.REMEMBERED_BROKEN  # a handshake here failed recently: straight to plain text
            while self.jobs:
                attempt = Attempt(mx, ip, port, req=req, facts=facts)
                attempt.tls = {"tls": "none", **self._policy_fields(attempt)}
                if req.unusable is not None:
                    # Not this MX (MTA-STS does not list it, its TLSA lookup failed, ...): the next one.
                    attempt.failure = req.unusable.reply
                    attempt.rpt = self._unusable_rpt(attempt)
                    self.pool.report_attempt(self, attempt)
                    last = attempt
                    break
                step = await self._one_connection(attempt, fallback)
                await self._closed_under_cap(attempt)
                self.pool.report_attempt(self, attempt)
                last = attempt
                if step is _Step.RETRY_PLAIN and fallback is None:
                    # set with RETRY_PLAIN, after a failed handshake: the retry is plain, once
                    assert attempt.tls_fallback is not None and attempt.rpt is not None
                    broken_tls.remember(self.pool.broken_tls, broken_key, attempt.rpt[2], remember_for, self.pool.reactor.seconds())
                    fallback = attempt.tls_fallback
                    continue
                if step is _Step.DONE:
                    if not self.jobs:
                        return
                    continue  # max messages reached: a new connection to the same host
                break  # NEXT_HOST
            if not self.jobs:
                return
        failure = last.failure if last and last.failure else Reply.of(451, "4.4.1", "no usable mail host")
        if last is not None and last.unreachable and failure.code < 500:
            self.pool.backoff.failed(self.backoff_key, self.pool.reactor.seconds(), backoff_policy(self.options), failure.text)
        self._fail_queued(failure, last)

    async def _closed_under_cap(self, attempt: Attempt) -> None:
        """Under a fleet cap, the next connection (or the lease's release) waits until this one is
        gone (QUIT answered, or aborted): the receiver never counts one more than the cap."""
        if attempt.connection is not None and self.options["cluster_max_connections"] is not None:
            await wait_closed(self.pool.reactor, attempt.connection)

    def requirement(self, mx: str, facts: ExternalFacts) -> Requirement:
        """The strictest of the local options and what MTA-STS, DANE and the message ask, for ``mx``."""
        opts = self.tls_options
        local = self.route.over_unix_socket  # a local socket: no TLS hop for REQUIRETLS or DANE to judge
        return decisions.requirement(
            self.route.tls_for(opts.tls), opts.verify, opts.fallback, facts, mx,
            requiretls=self.message_tls.requiretls and not local, tls_required_no=self.message_tls.tls_required_no,
            dane=False if local else self.options["dane"], pins=opts.pins,
        )

    def _policy_fields(self, attempt: Attempt) -> dict[str, Any]:
        """Log fields naming the policy applied and the MTA-STS/DANE state."""
        assert attempt.req is not None
        fields = {"tls_policy": attempt.req.policy, **describe_facts(attempt.facts, attempt.mx)}
        if attempt.req.requiretls:
            fields["requiretls"] = "yes"
        if attempt.req.ignored:
            fields["tls_required_no"] = "ignored " + ",".join(attempt.req.ignored)
        return fields

    def _unusable_rpt(self, attempt: Attempt) -> tuple[bool, str | None, str] | None:
        assert attempt.req is not None and attempt.req.unusable is not None
        if attempt.facts.dane_for(attempt.mx).status is DANEStatus.FAILED:
            return False, RPT_DNSSEC_INVALID, attempt.facts.dane_for(attempt.mx).reason
        if attempt.req.policy == POLICY_DANE_REQUIRED:
            return False, DANE_REQUIRED, attempt.req.unusable.reason
        sts = attempt.facts.sts_state(attempt.mx)
        if sts is not None and not sts.mx_matches:
            return False, RPT_VALIDATION_FAILURE, attempt.req.unusable.reason
        return None

    def _tls_failure(self, attempt: Attempt, failure: TLSFailure, result_type: str | None) -> None:
        """Record a TLS failure under the attempt's requirement (REQUIRETLS: 5.7.10, a bounce)."""
        assert attempt.req is not None
        failure = attempt.req.failure(failure.status, failure.reason)
        attempt.failure = failure.reply
        if result_type is not None:
            attempt.rpt = (False, result_type, failure.reason)

    async def _hosts(self) -> list[tuple[str, str, int]]:
        """(name, address, port) to try, in order.

        RFC 5321 5.1: if one of the domain's MX hosts is this MTA, every MX whose
        preference is not better than ours is dropped, not only our own address
        (two backup MXes would otherwise hand a message back and forth)."""
        resolver = self.pool.resolver
        if self.route.over_unix_socket:
            return [unix_socket_host(self.route)]
        if self.route.kind in ("smtp", "lmtp"):
            assert self.route.host is not None
            mxs = [MXHost(0, self.route.host)]
            port = self.route.port_for(self.options["smtp_port"])
        else:
            mxs = await resolver.mx(self.domain)
            port = self.options["smtp_port"]
        found: dict[str, list[str] | DNSError] = {}
        for mx in mxs:
            if mx.host not in found:
                try:
                    found[mx.host] = await resolver.addresses(mx.host)
                except DNSError as e:
                    found[mx.host] = e

        def ours(mx: MXHost) -> bool:
            addresses = found[mx.host]
            return not isinstance(addresses, DNSError) and any(self.pool.is_self(ip, port) for ip in addresses)

        if self.route.kind == "mx":
            mxs = below_self(mxs, ours)
            if not mxs:
                raise DNSPermanent(f"mail for {self.domain} loops back to myself", status="5.4.6")
        out = []
        last_error: DNSError | None = None
        for mx in mxs:
            addresses = found[mx.host]
            if isinstance(addresses, DNSError):
                last_error = addresses
                continue
            out += [(mx.host, ip, port) for ip in decisions.addresses_to_try(addresses)]
        if not out:
            if last_error is not None and not last_error.permanent:
                raise last_error
            raise DNSPermanent(f"no address for any mail host of {self.domain}")
        others = [host for host in out if not self.pool.is_self(host[1], host[2])]
        if not others:
            raise DNSPermanent(f"mail for {self.domain} loops back to myself", status="5.4.6")
        return others

    def _fail_queued(self, reply: Reply, attempt: Attempt | None = None) -> None:
        while self.jobs:
            job, d = self.jobs.popleft()
            ours = attempt.failure_ours if attempt is not None and reply is attempt.failure else True
            results = results_for(job, reply, attempt.mx if attempt else "", ours)
            self.pool.log_job(job, self, attempt, results)
            d.callback(results)

    async def _one_connection(self, attempt: Attempt, fallback: str | None) -> _Step:
        # The first job is claimed before connecting, so that a session never pays for a
        # connection and a handshake only to find that the other sessions took every job.
        first = self.take()
        if first is None:
            return _Step.DONE
        attempt.message_id = first[0].message.id
        try:
            proto = await self.pool.connect(attempt.ip, attempt.port, self._ehlo_name(), self.options["source_address"],
                                            self.options["connect_timeout"], timeouts_of(self.options),
                                            connection_class(self.route))
        except Exception as e:
            self.jobs.appendleft(first)
            attempt.failure = Reply.of(451, "4.4.1", f"connect to {attempt.mx}[{attempt.ip}]:{attempt.port}: {_connect_error(e)}")
            attempt.unreachable = True
            return _Step.NEXT_HOST
        attempt.connection = proto
        try:
            step, caps = await self._greet(proto, attempt, fallback)
            if step is not None:
                self.jobs.appendleft(first)
                proto.abort()
                return step
        except ConnectionBroken as e:
            self.jobs.appendleft(first)
            attempt.failure = attempt.failure or Reply.of(451, "4.4.2", f"{attempt.mx}[{attempt.ip}]: {e.reason}")
            attempt.unreachable = not proto.tls_started
            proto.abort()
            return _Step.NEXT_HOST
        except Exception:
            self.jobs.appendleft(first)  # run_session defers it with the others
            proto.abort()
            raise
        self.pool.backoff.succeeded(self.backoff_key)
        try:
            await self._transactions(proto, attempt, caps, first)
            self.pool.remember_tls_session(self, attempt, proto)
            proto.quit()
            return _Step.DONE
        except ConnectionBroken as e:
            attempt.failure = attempt.failure or Reply.of(451, "4.4.2", f"{attempt.mx}[{attempt.ip}]: {e.reason}")
            proto.abort()
            return _Step.NEXT_HOST
        except Exception:
            proto.abort()
            raise

    def _ehlo_name(self) -> str:
        return self.options["ehlo_hostname"] or self.pool.hostname

    async def _greet(self, proto: OutboundSMTP, attempt: Attempt, fallback: str | None) -> tuple[_Step | None, dict[str, str]]:
        """Banner, EHLO and STARTTLS per policy; (a step to take instead, capabilities)."""
        if self.route.implicit_tls:
            return await self._secure(proto, attempt, {}, proto.implicit_tls)
        greeting = await proto.greeting()
        if not isinstance(greeting, Greeted):
            attempt.failure, attempt.failure_ours = decisions.greeting_failure(greeting, attempt.mx), False
            return _Step.NEXT_HOST, {}
        caps = dict(greeting.capabilities)
        req = attempt.req
        assert req is not None
        # fallback: the handshake failed on this host a moment ago and plain text is allowed.
        decision = starttls_decision(req.tls, "STARTTLS" in caps and fallback is None)
        if isinstance(decision, TLSFailure):
            self._tls_failure(attempt, decision, RPT_STARTTLS_NOT_SUPPORTED)
            return _Step.NEXT_HOST, {}
        if decision is TLSAction.PLAIN:
            if req.tls is not OutboundTLS.NO:
                self._plain_text(attempt, fallback or FALLBACK_NOT_OFFERED)
                if fallback is None:
                    attempt.rpt = (False, RPT_STARTTLS_NOT_SUPPORTED, "STARTTLS not advertised")
            return None, caps
        return await self._secure(proto, attempt, caps, proto.starttls)

    async def _secure(self, proto: OutboundSMTP, attempt: Attempt, caps: dict[str, str],
                      start: Callable[[ClientTLS], Deferred[Any]]) -> tuple[_Step | None, dict[str, str]]:
        """The handshake by ``start`` (STARTTLS, or implicit TLS before the greeting) and the EHLO
        inside TLS, judged by the same policy; ``caps``: what plain-text EHLO offered."""
        req = attempt.req
        assert req is not None
        check = self.pool.certificate_check(self, attempt)
        resumable = self.pool.tls_session(self, attempt, check)
        creator = self.pool.client_tls(self.tls_options, attempt.mx, check, resumable[0] if resumable else None,
                                       self.pool.key_share(attempt.ip, attempt.port))
        try:
            # The handshake happens before the EHLO inside TLS is answered: a stalled one times out there.
            secured = await start(creator)
        except ConnectionBroken as e:
            if not proto.tls_started:
                raise  # lost before the 220: not a handshake failure
            verdict = check.verdict() if check.seen_certificate else None
            outcome = handshake_failed(req.tls, req.fallback, verdict, e.reason, completed=proto.tls_facts is not None)
            attempt.tls = self._tls_fields(proto, check, attempt)
            rpt_type = (
                certificate_result_type(verdict, check.errors) if verdict is not None and verdict.fatal
                else RPT_VALIDATION_FAILURE
            )
            if isinstance(outcome, TLSFailure):
                self._tls_failure(attempt, outcome, rpt_type)
                return _Step.NEXT_HOST, {}
            attempt.rpt = (False, rpt_type, e.reason)
            attempt.tls_fallback = fallback_after_handshake(e.reason)
            return _Step.RETRY_PLAIN, {}
        if isinstance(secured, StartTLSRefused):
            refused = starttls_refused(req.tls, req.fallback, secured.reply)
            if isinstance(refused, TLSFailure):
                self._tls_failure(attempt, refused, RPT_STARTTLS_NOT_SUPPORTED)
                return _Step.NEXT_HOST, {}
            attempt.rpt = (False, RPT_STARTTLS_NOT_SUPPORTED, f"STARTTLS refused: {secured.reply}")
            self._plain_text(attempt, fallback_after_refusal(secured.reply))
            return None, caps  # carry on in plain text on this connection
        if not isinstance(secured, Greeted):
            assert isinstance(secured, (HelloRefused, GreetingRefused))  # GreetingRefused: implicit TLS only
            attempt.failure, attempt.failure_ours = decisions.greeting_failure(secured, attempt.mx), False
            return _Step.NEXT_HOST, {}
        caps = dict(secured.capabilities)
        if proto.tls_facts is not None:
            self.pool.remember_key_share(attempt.ip, attempt.port, proto.tls_facts.group)
        if resumable is not None and proto.tls_facts is not None and proto.tls_facts.resumed:
            # OpenSSL resumed the one session we offered: the peer proved it holds
            # that session's secret, so the full handshake's verdict carries over.
            # (Merely seeing no certificate proves nothing: anonymous suites show none.)
            check.resumed_verdict = resumable[1]
        elif req.dane:
            check.external_verdict = self._dane_verdict(proto, attempt)
        elif req.pinned:
            chain = tls_connection(proto.transport).get_peer_cert_chain(as_cryptography=True) or []
            check.external_verdict = decisions.pinned_verdict(req.pins, chain)
        attempt.tls = self._tls_fields(proto, check, attempt)
        verdict = check.verdict()
        failure = decisions.certificate_failure(verdict)
        if failure is not None:
            self._tls_failure(attempt, failure, certificate_result_type(verdict, check.errors))
            return _Step.NEXT_HOST, {}
        attempt.rpt = self._success_rpt(check, attempt)
        if req.report_verify:
            ok, _, why = attempt.rpt
            attempt.tls["mta_sts_testing"] = "pass" if ok else f"fail: {why}"
        requiretls_refusal = requiretls_refused(req, "REQUIRETLS" in caps)
        if requiretls_refusal is not None:
            attempt.failure = requiretls_refusal.reply
            return _Step.NEXT_HOST, {}
        attempt.check = check
        return None, caps

    @staticmethod
    def _plain_text(attempt: Attempt, why: str) -> None:
        """This session wanted TLS and goes on without it: the delivery line says why."""
        attempt.tls = {**attempt.tls, "tls_fallback": why}

    def _dane_verdict(self, proto: OutboundSMTP, attempt: Attempt) -> Verdict:
        """RFC 7672: the presented chain against the MX host's usable TLSA records."""
        chain = tls_connection(proto.transport).get_peer_cert_chain(as_cryptography=True) or []
        now = datetime.datetime.fromtimestamp(self.pool.reactor.seconds(), datetime.timezone.utc)
        verdict = decisions.dane_verdict(attempt.facts, attempt.mx, chain, now)
        assert verdict is not None  # req.dane: the MX has usable TLSA records
        return verdict

    def _success_rpt(self, check: CertificateCheck, attempt: Attempt) -> tuple[bool, str | None, str]:
        """TLS is up and acceptable; under MTA-STS testing, whether enforce would have passed."""
        assert attempt.req is not None
        if not attempt.req.report_verify:
            return True, None, ""
        sts = attempt.facts.sts_state(attempt.mx)
        if sts is not None and not sts.mx_matches:
            return False, RPT_VALIDATION_FAILURE, "MX host not listed in the MTA-STS policy"
        shadow = decide(VerifyMode.HOST, check.chain_result(), check.presented, (attempt.mx,))
        if check.resumed_verdict is None and not shadow.verified:
            return False, certificate_result_type(shadow, check.errors), shadow.reason
        return True, None, ""

    def _tls_fields(self, proto: OutboundSMTP, check: CertificateCheck, attempt: Attempt) -> dict[str, Any]:
        facts = proto.tls_facts
        verdict = check.verdict()
        req = attempt.req
        assert req is not None
        mode = "dane" if req.dane else "pins" if req.pinned else req.verify.value
        fields = tls_log_fields(facts, mode, verdict.outcome.word, verdict.reason,
                                check.presented_certificate)
        fields["resumed"] = "yes" if check.resumed_verdict is not None else "no"
        if self.route.implicit_tls:
            fields["tls_mode"] = "implicit"
        if verdict.outcome is Outcome.SOFTFAIL:
            fields["softfail"] = verdict.reason
        fields.update(self._policy_fields(attempt))
        return fields

    async def _transactions(
        self, proto: OutboundSMTP, attempt: Attempt, caps: dict[str, str], first: tuple[DeliveryJob, Deferred[list[RecipientResult]]]
    ) -> None:
        sent = 0
        item: tuple[DeliveryJob, Deferred[list[RecipientResult]]] | None = first
        while sent < self.options["max_messages_per_connection"]:
            if proto.session.ended:
                return  # QUIT went with the last message (a job that came meanwhile waits for another session)
            if item is None:
                item = self.take() or await self._next_job_on(proto)
            if item is None:
                return
            job, d = item
            item = None
            try:
                await self.pool.leases.pace(self.lease_key, self.options["cluster_message_rate"])
                results = await self.pool.transaction(proto, job, caps, attempt, self._last_on_connection(sent))
            except ConnectionBroken as e:
                results = results_for(job, Reply.of(451, "4.4.2", f"{attempt.mx}[{attempt.ip}]: {e.reason}"), attempt.mx, True)
                self.pool.log_job(job, self, attempt, results)
                d.callback(results)
                raise
            except Exception:
                # A bug or a reply nobody foresaw: this job is settled (deferred) here, since the
                # session's error handler only sees the jobs still queued; it must not stay in flight.
                results = results_for(job, Reply.of(451, "4.3.0", "internal error during delivery"), attempt.mx, True)
                self.pool.log_job(job, self, attempt, results)
                d.callback(results)
                raise
            self.pool.log_job(job, self, attempt, results)
            d.callback(results)
            sent += 1

    def _last_on_connection(self, sent: int) -> Callable[[], bool]:
        """Whether the message after ``sent`` others is the connection's last, asked as its body
        ends: the limit is reached, or no job waits and the connection is not kept for one."""
        def last() -> bool:
            if sent + 1 >= self.options["max_messages_per_connection"]:
                return True
            return not self.jobs and self.options["connection_cache_time"] is None

        return last


def _connect_error(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


class OutboundPool:
    """All SMTP destinations; global connection limit; TLS contexts and sessions cached."""

    def __init__(
        self,
        reactor: IServiceReactor,
        resolver: Resolver,
        spool: Spool,
        disk: DiskIO,
        hostname: str,
        hooks: Hooks,
        max_connections: int,
        events: EventBus | None = None,
        endpoints: EndpointFactory | None = None,
    ):
        self.events = events if events is not None else EventBus()
        self.reactor = reactor
        self.endpoints = endpoints or tcp_endpoints(reactor)
        self.resolver = resolver
        self.spool = spool
        self.disk = disk
        self.hostname = hostname
        self.hooks = hooks
        self.max_connections = max_connections
        self.active = 0
        self.destinations: dict[Any, Destination] = {}
        self._contexts: dict[Any, Any] = {}
        self._tls_sessions: dict[tuple[Any, ...], tuple[Any, Verdict]] = {}
        self._key_shares: dict[tuple[str, int], str] = {}
        self.connections: set[OutboundSMTP] = set()
        # Whether (ip, port) is one of our own listeners: the service sets it.
        self.is_self: Callable[[str, int], bool] = lambda ip, port: False
        self._waiting: deque[Destination] = deque()
        self.idle: set[Destination] = set()  # destinations with a connection waiting for a job
        self.backoff = Backoff()  # destinations that keep failing wait (destination_backoff_*)
        self.broken_tls: broken_tls.BrokenTLSStore = broken_tls.MemoryBrokenTLS()  # tls_remember_broken
        self.leases: ConnectionLeases = LocalLeases(reactor)  # cluster_* limits; a fleet's are in Redis
        self.sts: STSResolver | None = None  # MTA-STS discovery; the service sets it
        self.dkim: DkimSigner | None = None  # [dkim] keys; the service sets it, and again on reload
        self.tlsrpt: Any = None  # a tlsrpt.TLSRPTStore recording each attempt's TLS result

    # -- jobs ---------------------------------------------------------------------------

    def submit(self, job: DeliveryJob, options: Mapping[str, Resolved]) -> Deferred[list[RecipientResult]]:
        values = {name: item.value for name, item in options.items()}
        try:
            values = self._apply_parameter_hook(job, values)
        except HookFailure as e:
            # Never guess weaker settings for a message whose hook failed: defer it.
            results = results_for(job, Reply.of(451, "4.3.0", str(e)), ours=True)
            self.log_job(job, None, None, results)
            return succeed(results)
        backed_off = self.backoff.waiting(destination_key(job.route, job.domain), self.reactor.seconds())
        if backed_off is not None:
            results = self._backed_off(job, backed_off)
            self.log_job(job, None, None, results)
            return succeed(results)
        tls_options = TLSOptions.from_options(values)
        if job.route.over_unix_socket:
            tls_options = tls_options.without_tls()
        # A REQUIRETLS message never shares a session with mail that may use weaker TLS.
        message_tls = MessageTLS.of(job.message)
        key = (job.route, job.domain, job.binding, tls_options, message_tls)
        dest = self.destinations.get(key)
        if dest is None:
            dest = self.destinations[key] = Destination(self, job.route, job.domain, job.binding, values, tls_options, message_tls)
            dest.key = key
        return dest.submit(job)

    def _backed_off(self, job: DeliveryJob, backed_off: BackedOff) -> list[RecipientResult]:
        """Deferred without a connection: the destination failed too often just now."""
        when = datetime.datetime.fromtimestamp(backed_off.until, datetime.timezone.utc).strftime("%H:%M:%S UTC")
        where = job.route.host if job.route.kind == "smtp" else str(job.route) if job.route.kind == "lmtp" else job.domain
        reply = Reply.of(451, "4.4.1", f"{where} backed off until {when} after {backed_off.failures} failed "
                                       f"connections; last: {backed_off.reason}")
        return [attrs.evolve(result, retry_after=backed_off.until) for result in results_for(job, reply, ours=True)]

    def _apply_parameter_hook(self, job: DeliveryJob, values: dict[str, Any]) -> dict[str, Any]:
        """Per-message overrides from outbound_tls_parameters, checked like config values."""
        hook = self.hooks.outbound_tls_parameters
        if hook is None:
            return values
        try:
            overrides = hook(job.message, job.domain, job.binding)
        except Exception as e:
            log.failure("outbound_tls_parameters hook raised")
            raise HookFailure(f"outbound_tls_parameters hook failed: {type(e).__name__}") from None
        if overrides is None:
            return values
        if not isinstance(overrides, Mapping):
            raise HookFailure("outbound_tls_parameters hook returned something other than a dict")
        for name, value in overrides.items():
            if name not in HOOK_OVERRIDABLE:
                raise HookFailure(f"outbound_tls_parameters hook returned unknown option {name!r}")
            try:
                values[name] = DELIVERY_OPTIONS[name].check(value)
            except ValueError as e:
                raise HookFailure(f"outbound_tls_parameters hook returned a bad {name}: {e}") from None
        return values

    def wake(self, dest: Destination) -> None:
        while dest.wants_session():
            if self.active >= self.max_connections:
                if dest not in self._waiting:
                    self._waiting.append(dest)
                self.release_idle()  # a connection kept open for nothing gives its slot up
                return
            self._start(dest)

    def slot_wanted(self) -> bool:
        """Whether a destination waits for a connection slot (max_connections in all)."""
        return bool(self._waiting)

    def release_idle(self) -> None:
        """Connections kept open for more mail QUIT now (a slot is wanted, or shutdown)."""
        for dest in list(self.idle):
            dest.release_idle()

    def _start(self, dest: Destination) -> None:
        self.active += 1
        dest.sessions += 1

        def finished(_: Any) -> None:
            self.active -= 1
            dest.sessions -= 1
            self.wake(dest)
            if not dest.jobs and not dest.sessions:
                self.destinations.pop(dest.key, None)  # forget idle destinations (bounded memory)
            while self._waiting and self.active < self.max_connections:
                self.wake(self._waiting.popleft())

        ensureDeferred(dest.run_session()).addBoth(finished)

    # -- connections ----------------------------------------------------------------------

    async def connect(self, ip: str, port: int, ehlo_name: str, source: str | None, timeout: float = CONNECT_TIMEOUT,
                      timeouts: Timeouts = Timeouts(), protocol: type[OutboundSMTP] = OutboundSMTP) -> OutboundSMTP:
        endpoints = lmtp_endpoints(self.reactor, self.endpoints) if protocol.lmtp else self.endpoints
        proto = await connect(self.reactor, endpoints, ip, port, ehlo_name, source, timeout, timeouts, protocol)
        self.connections.add(proto)
        proto.closed.addBoth(lambda _: self.connections.discard(proto))
        return proto

    def abort_all(self) -> None:
        """Cut every outbound connection (shutdown after the grace period)."""
        for proto in list(self.connections):
            proto.abort()

    def reconfigure(self, hooks: Hooks, max_connections: int) -> None:
        """After a reload: new hooks and limits; contexts and TLS sessions are rebuilt on demand
        (CA files and client certificates may have changed)."""
        self.hooks = hooks
        self.max_connections = max_connections
        self._contexts.clear()
        self._tls_sessions.clear()

    def certificate_check(self, dest: Destination, attempt: Attempt) -> CertificateCheck:
        req = attempt.req
        assert req is not None
        # Under DANE the TLSA records decide, after the handshake: no CA check, no hook.
        hook = self.hooks.outbound_tls_verify_callback if req.verify is not VerifyMode.NO and not req.dane else None
        return CertificateCheck(
            req.verify,
            wanted=req.wanted(dest.domain, attempt.mx),
            hook=hook,
            hook_context=HookContext("outbound", dest.domain, attempt.mx, dest.binding, attempt.message_id, attempt.ip),
            enforce_in_handshake=True,
            record=req.dane or req.pinned or req.report_verify,
        )

    def client_tls(self, opts: TLSOptions, server_name: str, check: CertificateCheck, session: Any = None,
                   key_share: str | None = None) -> ClientTLS:
        key = (opts.protocols, opts.ciphers, opts.tls13, opts.ca, opts.certificate, opts.key, opts.groups)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = client_context(
                opts.protocols, opts.ciphers, opts.tls13, opts.ca, opts.certificate, opts.key, groups=opts.groups
            )
        return ClientTLS(ctx, server_name, check, session, opts.groups, key_share)

    # The key-exchange group each server chose last, so that the next ClientHello carries
    # a key share for it alone (tls.predicted_key_share).  Not a verdict of anything: the
    # groups offered are the same, and a server that wants another asks for it.

    def key_share(self, ip: str, port: int) -> str | None:
        return self._key_shares.get((ip, port))

    def remember_key_share(self, ip: str, port: int, group: str | None) -> None:
        if group is None:
            return
        if len(self._key_shares) >= MAX_TLS_SESSIONS and (ip, port) not in self._key_shares:
            self._key_shares.pop(next(iter(self._key_shares)))
        self._key_shares[(ip, port)] = group

    # TLS session resumption: a session is reused only for the same address, names
    # and TLS options (so under the same verification policy), and never when a
    # verify hook is configured (a resumed handshake would not show it a certificate).

    def _session_key(self, dest: Destination, attempt: Attempt) -> tuple[Any, ...]:
        # Keyed by the requirement and TLSA records too: a resumed session carries the
        # verdict of a full handshake judged under exactly the same policy.
        return (attempt.ip, attempt.port, attempt.mx, dest.domain, dest.tls_options, attempt.req,
                attempt.facts.dane_for(attempt.mx).records)

    def tls_session(self, dest: Destination, attempt: Attempt, check: CertificateCheck) -> tuple[Any, Verdict] | None:
        if check.hook is not None:
            return None
        return self._tls_sessions.get(self._session_key(dest, attempt))

    def remember_tls_session(self, dest: Destination, attempt: Attempt, proto: OutboundSMTP) -> None:
        check = attempt.check
        if check is None or check.hook is not None or proto.tls_facts is None:
            return
        try:
            session = tls_connection(proto.transport).get_session()
        except TypeError:  # the TLS layer is gone (the server closed a connection waiting for mail)
            return
        if session is None:
            return
        if len(self._tls_sessions) >= MAX_TLS_SESSIONS:
            self._tls_sessions.pop(next(iter(self._tls_sessions)))
        self._tls_sessions[self._session_key(dest, attempt)] = (session, check.verdict())

    # -- one transaction ------------------------------------------------------------------

    async def transaction(self, proto: OutboundSMTP, job: DeliveryJob, caps: dict[str, str], attempt: Attempt,
                          last: Callable[[], bool]) -> list[RecipientResult]:
        message = job.message
        remote = attempt.mx
        refusal = decisions.envelope_refusal(caps, message.size, message.smtputf8, remote)
        if refusal is not None:
            return results_for(job, refusal, remote, ours=True)
        requiretls = attempt.req is not None and attempt.req.requiretls
        params = decisions.mail_parameters(caps, message.size, message.body_type, message.smtputf8, requiretls)
        done = await proto.transaction(
            message.sender, params, [r.address for r in job.recipients], lambda: self._body_chunks(message), last
        )
        if not done.mail.positive:
            return results_for(job, done.mail, remote)
        # An accepted recipient has the message's final answer (its own under LMTP); a refused one its RCPT answer.
        return [RecipientResult(recipient.address, outcome_of(answer), answer, remote)
                for recipient, answer in zip(job.recipients, done.final_replies())]

    async def _body_chunks(self, message: QueuedMessage) -> AsyncIterator[bytes]:
        fresh = self.spool.take_fresh_body(message)  # received a moment ago: no disk job to read it back
        if self.dkim:  # signed as it leaves, after every header change (delivery._dkim)
            signature = await self.disk.run(self._dkim_signature, message, fresh)
            if signature:
                yield signature
        if fresh is not None:
            yield fresh
            return
        fd, chunk, left = await self.disk.run(_open_and_read, self.spool.body_path(message), message.size)
        try:
            while True:
                if chunk:
                    yield chunk
                if fd is None:
                    return
                fd, chunk, left = await self.disk.run(_read_on, fd, left)
        finally:
            if fd is not None:
                self.disk.run(os.close, fd)

    def _dkim_signature(self, message: QueuedMessage, body: bytes | None = None) -> bytes:
        """In a disk thread: the body (read whole unless given), signed."""
        assert self.dkim is not None
        return self.dkim.signature(self.spool.read_body_blocking(message) if body is None else body)

    # -- TLS-RPT ----------------------------------------------------------------------------

    def report_discovery(self, dest: Destination, facts: ExternalFacts) -> None:
        """An MTA-STS policy that could not be had is a failure in the domain's report."""
        if self.tlsrpt is None or facts.sts is None or facts.sts.failure is None:
            return
        policy_doc = facts.sts.policy
        self._record(
            dest.domain, "sts", policy_doc.strings if policy_doc else [], None, False,
            facts.sts.failure.result_type, None, None, str(facts.sts.failure),
        )

    def report_attempt(self, dest: Destination, attempt: Attempt) -> None:
        """One session's TLS result, under the policy that applied (RFC 8460 4.4)."""
        if self.tlsrpt is None or attempt.rpt is None or attempt.req is None:
            return
        success, result_type, reason = attempt.rpt
        tlsa = attempt.facts.dane_for(attempt.mx)
        sts = attempt.facts.sts.policy if attempt.facts.sts is not None else None
        if tlsa.status in (DANEStatus.USABLE, DANEStatus.UNUSABLE) and "dane" not in attempt.req.ignored:
            policy_type, strings = "tlsa", [str(r) for r in tlsa.records]
        elif sts is not None and sts.mode != "none" and "mta-sts" not in attempt.req.ignored:
            policy_type, strings = "sts", sts.strings
        else:
            policy_type, strings = "no-policy-found", []
        self._record(dest.domain, policy_type, strings, attempt.mx, success, result_type,
                     dest.options["source_address"], attempt.ip, reason or None)

    def _record(self, domain: str, policy_type: str, strings: list[str], mx: str | None, success: bool,
                result_type: str | None, sending_ip: str | None, receiving_ip: str | None, reason: str | None) -> None:
        day = datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc).date()
        try:
            self.tlsrpt.record(domain, day, policy_type, strings, mx, success, result_type=result_type,
                               sending_ip=sending_ip, receiving_ip=receiving_ip, reason=reason)
        except Exception:
            log.failure("recording a TLS-RPT result failed")  # best effort: never costs a delivery

    # -- logging ----------------------------------------------------------------------------

    def log_job(self, job: DeliveryJob, dest: Destination | None, attempt: Attempt | None, results: list[RecipientResult],
                remote: bool = True) -> None:
        """A ``delivery`` line per recipient, and for a ``remote`` attempt the quiet ``attempt``
        event the metrics count (local deliveries were never in them)."""
        tls_fields = dict(attempt.tls) if attempt else {"tls": "none"}
        if dest is not None:
            tls_fields.setdefault("tls_verify", dest.tls_options.verify.value)
        tls_fields.pop("softfail", None)
        head = {
            "msgid": job.message.id,
            "message_id": job.message.message_id_header or None,
            "domain": job.domain,
            "route": str(job.route),
            "relay": relay_of(attempt.mx, attempt.ip, attempt.port) if attempt else None,
            "mx": attempt.mx if attempt else None,
            "ip": attempt.ip if attempt else None,
            "port": attempt.port if attempt else None,
            "binding": job.binding,
        }
        tail = {
            "attempt": job.message.attempts + 1,
            "delay": round(max(0.0, self.reactor.seconds() - job.message.received_at), 3),
            **tls_fields,
        }
        for line in recipient_lines(head, tail, results):
            self.events.emit("delivery", **line)
        if remote:
            self.events.emit("attempt", quiet=True, **attempt_summary(head, tail, results))


class Deliverer:
    """Delivers a job by its route: locally, or through the outbound pool."""

    def __init__(self, pool: OutboundPool, local: LocalSink, spool: Spool, disk: DiskIO, options_for: Callable[[str, str], Mapping[str, Resolved]],
                 tlsrpt_inbox: TLSRPTInbox | None = None):
        self.tlsrpt_inbox = tlsrpt_inbox  # where ``tlsrpt`` route mail goes
        self.pool = pool
        self.local = local
        self.spool = spool
        self.disk = disk
        self.options_for = options_for

    def deliver(self, job: DeliveryJob) -> Deferred[list[RecipientResult]]:
        if job.route.kind == "discard":
            return succeed(self._logged(job, results_for(job, Reply.of(250, "2.0.0", "discarded"))))
        if job.route.kind == "maildir":
            return ensureDeferred(self._maildir(job)).addCallback(lambda results: self._logged(job, results))
        if job.route.kind == "tlsrpt":
            return ensureDeferred(self._tlsrpt(job)).addCallback(lambda results: self._logged(job, results))
        return self.pool.submit(job, self.options_for(job.domain, job.binding))

    def _logged(self, job: DeliveryJob, results: list[RecipientResult]) -> list[RecipientResult]:
        """A queued local delivery (a DSN, the local part of a mixed message) has its delivery lines too."""
        self.pool.log_job(job, None, None, results, remote=False)
        return results

    async def _tlsrpt(self, job: DeliveryJob) -> list[RecipientResult]:
        if self.tlsrpt_inbox is None:
            return results_for(job, Reply.of(451, "4.3.0", "no TLS-RPT inbox in this process"), ours=True)
        return results_for(job, await take_reports(self.tlsrpt_inbox, self.spool, self.disk, job.message))

    async def _maildir(self, job: DeliveryJob) -> list[RecipientResult]:
        files = self.local.with_receipts(
            self.local.maildir_files(job.message.sender, [(r.address, job.route) for r in job.recipients]),
            lambda: queued_receipt_record(job.message),
        )
        body, left = self.spool.body_path(job.message), job.message.size

        def copy() -> None:
            nonlocal left
            carry = b""
            with open(body, "rb") as f:
                while left > 0 and (chunk := f.read(min(BODY_CHUNK, left))):
                    left -= len(chunk)
                    chunk = carry + chunk
                    carry = b"\r" if chunk.endswith(b"\r") else b""  # a CRLF split between reads
                    for target in files:
                        target.append(crlf_to_lf(chunk[: len(chunk) - len(carry)]))
            finish_blocking(self.disk, files, carry)  # the copies and their directories durable, in this job

        try:
            await self.disk.run(copy)
        except OSError as e:
            for target in files:
                await self.disk.run(target.discard)
            return results_for(job, Reply.of(451, "4.3.0", f"Maildir delivery failed: {e.strerror}"), ours=True)
        return results_for(job, Reply.of(250, "2.0.0", "delivered to Maildir"))
