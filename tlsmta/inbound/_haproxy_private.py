"""PROXY header parsing, borrowed from Twisted's private haproxy modules.

Twisted's only public haproxy API is ``proxyEndpoint``, which wraps an
endpoint in the stock ``HAProxyWrappingFactory``: it believes any client and
starts the wrapped protocol before the header arrives (see
:mod:`tlsmta.inbound._proxyheader`), so it cannot be used.  The wrapper tlsmta
needs is built on the public ``twisted.protocols.policies.ProtocolWrapper``;
only the parsing of the header (v1 text, v2 binary) is Twisted's, reached
here and nowhere else (``tests/test_private_apis.py`` checks both).

Private names used, from ``twisted.protocols.haproxy``:

- ``_v1parser.V1Parser`` (``PROXYSTR``) and ``_v2parser.V2Parser``
  (``PREFIX``): ``feed(data)`` returns ``(ProxyInfo, remaining bytes)`` once
  the header is whole and ``(None, None)`` before; the v2 parser needs the
  first 16 bytes (up to the length field) in its first ``feed``;
- ``_exceptions.InvalidProxyHeader``, raised by ``feed`` for a bad header;
- ``_info.ProxyInfo``: ``source`` and ``destination``, each an ``IAddress``
  or None (LOCAL and UNKNOWN headers name no client).

Checked against Twisted 26.10.0.
"""

from __future__ import annotations

from typing import Literal

from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

__all__ = ["HeaderParser", "InvalidProxyHeader", "ProxyInfo", "parser_for"]

HeaderParser = V1Parser | V2Parser


def parser_for(head: bytes) -> HeaderParser | Literal[False] | None:
    """The parser for a header starting with ``head``; None: undecided yet; False: not a header."""
    if len(head) >= 13 and head[:12] == V2Parser.PREFIX:
        if head[12] & 0xF0 != 0x20:
            return False
        return V2Parser() if len(head) >= 16 else None  # Twisted's parser wants the length field at once
    if head.startswith(V1Parser.PROXYSTR):
        return V1Parser()
    if V2Parser.PREFIX.startswith(head[:12]) or V1Parser.PROXYSTR.startswith(head):
        return None
    return False
