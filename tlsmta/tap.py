"""``twistd tlsmta``: options and service construction."""

from __future__ import annotations

import os
import sys
from importlib import resources

import attrs
from twisted.application.service import IService
from twisted.python import usage

from tlsmta import config as configuration

DEV_RELAY = "dev-relay.toml"


def dev_relay_path() -> str:
    """The embedded default configuration shipped in the package."""
    return str(resources.files("tlsmta").joinpath(DEV_RELAY))


class Options(usage.Options):
    synopsis = "[--config FILE] [--maildir PATH]"
    longdesc = (
        "Run tlsmta. With no --config it runs the embedded dev test relay: "
        "127.0.0.1:2525 with STARTTLS, storing every message in ./maildir."
    )
    optParameters = [
        ["config", "c", None, "configuration file (TOML); default: the dev relay"],
        ["maildir", "m", None, "deliver everything into this Maildir (overrides route)"],
        ["listen", "l", None, "endpoint for the only listener, e.g. tcp:2526 (tcp:0 picks a free port)"],
    ]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from tlsmta.service import TlsmtaService, with_maildir

    path = options["config"] or dev_relay_path()
    try:
        config = configuration.load(path)
    except configuration.ConfigError as e:
        # twistd prints a traceback for exceptions; an operator wants the problems.
        sys.stderr.write(f"tlsmta: configuration refused:\n{e}\n")
        raise SystemExit(78)  # EX_CONFIG
    if options["maildir"]:
        config = with_maildir(config, os.path.abspath(options["maildir"]))
    if options["listen"]:
        if len(config.listeners) != 1:
            sys.stderr.write(f"tlsmta: --listen needs exactly one [[listener]] in {path}\n")
            raise SystemExit(64)  # EX_USAGE
        listener = attrs.evolve(config.listeners[0], endpoint=options["listen"])
        config = attrs.evolve(config, listeners=(listener,))
    return TlsmtaService(config, reactor)
