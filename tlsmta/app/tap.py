"""``twistd tlsmta``: options, service construction and process signals."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.python import usage

from tlsmta.app import _preflight as preflight
from tlsmta.app._endpoints import CannotListen
from tlsmta.config import Config, ConfigError, Overrides
from tlsmta.devrelay import LAB_MODES
from tlsmta.network import IServiceReactor, installed_reactor
from tlsmta.storage import DirectoryInUse, DirectoryLock

if TYPE_CHECKING:
    from tlsmta.app._service import TlsmtaService

DEV_RELAY = "dev-relay.toml"
EX_USAGE, EX_CONFIG = 64, 78  # sysexits.h


def dev_relay_path() -> str:
    """The embedded default configuration shipped in the package."""
    return str(resources.files("tlsmta.devrelay").joinpath(DEV_RELAY))


class Options(usage.Options):
    synopsis = "[--config FILE] [--maildir PATH] [--listen ENDPOINT] [--log-format text|json] [--tls-lab MODE] [--http ENDPOINT] [--pop3 ENDPOINT] [--imap ENDPOINT]"
    longdesc = (
        "Run tlsmta. With no --config it runs the embedded dev test relay: "
        "127.0.0.1:2525 with STARTTLS, storing every message in ./maildir. "
        "SIGHUP reloads the configuration and certificates; SIGTERM stops "
        "accepting, lets sessions finish ([control] shutdown_grace) and exits 0."
    )
    optParameters = [
        ["config", "c", None, "configuration file (TOML); default: the dev relay"],
        ["maildir", "m", None, "deliver everything into this Maildir (overrides route)"],
        ["listen", "l", None, "endpoint for the only listener, e.g. tcp:2526 (tcp:0 picks a free port; "
                              "without --config: on 127.0.0.1 unless it names an interface)"],
        ["log-format", None, "text", "text (key=value lines) or json (one object per line on stdout)"],
        ["tls-lab", None, None, "TLS lab mode for every TLS listener: " + ", ".join(LAB_MODES)],
        ["http", None, None, "endpoint for the web page and JSON API, e.g. tcp:8026:interface=127.0.0.1"],
        ["pop3", None, None, "dev relay: endpoint for POP3 over the captured mail ([dev] pop3)"],
        ["imap", None, None, "dev relay: endpoint for IMAP over the captured mail ([dev] imap)"],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["tls-lab"] is not None and self["tls-lab"] not in LAB_MODES:
            raise usage.UsageError(f"--tls-lab must be one of {', '.join(LAB_MODES)}")
        if self["log-format"] == "json" and self.parent is not None:
            # twistd builds its log observer from its own --logger option, before
            # makeService runs: set it while options are still being parsed.
            self.parent["logger"] = "tlsmta.reporting.json_observer"
        elif self.parent is not None and _logs_to_stdout(self.parent):
            self.parent["logger"] = "tlsmta.reporting.text_observer"


def _logs_to_stdout(twistd: Any) -> bool:
    """twistd would log text to stdout (-n without a log file or syslog): the
    same lines can come from tlsmta's cheaper observer."""
    return bool(twistd.get("nodaemon")) and twistd.get("logfile") in (None, "-") and not twistd.get("syslog") and not twistd.get("logger")


def command_line_overrides(options: Options) -> Overrides:
    """--maildir, --http, --pop3 and --imap as keys of the raw configuration, so the loader checks them
    with the file (a bad one is refused like a bad file)."""
    overrides: dict[str, dict[str, Any]] = {}
    if options["maildir"]:
        overrides["global"] = {"route": f"maildir:{os.path.abspath(options['maildir'])}"}
    if options["http"]:
        overrides["http"] = {"endpoint": options["http"]}
    dev = {key: options[key] for key in ("pop3", "imap") if options[key]}
    if dev:
        overrides["dev"] = dev
    return overrides


def loopback_unless_named(endpoint: str) -> str:
    """The dev relay's ``--listen tcp:2526``: a TCP endpoint naming no interface listens on
    127.0.0.1 (the relay accepts mail for anyone and its page has no authentication);
    ``interface=0.0.0.0`` or ``::`` still opens it to the network, on purpose."""
    kind, _, rest = endpoint.partition(":")
    params = [p.partition("=")[0].strip() for p in rest.split(":")]
    if "interface" in params:
        return endpoint
    if kind.lower() in ("tcp", "reuseport"):
        return f"{endpoint}:interface=127.0.0.1"
    return f"{endpoint}:interface=\\:\\:1" if kind.lower() == "tcp6" else endpoint


def command_line_adjust(options: Options, path: str) -> Any:
    """The overrides --listen and --tls-lab make on a loaded configuration, as a function."""
    from tlsmta.devrelay import with_tls_lab

    def adjust(config: Config) -> Config:
        if options["listen"]:
            if len(config.listeners) != 1:
                sys.stderr.write(f"tlsmta: --listen needs exactly one [[listener]] in {path}\n")
                raise SystemExit(EX_USAGE)
            endpoint = options["listen"] if options["config"] else loopback_unless_named(options["listen"])
            listener = attrs.evolve(config.listeners[0], endpoint=endpoint)
            config = attrs.evolve(config, listeners=(listener,))
        if options["tls-lab"]:
            config = with_tls_lab(config, options["tls-lab"])
        return config

    return adjust


def command_line_reader(options: Options, path: str) -> Callable[[str], preflight.Checked]:
    """How the configuration is read, at start and on every reload: the file with the command line's overrides."""
    overrides = command_line_overrides(options)
    adjust = command_line_adjust(options, path)

    def read(config_path: str) -> preflight.Checked:
        checked = preflight.check(config_path, overrides)
        return attrs.evolve(checked, config=adjust(checked.config))

    return read


def makeService(options: Options) -> IService:
    from tlsmta.app._service import TlsmtaService

    reactor = installed_reactor()

    path = options["config"] or dev_relay_path()
    read = command_line_reader(options, path)
    try:
        checked = read(path)
    except ConfigError as e:
        # twistd prints a traceback for exceptions; an operator wants the problems.
        sys.stderr.write(f"tlsmta: configuration refused:\n{e}\n")
        raise SystemExit(EX_CONFIG)
    locks = lock_directories(checked.config)
    service = TlsmtaService(checked.config, reactor, read_config=read, users=checked.users)
    service.directory_locks = locks  # held for the life of the process
    for lock in locks:
        reactor.callWhenRunning(lock.write_pid)  # the PID after twistd's fork
    reactor.callWhenRunning(install_signal_handlers, reactor, service)
    root = ExitOnCannotListen()
    service.setServiceParent(root)
    return root


class ExitOnCannotListen(MultiService):
    """What twistd starts: a socket that cannot listen (a port in use, a systemd socket not
    passed) is one line on stderr and exit 78, as a bad configuration is, not a traceback."""

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListen as e:
            # twistd sends sys.stderr to the log by now; the operator's terminal is the original.
            (sys.__stderr__ or sys.stderr).write(f"tlsmta: {e}; not starting\n")
            raise SystemExit(EX_CONFIG) from None


def lock_directories(config: Config) -> list[DirectoryLock]:
    """Lock the spool and the state directory before anything touches them: a second
    instance on the same configuration exits 78 naming the process that has them."""
    locks: list[DirectoryLock] = []
    for table, key, directory in (("spool", "path", config.spool["path"]), ("global", "state_dir", config.state_dir)):
        if any(os.path.realpath(lock.directory) == os.path.realpath(directory) for lock in locks):
            continue  # the spool is the state_dir itself: one lock (a second flock would refuse our own)
        try:
            locks.append(DirectoryLock.acquire(directory))
        except DirectoryInUse as e:
            sys.stderr.write(f"tlsmta: {config.path}: [{table}] {key}: {e}; not starting\n")
            raise SystemExit(EX_CONFIG) from None
        except OSError as e:
            sys.stderr.write(f"tlsmta: {config.path}: [{table}] {key}: cannot use {directory}: {e.strerror}\n")
            raise SystemExit(EX_CONFIG) from None
    return locks


def install_signal_handlers(reactor: IServiceReactor, service: TlsmtaService) -> None:
    """SIGHUP reloads; SIGTERM stops gracefully and lets twistd exit 0.

    Installed once the reactor runs, after its own handlers: Twisted's
    SIGTERM handler records the signal so that twistd re-raises it at exit
    (status 143); an operator and systemd expect a clean stop to exit 0.
    """

    def hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.reload)

    def term(signum: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGTERM, term)
