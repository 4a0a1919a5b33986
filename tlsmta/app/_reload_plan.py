"""What a reload changes: the sockets it opens and closes, and what only a restart can change.

Pure: :class:`Running` is what a daemon listens on and the settings fixed at
its start, as the daemon reports it (its control socket's ``running``
command) or as a configuration would run it (:func:`running_of`);
:func:`plan` compares the running one with a configuration's.  SIGHUP
carries out the plan; ``tlsmta check-config --against-running`` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from tlsmta.config import Config

# Settings read once at start (the spool and state directories are locked and
# opened, the hostname is in every session and delivery; the dev relay's POP3 and
# IMAP servers and the logins they check): a reload keeps the running value.
DEV_FIXED = ("auth", "auth_users_file", "pop3", "pop3_tls", "imap", "imap_tls")
FIXED_AT_START = ("[spool] path", "[global] state_dir", "[global] hostname", "[control] socket",
                  "[tlsrpt_inbox] endpoint", "[cluster]",
                  *(f"[dev] {key}" for key in DEV_FIXED))


def fixed_settings(config: Config) -> dict[str, str | None]:
    return {
        "[spool] path": config.spool["path"],
        "[global] state_dir": config.state_dir,
        "[global] hostname": config.hostname,
        "[control] socket": config.control["socket"],
        # The HTTPS endpoint with its certificate: listened on once, at start.
        "[tlsrpt_inbox] endpoint": " ".join(str(config.tlsrpt_inbox[key]) for key in ("endpoint", "tls_certificate", "tls_key"))
        if config.tlsrpt_inbox["endpoint"] else None,
        "[cluster]": _cluster_words(config.cluster),
    } | {f"[dev] {key}": _word(config.dev[key]) for key in DEV_FIXED}


def _cluster_words(cluster: Mapping[str, Any] | None) -> str | None:
    """The [cluster] table in words (the Redis address without its password): a fleet is joined at start."""
    if cluster is None:
        return None
    return " ".join(f"{key}={value.describe() if key == 'redis' else value}" for key, value in cluster.items())


def _word(value: object) -> str | None:
    """A [dev] value as the running daemon reports it (true/false as TOML writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def web_settings(config: Config) -> dict[str, Any]:
    """The ``[http]`` table the web page is built from (any change rebuilds it); None when off."""
    http = config.http
    if not http["endpoint"]:
        return {}
    return {"endpoint": http["endpoint"], "maildir": http["maildir"], "allowed_hosts": list(http["allowed_hosts"] or ())}


@attrs.frozen
class Running:
    """Sockets and start-time settings: ``listeners`` name -> (endpoint, tls)."""

    listeners: Mapping[str, tuple[str, str]]
    metrics: str | None
    web: Mapping[str, Any]
    fixed: Mapping[str, str | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "listeners": {name: list(item) for name, item in self.listeners.items()},
            "metrics": self.metrics,
            "web": dict(self.web),
            "fixed": dict(self.fixed),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Running:
        return cls(
            listeners={name: (item[0], item[1]) for name, item in data["listeners"].items()},
            metrics=data["metrics"],
            web=data["web"],
            fixed=data["fixed"],
        )


def running_of(config: Config) -> Running:
    """What ``config`` runs once started."""
    return Running(
        listeners={item.name: (item.endpoint, str(item.tls)) for item in config.listeners},
        metrics=config.metrics["endpoint"],
        web=web_settings(config),
        fixed=fixed_settings(config),
    )


@attrs.frozen
class Plan:
    """A reload's changes: listeners by name; whether metrics and the web page re-listen."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # endpoint or tls differs: listen anew
    metrics: bool = False
    web: bool = False
    restart_required: tuple[str, ...] = ()  # FIXED_AT_START settings the file changes

    def changes(self, running: Running, wanted: Running) -> list[str]:
        """What the reload applies, in words, one item per change."""
        out = [f"listener {name!r} added on {wanted.listeners[name][0]}" for name in self.added]
        out += [f"listener {name!r} removed from {running.listeners[name][0]}" for name in self.removed]
        out += [
            f"listener {name!r} moved from {_listener(running.listeners[name])} to {_listener(wanted.listeners[name])}"
            for name in self.changed
        ]
        if self.metrics:
            out.append(f"[metrics] endpoint moved from {running.metrics or 'off'} to {wanted.metrics or 'off'}")
        if self.web:
            out.append(f"[http] web page rebuilt: {running.web.get('endpoint') or 'off'} to {wanted.web.get('endpoint') or 'off'}")
        return out

    def restarts(self, running: Running, wanted: Running) -> list[str]:
        """``restart required: [table] key (running -> in the file)`` for each setting a reload keeps."""
        return [f"restart required: {key} ({running.fixed.get(key)} -> {wanted.fixed.get(key)})" for key in self.restart_required]


def _listener(item: tuple[str, str]) -> str:
    return f"{item[0]} tls={item[1]}"


def plan(running: Running, wanted: Running) -> Plan:
    """What reloading into ``wanted`` does to a daemon that runs ``running``."""
    return Plan(
        added=tuple(name for name in wanted.listeners if name not in running.listeners),
        removed=tuple(name for name in running.listeners if name not in wanted.listeners),
        changed=tuple(
            name for name, item in wanted.listeners.items() if name in running.listeners and running.listeners[name] != item
        ),
        metrics=running.metrics != wanted.metrics,
        web=dict(running.web) != dict(wanted.web),
        restart_required=tuple(key for key in FIXED_AT_START if running.fixed.get(key) != wanted.fixed.get(key)),
    )


def keeping_fixed(new: Config, running: Config) -> Config:
    """``new`` with the running FIXED_AT_START settings: what a reload adopts."""
    return attrs.evolve(
        new,
        spool=running.spool,
        state_dir=running.state_dir,
        hostname=running.hostname,
        control={**new.control, "socket": running.control["socket"]},
        tlsrpt_inbox=running.tlsrpt_inbox,
        dev=running.dev,
        cluster=running.cluster,
    )
