"""Wiring: a MultiService of listeners over one store, built from a Config."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from tlsmta.app import _preflight as preflight
from tlsmta.app._certificate_expiry import CHECK_INTERVAL, CertificateWatch
from tlsmta.app._control import ControlFactory, prepare_socket_path
from tlsmta.app._endpoints import CannotListen, naming
from tlsmta.app._reload_plan import Running, fixed_settings, keeping_fixed, plan, running_of, web_settings
from tlsmta.app._tlsrpt_inbox_service import TLSRPTInboxService
from tlsmta.cluster import ClusterService
from tlsmta.config import Config, ConfigError, ListenerConfig, ListenerTLS, resolve
from tlsmta.delivery import Deliverer, DkimSigner, OutboundPool, Queue, destination_of
from tlsmta.devrelay import (
    ChaosRules,
    FailureRule,
    LabError,
    LabListener,
    MailAccessService,
    captured_maildir,
    dev_names,
    ensure_dev_certificate,
    lab_listener,
    lab_server_tls,
    log_dev_ca,
)
from tlsmta.discovery import PolicyFetcher, Resolver, STSCache, STSResolver, canonical_ip
from tlsmta.inbound import (
    AnyCredentials,
    AuthFileError,
    Credentials,
    InboundFactory,
    Intake,
    ListenerRuntime,
    UserDB,
    listen_smtp,
)
from tlsmta.network import IServiceReactor, PortService
from tlsmta.reporting import (
    EventBus,
    Metrics,
    ReceivedReports,
    TLSRPTInbox,
    TLSRPTService,
    metrics_site,
    received_directory,
)
from tlsmta.storage import DirectoryLock, DiskIO, GroupCommit, LocalSink, MessageSink, QueuedMessage, Spool
from tlsmta.tls import HookError, Hooks, KeyPairError, ServerTLS, load_hooks, serve_by_sni, server_context

log = Logger(namespace="tlsmta.service")


@functools.lru_cache(maxsize=1)
def local_addresses() -> frozenset[str]:
    """This host's addresses, as far as its own name resolves (for loop detection)."""
    found = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(canonical_ip(str(info[4][0])))
    except OSError:
        pass
    return frozenset(found)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(canonical_ip(ip)).is_loopback
    except ValueError:
        return False


def _keep_creator(running: ServerTLS | None, new: ServerTLS | None) -> ServerTLS | None:
    """The running TLS creator with ``new``'s context: an implicit-TLS factory holds that
    object, so a new certificate must go into it rather than replace it."""
    if running is None or new is None:
        return new
    running.context = new.context
    return running


def effective_hostname(config: Config) -> str:
    return config.hostname or socket.getfqdn()


def listener_tls(listener: ListenerConfig, config: Config, hostname: str, hooks: Hooks | None = None) -> ServerTLS | None:
    """The server TLS creator for a listener, generating the dev certificate if asked."""
    if listener.tls is ListenerTLS.NO:
        return None
    if listener.tls_lab is not None:
        return lab_server_tls(listener, config, hostname)
    chains = listener.tls_chains
    if listener.tls_certificate == "auto":
        generated = ensure_dev_certificate(config.state_dir, dev_names(hostname))
        chains = ((generated.cert_path, generated.key_path),)
        log.info("dev certificate {cert}, signed by the dev CA {ca}", cert=generated.cert_path, ca=generated.ca_path)
        log_dev_ca(config.state_dir)

    def context(chains: Sequence[tuple[str, str]]) -> SSL.Context:
        (cert, key), *more = chains
        return server_context(
            cert,
            key,
            listener.tls_protocols,
            listener.tls_ciphers,
            listener.tlsv13_ciphersuites,
            listener.tls_client_ca,
            session_id=f"tlsmta-{listener.name}".encode(),
            resumption=listener.tls_verify == "no" and not (hooks and hooks.inbound_tls_verify_callback)
            and not listener.relay_client_pins,  # a resumed session shows no certificate to compare with the pins
            more_chains=more,
            groups=listener.tls_groups,
        )

    ctx = context(chains)
    serve_by_sni(ctx, [(sni_chains, context(sni_chains)) for sni_chains in listener.tls_sni])
    return ServerTLS(ctx)


LISTEN_BACKLOG = 1024  # Twisted's default of 50 drops connections in bursts


def with_default_backlog(endpoint: str) -> str:
    """Add ``backlog=1024`` to a TCP endpoint string that does not set one."""
    kind = endpoint.removeprefix("haproxy:").split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


def _user_db(path: str, checked: Mapping[str, UserDB]) -> UserDB:
    """The accounts of a users file: as checking the configuration read them, else read now."""
    found = checked.get(path)
    return found if found is not None else UserDB.load(path)


def _credentials(listener: ListenerConfig, config: Config, checked: Mapping[str, UserDB]) -> Credentials | None:
    """What checks the listener's AUTH: its users file; else, with ``[dev] auth``, the dev
    users file or any credentials; else nothing (no AUTH)."""
    if listener.auth_users_file is not None:
        return _user_db(listener.auth_users_file, checked)
    return dev_credentials(config, checked) if config.dev["auth"] else None


def dev_credentials(config: Config, checked: Mapping[str, UserDB]) -> Credentials:
    """The dev relay's logins (AUTH, POP3, IMAP): ``[dev] auth_users_file``, else any."""
    path = config.dev["auth_users_file"]
    return _user_db(path, checked) if path is not None else AnyCredentials()


class ListenerService(PortService):
    """Listens on one endpoint; ``ready`` fires with the listening port."""

    def __init__(self, reactor: IServiceReactor, listener: ListenerConfig, factory: Any, inbound: InboundFactory):
        self.reactor = reactor
        self.listener = listener
        self.factory = factory  # what listens: the inbound factory, maybe TLS-wrapped
        self.inbound = inbound
        self.ready: Deferred[IListeningPort] = Deferred()
        # No service name: a reload listens with the new service before the old one stops.

    def startService(self) -> None:
        super().startService()
        self.listen_on(listen_smtp(
            self.reactor, with_default_backlog(self.listener.endpoint), self.factory, lambda: self.listener.proxy_networks
        ))

    def listening(self, port: IListeningPort) -> None:
        super().listening(port)
        address = port.getHost()
        log.info(
            "listening on {host}:{port} ({name}, tls={tls})",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
            name=self.listener.name,
            tls=self.listener.tls,
        )
        if not self.ready.called:  # listening again after a reload could not move it
            self.ready.callback(port)


class DiskService(Service):
    """Owns the disk thread pool's lifetime, and the group commit's (``[spool] commit = "syncfs"``)."""

    def __init__(self, disk: DiskIO, group_commit: GroupCommit | None = None):
        self.disk = disk
        self.group_commit = group_commit
        if group_commit is not None:
            disk.group_commit = group_commit.commit

    def startService(self) -> None:
        super().startService()
        self.disk.start()

    def stopService(self) -> None:
        super().stopService()
        self.disk.stop()
        if self.group_commit is not None:
            self.group_commit.close()


class QueueService(Service):
    """Creates the spool, loads the queue at start, stops scheduling at stop."""

    def __init__(self, spool: Spool, queue: Queue):
        self.spool = spool
        self.queue = queue
        self.loaded: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        # Synchronous, before any listener starts: cleaning tmp/ while a session
        # writes there would lose a message.  A spool that cannot be created
        # stops the start, with the path in the error.
        queued = self.spool.prepare_blocking()
        self.loaded = self.queue.start(queued)
        self.loaded.addErrback(lambda f: log.failure("loading the queue failed", f))

    def stopService(self) -> None:
        super().stopService()
        self.queue.stop()


class ControlService(PortService):
    """The control socket `tlsmta queue ...` talks to."""

    def __init__(self, reactor: IServiceReactor, path: str, factory: ControlFactory):
        self.reactor = reactor
        self.path = path
        self.factory = factory

    def startService(self) -> None:
        super().startService()
        prepare_socket_path(self.path)
        self.listen_on(UNIXServerEndpoint(self.reactor, self.path, mode=0o600).listen(self.factory))


class MetricsService(PortService):
    """Prometheus /metrics on the opt-in endpoint, fed by the structured events."""

    def __init__(self, reactor: IServiceReactor, endpoint: str, metrics: Metrics, events: EventBus):
        self.reactor = reactor
        self.endpoint = endpoint
        self.metrics = metrics
        self.events = events
        self.ready: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.events.add_sink(self.metrics.handle)
        self.listen_on(serverFromString(self.reactor, self.endpoint).listen(metrics_site(self.metrics)))

    def listening(self, port: IListeningPort) -> None:
        super().listening(port)
        if not self.ready.called:
            self.ready.callback(port)

    def stopService(self) -> Deferred[None] | None:
        self.events.remove_sink(self.metrics.handle)
        return super().stopService()


ConfigReader = Callable[[str], preflight.Checked]  # path -> the checked configuration to run


class TlsmtaService(MultiService):
    """The whole MTA for one configuration; ``reload`` swaps in a new one."""

    def __init__(self, config: Config, reactor: IServiceReactor, dns_backend: Any = None, read_config: ConfigReader = preflight.check,
                 users: Mapping[str, UserDB] | None = None):
        """``read_config``: how a reload reads the file (the command line's overrides included);
        ``users``: the users files checking ``config`` loaded (others are read here)."""
        super().__init__()
        self.read_config = read_config
        self.config = config
        self.reactor = reactor
        self.events = EventBus()  # this service's log events and their sinks
        self.directory_locks: list[DirectoryLock] = []  # the spool's and state_dir's (twistd takes them)
        self.resolver = Resolver(config.dns, dns_backend, nameservers=config.dns_nameservers, reactor=reactor)
        self.hostname = effective_hostname(config)
        self.disk = DiskIO(reactor)
        group_commit = GroupCommit(reactor) if config.spool["commit"] == "syncfs" else None
        DiskService(self.disk, group_commit).setServiceParent(self)
        self.hooks: Hooks = load_hooks(config.hooks)
        local = LocalSink(self.disk, keeps_receipts=self.captures_into)
        self.spool = Spool(config.spool["path"], self.disk)
        self.pool = OutboundPool(
            reactor, self.resolver, self.spool, self.disk, self.hostname, self.hooks, config.queue["max_connections"],
            events=self.events,
        )
        # Reports other senders send us: by mail to a ``tlsrpt`` route, or by HTTPS POST.
        self.tlsrpt_inbox = TLSRPTInbox(ReceivedReports(received_directory(config.state_dir)), self.disk, self.events, reactor)
        self.tlsrpt_https: TLSRPTInboxService | None = None
        if config.tlsrpt_inbox["endpoint"]:
            self.tlsrpt_https = TLSRPTInboxService(reactor, config.tlsrpt_inbox, self.tlsrpt_inbox)
            self.tlsrpt_https.setServiceParent(self)
        # Lookups go through self.config at call time, so a reload takes effect at once.
        deliverer = Deliverer(self.pool, local, self.spool, self.disk, lambda domain, binding: resolve(self.config, domain, binding),
                              tlsrpt_inbox=self.tlsrpt_inbox)
        self.queue = Queue(
            self.spool,
            deliverer.deliver,
            reactor,
            self.hostname,
            config.queue["retry_schedule"],
            config.queue["max_queue_lifetime"],
            route_for=lambda domain: resolve(self.config, domain)["route"].value,
            destination_for=lambda message, rcpt: destination_of(self.config, self.hooks, message, rcpt),
            events=self.events,
            soft_bounce=config.queue["soft_bounce"],
            delay_warning=config.queue["delay_warning_time"],
        )
        self.queue.on_flush = self.pool.backoff.forget
        self.pool.is_self = self.is_own_address
        self.pool.sts = self._sts_resolver()
        self.pool.dkim = DkimSigner(config.dkim)
        # [cluster]: leases, rates, broken TLS and MTA-STS shared through Redis (tlsmta.cluster); started
        # before the queue, so the node has registered (or tried) before its first delivery.
        self.cluster: ClusterService | None = None
        if config.cluster is not None:
            self.cluster = ClusterService(reactor, config.cluster, self.events, self.hostname, lambda: self.queue.stats()[0])
            self.pool.leases, self.pool.broken_tls = self.cluster.leases, self.cluster.broken_tls
            if self.pool.sts is not None:  # an MTA-STS policy any node fetched serves all
                self.pool.sts.cache = self.cluster.shared_sts_cache(self.pool.sts.cache)
            self.cluster.setServiceParent(self)
        QueueService(self.spool, self.queue).setServiceParent(self)
        self.sink: MessageSink = Intake(local, self.spool, self.queue.add)
        # The dev relay's SMTP failure rules (page, API, fixture); an MTA's listeners have none.
        self.chaos = ChaosRules(on_fire=self._chaos_fired) if config.http["endpoint"] or config.http["maildir"] else None
        self.listeners: dict[str, ListenerService] = {}
        self.draining: list[InboundFactory] = []  # listeners a reload removed, whose sessions go on
        for listener in config.listeners:
            tls = listener_tls(listener, config, self.hostname, self.hooks)
            service = self._listener_service(listener, self._runtime(listener, config, self.hooks, users or {}, tls))
            service.setServiceParent(self)
            self.listeners[listener.name] = service
        self.certificates = CertificateWatch(reactor)  # expiry: warned at start, daily and at reload
        self.certificates.load(config)
        expiry_check = TimerService(CHECK_INTERVAL, self.certificates.check)
        expiry_check.clock = reactor
        expiry_check.setServiceParent(self)
        self.prometheus_metrics = Metrics(self.queue.gauges, self.certificates.samples)
        self.metrics: MetricsService | None = None
        if config.metrics["endpoint"]:
            self.metrics = MetricsService(reactor, config.metrics["endpoint"], self.prometheus_metrics, self.events)
            self.metrics.setServiceParent(self)
        self.web: Any = None
        self.web_settings = web_settings(config)  # what the running web page was built from
        self._web_config = config
        if config.http["endpoint"]:
            self.web = self._web_service(config)
            self.web.setServiceParent(self)
        # [dev] pop3 and imap over the captured mail (a restart applies changes to them).
        self.mail_access = self._mail_access_services(config, users or {})
        for access in self.mail_access:
            access.setServiceParent(self)
        self._reloads: Deferred[None] = Deferred()  # reloads adopt one after the other
        self._reloads.callback(None)
        self.control = ControlService(
            reactor, config.control["socket"], ControlFactory(self.queue, self.reload, running=lambda: self.what_runs().to_json(),
                                                         broken_tls=lambda key: self.pool.broken_tls.get(key, reactor.seconds()))
        )
        self.control.setServiceParent(self)
        self.tlsrpt = TLSRPTService(self)
        if self.cluster is not None:
            self.tlsrpt.fleet = self.cluster.reports  # one report per domain and day from the fleet
        self.tlsrpt.setServiceParent(self)

    def _sts_resolver(self) -> STSResolver:
        """MTA-STS discovery: TXT through our resolver, HTTPS fetches on the configured port
        trusting the domain's tls_ca (or the system store), policies cached in state_dir/mta-sts."""
        fetcher = PolicyFetcher(
            self.reactor,
            self.resolver.addresses,
            port=lambda: self.config.global_option("mta_sts_https_port"),
            ca_for=self.config_tls_ca,
        )
        cache = STSCache(os.path.join(self.config.state_dir, "mta-sts"), run=self.disk.run)
        return STSResolver(self.resolver.txt, fetcher, cache, now=self.reactor.seconds)

    def captures_into(self, maildir: str) -> bool:
        """Whether ``maildir`` is the dev relay's captured mail, whose page (and
        ``tlsmta.testing``) shows each message's facts of receipt.

        Only where something reads them: the page (``[http] endpoint``) or a
        ``tlsmta.testing.Relay`` (which names ``[http] maildir``). An operator's
        ``maildir:`` route gets no receipts: nothing would read or prune them, and
        each would cost its own fsync before the 250."""
        if not (self.config.http["endpoint"] or self.config.http["maildir"]):
            return False
        captured = captured_maildir(self.config)
        return captured is not None and os.path.abspath(captured) == os.path.abspath(maildir)

    def config_tls_ca(self, domain: str) -> str | None:
        """The trust anchors configured for ``domain`` (its tls_ca), None for the system store."""
        return resolve(self.config, domain)["tls_ca"].value

    def is_own_address(self, ip: str, port: int) -> bool:
        """Whether delivering to ip:port would reach one of our own listeners (a mail loop)."""
        for service in self.listeners.values():
            if service.port is None:
                continue
            host = service.port.getHost()
            if getattr(host, "port", None) != port:
                continue
            bound = getattr(host, "host", "")
            if bound == ip or (bound in ("0.0.0.0", "::", "") and (ip in local_addresses() or _loopback(ip))):
                return True
        return False

    def _runtime(
        self, listener: ListenerConfig, config: Config, hooks: Hooks, users: Mapping[str, UserDB], server_tls: ServerTLS | None
    ) -> ListenerRuntime:
        return ListenerRuntime(
            listener=listener,
            config=config,
            hostname=self.hostname,
            sink=self.sink,
            tls=server_tls,
            users=_credentials(listener, config, users),
            hooks=hooks,
            resolver=self.resolver,
            run_in_thread=lambda fn, *a: deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *a),
            events=self.events,
            reply_override=self.chaos,
        )

    def _listener_service(self, listener: ListenerConfig, runtime: ListenerRuntime) -> ListenerService:
        factory = InboundFactory(runtime)
        wrapped: Any = factory
        if listener.tls is ListenerTLS.IMPLICIT:
            assert runtime.tls is not None
            wrapped = TLSMemoryBIOFactory(runtime.tls, False, factory)
        return ListenerService(self.reactor, listener, wrapped, factory)

    def _chaos_fired(self, rule: FailureRule, recipients: tuple[str, ...]) -> None:
        """One log line per failure given on purpose, so the developer sees it beside the session's."""
        self.events.emit("chaos", rule=rule.id, stage=rule.stage.value, reply=str(rule.reply),
                         rcpts=",".join(recipients) or None)

    def _mail_access_services(self, config: Config, users: Mapping[str, UserDB]) -> list[MailAccessService]:
        from tlsmta.devrelay import mail_access_services

        return mail_access_services(self.reactor, config, self.hostname, dev_credentials(config, users), self.disk.run,
                                    lambda fn, *a: deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *a),
                                    self.events)

    def _web_service(self, config: Config) -> Any:
        from tlsmta.devrelay import web_service

        return web_service(self.reactor, config, self, self.disk.run)

    # -- start: a socket that cannot listen names its table and key ------------------------

    def _naming(self, service: Any, web: bool = False) -> AbstractContextManager[None]:
        """Where a child's listening socket is configured, for the error when it cannot listen."""
        path = self.config.path
        if isinstance(service, ListenerService):
            return naming(path, f'listener."{service.listener.name}"', "endpoint", service.listener.endpoint)
        if isinstance(service, MetricsService):
            return naming(path, "metrics", "endpoint", service.endpoint)
        if isinstance(service, ControlService):
            return naming(path, "control", "socket", service.path)
        if isinstance(service, MailAccessService):
            return naming(path, "dev", service.key, service.endpoint)
        if web:
            return naming(path, "http", "endpoint", service.endpoint)
        return nullcontext()

    def startService(self) -> None:
        """MultiService's start, each socket named in its error; what started stops again on one."""
        Service.startService(self)
        started: list[Any] = []
        try:
            for service in self:
                started.append(service)
                with self._naming(service, web=service is self.web):
                    service.startService()
        except CannotListen:
            for service in reversed(started):
                service.stopService()  # the disk thread and the queue's timers; ports close with the process
            self.running = 0
            raise

    def what_runs(self) -> Running:
        """What this daemon listens on and the settings fixed at its start (the control socket's ``running``)."""
        return Running(
            listeners={name: (item.listener.endpoint, str(item.listener.tls)) for name, item in self.listeners.items()},
            metrics=self.metrics.endpoint if self.metrics is not None else None,
            web=self.web_settings,
            fixed=fixed_settings(self.config),
        )

    # -- SIGHUP -------------------------------------------------------------------------

    def reload(self) -> list[str]:
        """Re-read the configuration file and certificates.

        New sessions and deliveries use the new settings; sessions in flight
        keep theirs.  A configuration that does not validate, or a
        certificate that does not load, is refused as a whole: the running
        one stays.  Returns the problems (empty when the reload took).

        Listeners added, removed or moved and a moved ``[metrics]`` or
        ``[http]`` endpoint are applied (one after the other, reload after
        reload); what only a restart changes keeps its running value, and the
        ``reload`` event says ``result=partial`` with ``restart required: ...``.
        """
        try:
            checked = self.read_config(self.config.path)
            new = checked.config
            hooks = load_hooks(new.hooks)
            tls = {listener.name: listener_tls(listener, new, self.hostname, hooks) for listener in new.listeners}
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
        except (HookError, KeyPairError, SSL.Error, OSError, AuthFileError) as e:
            problems = [f"{self.config.path}: {e}"]
        else:
            self._reloads.addCallback(lambda _: ensureDeferred(self._adopt(new, hooks, tls, checked.users)))
            self._reloads.addErrback(lambda f: log.failure("applying the reloaded configuration failed", f))
            return []
        for problem in problems:
            log.error("reload refused, keeping the running configuration: {problem}", problem=problem)
        self.events.emit("reload", result="refused", config=self.config.path, problems=len(problems))
        return problems

    def reloaded(self) -> Deferred[None]:
        """Fires once the reloads asked for so far are applied (their sockets moved, their event logged)."""
        done: Deferred[None] = Deferred()

        def passed(result: object) -> object:
            done.callback(None)
            return result

        self._reloads.addBoth(passed)
        return done

    async def _adopt(self, new: Config, hooks: Hooks, tls: Mapping[str, ServerTLS | None], users: Mapping[str, UserDB]) -> None:
        """Take ``new``: settings at once, then the sockets that change; log one ``reload`` event."""
        running, wanted = self.what_runs(), running_of(new)
        changes = plan(running, wanted)
        new = keeping_fixed(new, self.config)
        relisten = set(changes.added) | set(changes.changed)
        kept = {item.name: (tls[item.name], item) for item in new.listeners if item.name not in relisten}
        self._apply(new, hooks, kept, users)
        for name in changes.removed:
            await self._retire(self.listeners.pop(name))
        failed: list[str | None] = []
        for listener in new.listeners:
            if listener.name in relisten:
                service = self._listener_service(listener, self._runtime(listener, new, hooks, users, tls[listener.name]))
                failed.append(await self._move_listener(listener, service))
        if changes.metrics:
            failed.append(await self._move_metrics(new.metrics["endpoint"]))
        if changes.web:
            failed.append(await self._move_web(new))
        not_applied = [f"restart required: {key}" for key in changes.restart_required]
        not_applied += [problem for problem in failed if problem]
        fields: dict[str, Any] = {"result": "partial" if not_applied else "ok", "config": new.path}
        after = self.what_runs()  # what did change: a socket that could not move is not in it
        applied = plan(running, after).changes(running, after)
        if applied:
            fields["changed"] = "; ".join(applied)
        if not_applied:
            fields["not_applied"] = "; ".join(not_applied)
            for line in not_applied:
                log.warn("reload: {problem}", problem=line)
        self.events.emit("reload", **fields)

    def _apply(self, new: Config, hooks: Hooks, prepared: dict[str, Any], users: Mapping[str, UserDB]) -> None:
        self.config = new
        self.hooks = hooks
        self.certificates.load(new)
        self.certificates.check()
        self.resolver.pinned = new.dns
        if new.dns_nameservers != (self.resolver.nameservers or ()):
            self.resolver.nameservers = new.dns_nameservers
        self.pool.reconfigure(hooks, new.queue["max_connections"])
        self.pool.dkim = DkimSigner(new.dkim)  # keys re-read: a rotated key signs from now on
        self.queue.retry_schedule = tuple(new.queue["retry_schedule"])
        self.queue.max_lifetime = new.queue["max_queue_lifetime"]
        self.queue.soft_bounce, self.queue.delay_warning = new.queue["soft_bounce"], new.queue["delay_warning_time"]
        for name, (server_tls, listener) in prepared.items():
            service = self.listeners[name]
            old = service.inbound.runtime
            service.listener = listener
            service.inbound.runtime = attrs.evolve(
                old,
                listener=listener,
                config=new,
                tls=_keep_creator(old.tls, server_tls),
                users=_credentials(listener, new, users),
                hooks=hooks,
            )

    async def _swap(
        self, old: PortService | None, new: PortService | None, again: Callable[[], PortService] | None = None, web: bool = False
    ) -> tuple[PortService | None, str | None]:
        """Listen with ``new``, then stop ``old`` (its sessions in flight go on).  When ``new``
        cannot listen while ``old`` holds the address (the same port), ``old`` stops first; if
        ``new`` still cannot, ``again()`` (a fresh service like ``old``) listens again.
        Returns the service that listens now and what could not be done."""
        failed = self._listen(new, web) if new is not None else None
        if failed is None:
            await self._retire(old)
            return new, None
        if old is None or again is None:
            return old, failed
        await self._retire(old)
        assert new is not None
        if self._listen(new, web) is None:
            return new, None
        back = again()
        if self._listen(back, web) is not None:
            return None, f"{failed}; the running one could not listen again: nothing listens there now"
        return back, f"{failed}; kept the running one"

    def _listen(self, service: PortService, web: bool = False) -> str | None:
        """Add ``service`` and listen (when running); None, or why it cannot (it is removed then)."""
        try:
            with self._naming(service, web):
                service.setServiceParent(self)
        except CannotListen as e:
            service.disownServiceParent()
            return str(e)
        return None

    async def _retire(self, old: PortService | None) -> None:
        """Stop listening with ``old``; a listener's sessions in flight finish (SIGTERM still cuts them)."""
        if old is None:
            return
        if isinstance(old, ListenerService):
            self.draining = [factory for factory in self.draining if factory.sessions]
            self.draining.append(old.inbound)
        if old.parent is not None:
            await maybeDeferred(old.disownServiceParent)

    async def _move_listener(self, listener: ListenerConfig, service: ListenerService) -> str | None:
        old = self.listeners.get(listener.name)
        again = (lambda: ListenerService(self.reactor, old.listener, old.factory, old.inbound)) if old else None
        now, problem = await self._swap(old, service, again)
        if isinstance(now, ListenerService):
            self.listeners[listener.name] = now
        else:
            self.listeners.pop(listener.name, None)
        return problem

    async def _move_metrics(self, endpoint: str | None) -> str | None:
        old = self.metrics
        new = MetricsService(self.reactor, endpoint, self.prometheus_metrics, self.events) if endpoint else None
        again = (lambda: MetricsService(self.reactor, old.endpoint, self.prometheus_metrics, self.events)) if old else None
        now, problem = await self._swap(old, new, again)
        self.metrics = now if isinstance(now, MetricsService) else None
        return problem

    async def _move_web(self, config: Config) -> str | None:
        old, old_config = self.web, self._web_config
        new = self._web_service(config) if config.http["endpoint"] else None
        self.web, problem = await self._swap(old, new, (lambda: self._web_service(old_config)) if old else None, web=True)
        if self.web is new:
            self._web_config, self.web_settings = config, web_settings(config)
        return problem

    # -- the dev relay's page (devrelay.webui.RelayHost) ---------------------------------

    def lab_listeners(self) -> list[LabListener]:
        """Each listener with its TLS setting, lab mode and bound port."""
        out = []
        for name, item in self.listeners.items():
            address = item.port.getHost() if item.port is not None else None
            out.append(LabListener(name, item.listener.tls, item.listener.tls_lab, getattr(address, "port", None)))
        return out

    def switch_tls_lab(self, name: str, mode: str | None) -> None:
        """Change listener ``name`` to lab ``mode`` (None: off).

        New sessions get the new certificate or behaviour; sessions in flight
        keep theirs.  Lasts until the next reload re-reads the configuration.
        """
        listener_service = self.listeners.get(name)
        if listener_service is None:
            raise LabError(f"no listener named {name!r}")
        configured = next((item for item in self.config.listeners if item.name == name), listener_service.listener)
        new_listener = lab_listener(configured, mode)
        server_tls = listener_tls(new_listener, self.config, self.hostname, self.hooks)
        runtime = listener_service.inbound.runtime
        listener_service.listener = new_listener
        listener_service.inbound.runtime = attrs.evolve(
            runtime, listener=new_listener, tls=_keep_creator(runtime.tls, server_tls)
        )

    def release(self, message: QueuedMessage, body: bytes) -> Deferred[None]:
        """Store ``message`` durably in the spool, then queue it (the page's "Release")."""

        def stored(_: object) -> None:
            self.queue.add(message)

        return self.disk.run(self.spool.store_blocking, message, body).addCallback(stored)

    # -- SIGTERM ------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Stop accepting, let sessions and deliveries finish for shutdown_grace seconds,
        cut what remains, leave the queue on disk."""
        grace = self.config.control["shutdown_grace"]
        await DeferredList([maybeDeferred(s.stopService) for s in self.listeners.values()])
        self.queue.stop()
        self.pool.release_idle()  # connections kept open for more mail QUIT now: none is coming
        deadline = self.reactor.seconds() + grace
        while self._busy() and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.05, lambda: None)
        for factory in self._inbound_factories():
            for session in list(factory.sessions):
                session.transport.abortConnection()
        self.pool.abort_all()
        settle = self.reactor.seconds() + 5
        while self.queue.in_flight and self.reactor.seconds() < settle:
            await deferLater(self.reactor, 0.05, lambda: None)  # aborted attempts record their results
        await super().stopService()

    def _busy(self) -> bool:
        return bool(self.queue.in_flight) or any(factory.sessions for factory in self._inbound_factories())

    def _inbound_factories(self) -> list[InboundFactory]:
        return [service.inbound for service in self.listeners.values()] + self.draining
