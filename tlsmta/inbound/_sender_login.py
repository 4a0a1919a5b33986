"""Who may send as whom on a submission listener, sans I/O (Postfix's ``smtpd_sender_login_maps``).

``sender_login_maps`` lists, for a sender address or a whole domain
(``@domain``), the AUTH logins that may use it.  An authenticated client
whose MAIL FROM is not listed for its login gets ``553 5.7.1``; the exact
address is looked up first, and its own entry decides (the domain's entry
is only for addresses not listed).  The null sender ``<>`` (bounces, read
receipts) names no one and is allowed, as Postfix does.
"""

from __future__ import annotations

from tlsmta.config import AddressMap
from tlsmta.inbound._acceptance import Refusal


def check_sender_login(maps: AddressMap | None, login: str | None, sender: str | None) -> None:
    """Refusal unless ``login`` may use the reverse-path ``sender``; no maps or no AUTH: nothing to check."""
    if maps is None or login is None or not sender:
        return
    owners = maps.lookup(sender)
    if owners is not None and login in owners:
        return
    reason = "not in sender_login_maps" if owners is None else f"listed for {', '.join(owners)}"
    raise Refusal(553, f"5.7.1 <{sender}>: Sender address rejected: not owned by user {login}", reason)
