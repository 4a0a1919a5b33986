"""Who receives mail for a local domain, sans I/O: mailboxes and virtual aliases, expanded at RCPT.

A listener with ``recipient_maps`` knows its users: a recipient in one of
its ``local_domains`` is accepted only when the maps list it, as a mailbox
(a key alone, or a key whose values include itself, as in Postfix's
virtual(5)), as an alias (its values, expanded in turn), or through its
domain's catch-all (``@domain``; a value ``@other`` keeps the local part).
Anyone else gets ``550 5.1.1`` at RCPT, so no mail for a mistyped address
is accepted and bounced later.

Expansion happens at RCPT: the envelope holds the final addresses, each
delivered on its own (``Delivered-To:`` names it).  An address reached
twice is delivered once; a chain deeper than MAX_ALIAS_DEPTH or wider than
MAX_EXPANSION, or an alias that loops without reaching a mailbox, is
refused with ``550 5.4.6``.  Targets outside the local domains are final
(forwarding).  ``postmaster`` of a local domain is always accepted (RFC 5321
4.5.1), as its own mailbox when the maps do not say otherwise.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from tlsmta.config import AddressMap, Route, RouteError, split_address
from tlsmta.inbound._acceptance import Refusal

MAX_ALIAS_DEPTH = 20  # nested aliases (Postfix's virtual_alias_recursion_limit is 1000: ours is for people)
MAX_EXPANSION = 1000  # final addresses one RCPT may become (Postfix's virtual_alias_expansion_limit)


def _unknown(address: str, reason: str) -> Refusal:
    return Refusal(550, f"5.1.1 <{address}>: Recipient address rejected: User unknown", reason)


def _expansion_failed(address: str, reason: str) -> Refusal:
    return Refusal(550, f"5.4.6 <{address}>: Recipient address rejected: alias expansion failed", reason)


@attrs.frozen
class _Walk:
    """One RCPT's expansion in progress."""

    original: str
    maps: AddressMap
    local_domains: Collection[str]
    final: list[str] = attrs.field(factory=list)
    seen: set[str] = attrs.field(factory=set)

    def visit(self, address: str, depth: int) -> None:
        local, domain = split_address(address)
        key = f"{local}@{domain}"
        if key in self.seen:
            return  # reached before: delivered once (and a loop ends here)
        self.seen.add(key)
        if domain not in self.local_domains:
            self._deliver(address)
            return
        values = self.maps.lookup(address)
        if values is None:
            if depth == 0 and local == "postmaster":
                values = ()
            elif depth == 0:
                raise _unknown(self.original, "not in recipient_maps")
            else:
                raise _unknown(self.original, f"alias target {address} is not in recipient_maps")
        if not values:
            self._deliver(address)
            return
        if depth >= MAX_ALIAS_DEPTH:
            raise _expansion_failed(self.original, f"aliases nested deeper than {MAX_ALIAS_DEPTH}")
        for value in values:
            target = local + value if value.startswith("@") else value
            if split_address(target) == (local, domain):
                self._deliver(address)  # an alias that includes itself keeps a copy
            else:
                self.visit(target, depth + 1)

    def _deliver(self, address: str) -> None:
        self.final.append(address)
        if len(self.final) > MAX_EXPANSION:
            raise _expansion_failed(self.original, f"more than {MAX_EXPANSION} addresses")


def expand_recipient(address: str, maps: AddressMap, local_domains: Collection[str]) -> tuple[str, ...]:
    """The final addresses mail for ``address`` (in ``local_domains``) goes to; Refusal otherwise."""
    walk = _Walk(address, maps, local_domains)
    walk.visit(address, 0)
    if not walk.final:
        raise _expansion_failed(address, "the aliases loop without reaching a mailbox")
    return tuple(walk.final)


def check_mailbox_name(address: str, route: Route) -> None:
    """A ``maildir:`` route with %d/%u must make a directory of the address: 550 5.1.3 when it cannot."""
    if route.kind != "maildir":
        return
    try:
        route.maildir_for(*split_address(address))
    except RouteError as e:
        raise Refusal(550, f"5.1.3 <{address}>: Recipient address rejected: bad mailbox name", str(e)) from None
