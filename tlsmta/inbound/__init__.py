"""Receiving mail: the ESMTP server shell (``server``, a subclass of
``twisted.mail.smtp.ESMTP`` and its factory, around
``tlsmta.smtp.server_session``), relay control (``acceptance``), AUTH users
(``auth``, and the dev relay's any-credentials AUTH), recipient maps and alias expansion (``recipients``), the
sender-login check (``sender_login``), ``Date:``/``Message-ID:`` on
submission (``submission``), the PROXY header from trusted proxies (``proxyheader``, with
Twisted's private header parsers behind ``haproxy_private``), the
``reuseport:`` endpoint, the ``Received:`` header, where an accepted
message goes (``intake``), and milters (``milter_protocol``, pure; ``milter``,
the shell).

May import smtp, tls, discovery (reverse names), storage, reporting and
config; never delivery (the outbound stack).

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.inbound._auth import AnyCredentials, AuthFileError, Credentials, UserDB, hash_password
from tlsmta.inbound._intake import Intake
from tlsmta.inbound._proxyheader import listen_smtp
from tlsmta.inbound._received import with_keyword
from tlsmta.inbound._server import InboundFactory, ListenerRuntime

__all__ = [
    "AnyCredentials",
    "AuthFileError",
    "Credentials",
    "hash_password",
    "InboundFactory",
    "Intake",
    "listen_smtp",
    "ListenerRuntime",
    "UserDB",
    "with_keyword",
]
