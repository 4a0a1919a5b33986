"""Wiring: a MultiService of listeners over one store, built from a Config."""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tlsmta import tls
from tlsmta.auth import UserDB
from tlsmta.config import Config, ListenerConfig, resolve
from tlsmta.delivery import Deliverer, OutboundPool
from tlsmta.devcert import ensure_dev_certificate
from tlsmta.diskio import DiskIO
from tlsmta.dns import Resolver, canonical_ip
from tlsmta.hooks import Hooks, load_hooks
from tlsmta.inbound import InboundFactory, ListenerRuntime
from tlsmta.intake import Intake
from tlsmta.maildir import LocalSink
from tlsmta.queue import Queue
from tlsmta.routes import parse_route
from tlsmta.spool import Spool
from tlsmta.store import MessageSink

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


def effective_hostname(config: Config) -> str:
    return config.hostname or socket.getfqdn()


def with_maildir(config: Config, path: str) -> Config:
    """``config`` with its global route replaced by ``maildir:path`` (``--maildir``)."""
    options = {**config.global_options, "route": parse_route(f"maildir:{path}")}
    return attrs.evolve(config, global_options=options)


def listener_tls(listener: ListenerConfig, config: Config, hostname: str, hooks: Hooks | None = None) -> tls.ServerTLS | None:
    """The server TLS creator for a listener, generating the dev certificate if asked."""
    if listener.tls == "no":
        return None
    cert, key = listener.tls_certificate, listener.tls_key
    if cert == "auto":
        names = list(dict.fromkeys([hostname, "localhost", "127.0.0.1", "::1"]))
        generated = ensure_dev_certificate(config.state_dir, names)
        cert, key = generated.cert_path, generated.key_path
        log.info("dev certificate {cert}, signed by the dev CA {ca}", cert=cert, ca=generated.ca_path)
    assert cert is not None and key is not None
    ctx = tls.server_context(
        cert,
        key,
        listener.tls_protocols,
        listener.tls_ciphers,
        listener.tlsv13_ciphersuites,
        listener.tls_client_ca,
        session_id=f"tlsmta-{listener.name}".encode(),
        resumption=listener.tls_verify == "no" and not (hooks and hooks.inbound_tls_verify_callback),
    )
    return tls.ServerTLS(ctx)


LISTEN_BACKLOG = 1024  # Twisted's default of 50 drops connections in bursts


def with_default_backlog(endpoint: str) -> str:
    """Add ``backlog=1024`` to a TCP endpoint string that does not set one."""
    kind = endpoint.removeprefix("haproxy:").split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


class ListenerService(Service):
    """Listens on one endpoint; ``ready`` fires with the listening port."""

    def __init__(self, reactor: Any, listener: ListenerConfig, factory: Any, inbound: InboundFactory):
        self.reactor = reactor
        self.listener = listener
        self.factory = factory  # what listens: the inbound factory, maybe TLS-wrapped
        self.inbound = inbound
        self.port: IListeningPort | None = None
        self.ready: Deferred[IListeningPort] = Deferred()
        self.setName(listener.name)

    def startService(self) -> None:
        super().startService()
        failure: list[Failure] = []
        endpoint = serverFromString(self.reactor, with_default_backlog(self.listener.endpoint))
        d = endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failure.append)
        if failure:  # TCP listens synchronously: refuse to start on e.g. EADDRINUSE
            failure[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        log.info(
            "listening on {host}:{port} ({name}, tls={tls})",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
            name=self.listener.name,
            tls=self.listener.tls,
        )
        self.ready.callback(port)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class DiskService(Service):
    """Owns the disk thread pool's lifetime."""

    def __init__(self, disk: DiskIO):
        self.disk = disk

    def startService(self) -> None:
        super().startService()
        self.disk.start()

    def stopService(self) -> None:
        super().stopService()
        self.disk.stop()


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


class TlsmtaService(MultiService):
    """The whole MTA for one configuration."""

    def __init__(self, config: Config, reactor: Any, dns_backend: Any = None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.resolver = Resolver(config.dns, dns_backend)
        self.hostname = effective_hostname(config)
        self.disk = DiskIO(reactor)
        DiskService(self.disk).setServiceParent(self)
        self.hooks: Hooks = load_hooks(config.hooks)
        local = LocalSink(self.disk)
        self.spool = Spool(config.spool["path"], self.disk)
        self.pool = OutboundPool(
            reactor, self.resolver, self.spool, self.disk, self.hostname, self.hooks, config.queue["max_connections"]
        )
        deliverer = Deliverer(self.pool, local, self.spool, self.disk, lambda domain, binding: resolve(config, domain, binding))
        self.queue = Queue(
            self.spool,
            deliverer.deliver,
            reactor,
            self.hostname,
            config.queue["retry_schedule"],
            config.queue["max_queue_lifetime"],
            route_for=lambda domain: resolve(config, domain)["route"].value,
        )
        self.pool.is_self = self.is_own_address
        QueueService(self.spool, self.queue).setServiceParent(self)
        self.sink: MessageSink = Intake(local, self.spool, self.queue)
        self.listeners: dict[str, ListenerService] = {}
        for listener in config.listeners:
            factory = InboundFactory(self._runtime(listener))
            wrapped: Any = factory
            if listener.tls == "implicit":
                assert factory.runtime.tls is not None
                wrapped = TLSMemoryBIOFactory(factory.runtime.tls, False, factory)
            service = ListenerService(reactor, listener, wrapped, factory)
            service.setServiceParent(self)
            self.listeners[listener.name] = service

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

    def _runtime(self, listener: ListenerConfig) -> ListenerRuntime:
        return ListenerRuntime(
            listener=listener,
            config=self.config,
            hostname=self.hostname,
            sink=self.sink,
            tls=listener_tls(listener, self.config, self.hostname, self.hooks),
            users=UserDB.load(listener.auth_users_file) if listener.auth_users_file else None,
            hooks=self.hooks,
            resolver=self.resolver,
            run_in_thread=lambda fn, *a: deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *a),
        )
