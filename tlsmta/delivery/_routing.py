"""Where a queued recipient goes: decided at each delivery attempt, never at arrival.

A message can wait in the queue across reloads; the route, the binding and
every delivery option come from the configuration running when it is tried,
so a changed ``route`` (or ``smtp_port``, ``tls``, ...) applies to mail
already queued, and nothing mixes the old configuration's route with the
new one's options.  The route and binding kept in the spool record are the
arrival's, for information only.
"""

from __future__ import annotations

from tlsmta.config import Config, Route, resolve
from tlsmta.storage import QueuedMessage, RecipientState
from tlsmta.tls import Hooks

# The listener names of mail tlsmta writes itself (DSNs, TLS-RPT reports): it leaves
# through the default binding, as it did when it was made; no hook is asked about it.
OWN_MAIL = frozenset({"dsn", "tlsrpt"})
# Mail whose route was given for the message itself, not by the configuration: the dev
# relay's Release to a smarthost goes where the operator said, whatever a reload changes.
ROUTED_BY_HAND = frozenset({"release"})


def destination_of(config: Config, hooks: Hooks, message: QueuedMessage, rcpt: RecipientState) -> tuple[Route, str]:
    """(route, binding) for ``rcpt`` by ``config``: the same choice RCPT made at arrival."""
    if message.listener in ROUTED_BY_HAND:
        return rcpt.route, rcpt.binding
    if message.listener in OWN_MAIL:
        binding = "default"
    else:
        binding = hooks.choose_binding(config, message.sender, rcpt.address, message.listener, rcpt.domain)
    return resolve(config, rcpt.domain, binding)["route"].value, binding
