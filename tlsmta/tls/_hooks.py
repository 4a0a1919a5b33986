"""Loading ``module:function`` hooks named in the ``[hooks]`` table."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from tlsmta.config import Config, select_binding
from tlsmta.errors import TlsmtaError
from tlsmta.smtp import normalized_domain_of

log = Logger(namespace="tlsmta.hooks")


class HookError(TlsmtaError):
    """A hook named in the configuration cannot be loaded."""


def load_hook(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the callable."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as e:
        raise HookError(f"cannot import {module_name!r} for hook {spec!r}: {e}") from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookError(f"{module_name!r} has no {attr_path!r} (hook {spec!r})") from None
    if not callable(target):
        raise HookError(f"hook {spec!r} is not callable")
    return target


@attrs.frozen
class Hooks:
    """The loaded hooks; each is None when not configured."""

    outbound_tls_verify_callback: Callable[..., Any] | None = None
    inbound_tls_verify_callback: Callable[..., Any] | None = None
    outbound_tls_parameters: Callable[..., Any] | None = None
    outbound_binding: Callable[..., Any] | None = None

    def choose_binding(self, config: Config, sender: str, address: str, listener: str, domain: str) -> str:
        """The binding mail to ``address`` leaves through: the outbound_binding hook's choice,
        else the first matching [[binding_rule]], else default.  Asked at RCPT and again at
        each delivery attempt, so a reload's rules and bindings apply to queued mail too."""
        if self.outbound_binding is not None:
            try:
                chosen = self.outbound_binding(sender, address, listener)
            except Exception:
                log.failure("outbound_binding hook raised; using binding rules")
                chosen = None
            if chosen:
                if chosen == "default" or chosen in config.bindings:
                    return str(chosen)
                log.warn("outbound_binding hook chose unknown binding {binding}", binding=chosen)
        return select_binding(config, listener, normalized_domain_of(sender or ""), domain)


def load_hooks(specs: Mapping[str, str]) -> Hooks:
    """Load every configured hook; raise HookError naming the first that fails."""
    return Hooks(**{name: load_hook(spec) for name, spec in specs.items()})
