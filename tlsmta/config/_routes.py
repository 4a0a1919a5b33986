"""Where accepted mail goes: the ``route`` option, parsed.

``mx`` (the default), ``smtp:HOST[:PORT]`` (a smarthost; ``[v6addr]:PORT``
for IPv6), ``smtps:HOST[:PORT]`` (a smarthost spoken to over implicit TLS,
RFC 8314 "submissions"; Postfix ``smtp_tls_wrappermode``: the handshake comes
before the greeting, port 465 unless given), ``maildir:PATH``, ``discard``,
``tlsrpt`` (the domain's mail is TLS-RPT reports other senders send us, RFC
8460: parsed and kept under state_dir, never delivered on), and
``lmtp:unix:PATH`` or ``lmtp:HOST:PORT`` (RFC 2033, a mailbox server such as
Dovecot; LMTP has no well-known port, so the port is required).  A Maildir
path may name each recipient's own mailbox: ``%d`` is its domain, ``%u`` its
local part (both lower case), ``%%`` a ``%`` (``maildir:/var/mail/%d/%u/``).
"""

from __future__ import annotations

import ipaddress
import os
import re

import attrs
import idna

from tlsmta.config._tls_modes import OutboundTLS
from tlsmta.errors import TlsmtaError

SMTPS_PORT = 465  # RFC 8314 7.3: the port an smtps: route connects to unless it names one


class RouteError(TlsmtaError, ValueError):
    """A route string that does not parse."""


@attrs.frozen
class Route:
    """A parsed route; ``kind`` is one of mx, smtp, maildir, discard, tlsrpt, lmtp.

    An ``smtps:`` route is kind smtp with ``implicit_tls``: TLS from the first byte.
    An ``lmtp:unix:`` route has the socket's ``path``, an ``lmtp:HOST:PORT`` one host and port."""

    kind: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    implicit_tls: bool = False

    @property
    def is_local(self) -> bool:
        """Written by the inbound side itself, without the spool or an SMTP hop (``tlsrpt`` mail is
        spooled first: it is parsed after the 250, so that nothing answered 250 is lost)."""
        return self.kind in ("maildir", "discard")

    def port_for(self, smtp_port: int) -> int:
        """The port an SMTP hop on this route connects to: the route's own, else 465 for smtps:,
        else ``smtp_port`` (the option, for MX and smtp: routes alike)."""
        return self.port or (SMTPS_PORT if self.implicit_tls else smtp_port)

    def tls_for(self, tls: OutboundTLS) -> OutboundTLS:
        """The ``tls`` a hop on this route runs with: an smtps: hop has TLS or nothing (port 465
        speaks no plain text), so at least ``required``; an lmtp:unix: socket is local and has
        no TLS (``no``); any other route, the option as set."""
        if self.over_unix_socket:
            return OutboundTLS.NO
        return OutboundTLS.REQUIRED if self.implicit_tls else tls

    def maildir_for(self, local: str, domain: str) -> str:
        """The Maildir of the recipient ``local@domain`` (%d, %u and %% expanded); RouteError when
        the address cannot name a directory (a ``/``, ``..``, nothing)."""
        assert self.path is not None
        names = {"d": domain.lower(), "u": local.lower(), "%": "%"}

        def expand(match: re.Match[str]) -> str:
            part = names[match[1]]
            if match[1] != "%" and ("/" in part or "\0" in part or part in ("", ".", "..")):
                raise RouteError(f"{part!r} cannot name a mailbox directory")
            return part

        return _EXPANSIONS.sub(expand, self.path)

    def __str__(self) -> str:
        if self.kind == "smtp":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            scheme = "smtps" if self.implicit_tls else "smtp"
            return f"{scheme}:{host}" + (f":{self.port}" if self.port else "")
        if self.kind == "maildir":
            return f"maildir:{self.path}"
        if self.kind == "lmtp":
            return _lmtp_text(self)
        return self.kind

    @property
    def over_unix_socket(self) -> bool:
        """An ``lmtp:unix:`` route: a local socket, where TLS has no place."""
        return self.kind == "lmtp" and self.path is not None


def parse_route(spec: str) -> Route:
    """Parse a route string; raise RouteError with an operator-facing reason."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("mx", "discard", "tlsrpt"):
        if sep:
            raise RouteError(f"route {kind!r} takes no argument (got {spec!r})")
        return Route(kind)
    if kind == "maildir":
        if not rest:
            raise RouteError("maildir route needs a path: 'maildir:/var/mail/dev'")
        if {m[1] for m in _EXPANSIONS.finditer(rest)} - {"d", "u", "%"} or "%" in _EXPANSIONS.sub("", rest):
            raise RouteError(f"maildir route {spec!r}: only %d (domain), %u (local part) and %% may follow a '%'")
        return Route("maildir", path=os.path.abspath(rest))
    if kind in ("smtp", "smtps"):
        host, port = _host_port(rest, spec)
        return Route("smtp", host=host, port=port, implicit_tls=kind == "smtps")
    if kind == "lmtp":
        return _lmtp_route(rest, spec)
    raise RouteError(
        f"unknown route {spec!r} (expected mx, smtp:HOST[:PORT], smtps:HOST[:PORT], maildir:PATH, discard, tlsrpt, "
        "lmtp:unix:PATH or lmtp:HOST:PORT)"
    )


def _lmtp_route(rest: str, spec: str) -> Route:
    if not rest:
        raise RouteError("lmtp route needs a unix socket or a host and port: 'lmtp:unix:/run/dovecot/lmtp', 'lmtp:HOST:24'")
    if rest[:5].lower() == "unix:":
        if not rest[5:]:
            raise RouteError(f"lmtp unix route needs a socket path: 'lmtp:unix:/run/dovecot/lmtp' (got {spec!r})")
        return Route("lmtp", path=os.path.abspath(rest[5:]))
    if rest.startswith("/"):
        raise RouteError(f"an lmtp unix socket is written 'lmtp:unix:{rest}' (got {spec!r})")
    host, port = _host_port(rest, spec)
    if port is None:
        raise RouteError(f"lmtp route needs a port (LMTP has no well-known one): 'lmtp:HOST:24' (got {spec!r})")
    return Route("lmtp", host=host, port=port)


def _lmtp_text(route: Route) -> str:
    if route.path is not None:
        return f"lmtp:unix:{route.path}"
    host = f"[{route.host}]" if route.host and ":" in route.host else route.host
    return f"lmtp:{host}:{route.port}"


def _host_port(rest: str, spec: str) -> tuple[str, int | None]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise RouteError(f"unclosed '[' in {spec!r}")
        port_text = tail[1:] if tail.startswith(":") else tail
        if tail and not tail.startswith(":"):
            raise RouteError(f"unexpected {tail!r} after ']' in {spec!r}")
        colon = bool(tail)
    else:
        host, colon_text, port_text = rest.partition(":")
        colon = bool(colon_text)
    if not host:
        raise RouteError(f"smtp route needs a host: 'smtp:relay.example.net:587' (got {spec!r})")
    if not _valid_host(host):
        raise RouteError(f"{host!r} is not a host name or IP address in {spec!r}")
    if not colon:
        return host, None
    # isdigit() alone admits '²' and fullwidth digits: ASCII digits only.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise RouteError(f"bad port {port_text!r} in {spec!r}")
    return host, int(port_text)


_EXPANSIONS = re.compile(r"%(.)", re.DOTALL)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_host = idna.encode(host.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError:
        ascii_host = host.rstrip(".")
    return all(_LABEL.match(label) for label in ascii_host.split("."))
