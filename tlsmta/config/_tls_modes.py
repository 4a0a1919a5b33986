"""The values of the ``tls`` options: outbound (global and delivery scopes) and per listener.

Configuration values, so here where the loader makes them; ``tlsmta.tls._policy``
decides with them.  Each is a ``StrEnum``: logs, ``tlsmta policy`` and JSON show
the word from the file.
"""

from __future__ import annotations

import enum


class OutboundTLS(enum.StrEnum):
    """``tls`` when sending: STARTTLS never, when offered, or always."""

    NO = "no"
    IFAVAILABLE = "ifavailable"
    REQUIRED = "required"


# ``dane = "required"`` (Postfix ``dane-only``): besides true (apply TLSA records where
# published) and false (ignore them), the word that makes usable TLSA records mandatory.
DANE_REQUIRED_WORD = "required"


class ListenerTLS(enum.StrEnum):
    """``tls`` of a ``[[listener]]``: none, STARTTLS offered, STARTTLS required before
    MAIL, RCPT and AUTH, or TLS from the first byte."""

    NO = "no"
    STARTTLS = "starttls"
    REQUIRED = "required"
    IMPLICIT = "implicit"

    @property
    def starttls(self) -> bool:
        """The listener offers STARTTLS (``starttls`` and ``required``)."""
        return self in (ListenerTLS.STARTTLS, ListenerTLS.REQUIRED)
