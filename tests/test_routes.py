"""Unit tests for tlsmta.routes: parsing the ``route`` option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tlsmta.config._routes import Route, RouteError, parse_route

SUBMISSION_PORT = 587
LAB_PORT = 2525
HIGHEST_PORT = 65535


@pytest.mark.parametrize("spec", ["mx", "MX", " mx"])
def test_mx(spec: str) -> None:
    """'mx' (any case) is MX routing, an SMTP hop."""
    route = parse_route(spec)
    assert route == Route("mx")
    assert not route.is_local
    assert str(route) == "mx"


def test_discard() -> None:
    """'discard' drops mail locally."""
    route = parse_route("discard")
    assert route == Route("discard")
    assert route.is_local
    assert str(route) == "discard"


def test_maildir_absolute() -> None:
    """maildir:PATH keeps an absolute path and is delivered locally."""
    route = parse_route("maildir:/var/mail/dev")
    assert route == Route("maildir", path="/var/mail/dev")
    assert route.is_local
    assert str(route) == "maildir:/var/mail/dev"


def test_maildir_relative_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative maildir path is made absolute against the current directory at parse time."""
    monkeypatch.chdir(tmp_path)
    route = parse_route("maildir:maildir")
    assert route.kind == "maildir"
    assert os.path.isabs(route.path)
    assert route.path == str(tmp_path / "maildir")


def test_maildir_path_may_contain_colons() -> None:
    """Everything after 'maildir:' is the path, colons included."""
    assert parse_route("maildir:/srv/a:b").path == "/srv/a:b"


def test_smtp_host() -> None:
    """smtp:HOST is a smarthost on the default port (port left unset)."""
    route = parse_route("smtp:relay.example.net")
    assert route == Route("smtp", host="relay.example.net", port=None)
    assert not route.is_local
    assert str(route) == "smtp:relay.example.net"


def test_smtp_host_port() -> None:
    """smtp:HOST:PORT sets the smarthost's port."""
    route = parse_route(f"smtp:relay.example.net:{SUBMISSION_PORT}")
    assert route == Route("smtp", host="relay.example.net", port=SUBMISSION_PORT)
    assert str(route) == f"smtp:relay.example.net:{SUBMISSION_PORT}"


def test_smtp_ipv6_with_port() -> None:
    """smtp:[v6addr]:PORT: brackets delimit an IPv6 address and are not part of the host."""
    route = parse_route(f"smtp:[::1]:{LAB_PORT}")
    assert route == Route("smtp", host="::1", port=LAB_PORT)
    assert str(route) == f"smtp:[::1]:{LAB_PORT}"


def test_smtp_ipv6_without_port() -> None:
    """smtp:[v6addr] without a port is accepted."""
    route = parse_route("smtp:[2001:db8::25]")
    assert route == Route("smtp", host="2001:db8::25", port=None)
    assert str(route) == "smtp:[2001:db8::25]"


def test_smtp_ipv4() -> None:
    """An IPv4 smarthost needs no brackets."""
    assert parse_route("smtp:192.0.2.25:25") == Route("smtp", host="192.0.2.25", port=25)


@pytest.mark.parametrize("port", [1, HIGHEST_PORT])
def test_smtp_port_bounds(port: int) -> None:
    """Ports 1 and 65535 are the valid extremes."""
    assert parse_route(f"smtp:relay.example:{port}").port == port


@pytest.mark.parametrize(
    "spec",
    [
        "mx",
        "discard",
        "maildir:/var/mail/dev",
        "smtp:relay.example.net",
        "smtp:relay.example.net:587",
        "smtp:[::1]:2525",
        "smtp:[::1]",
    ],
)
def test_str_round_trips(spec: str) -> None:
    """str() of a parsed route parses back to the same route (what `tlsmta policy` prints)."""
    route = parse_route(spec)
    assert str(route) == spec
    assert parse_route(str(route)) == route


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("smtp:", "smtp route needs a host"),
        ("smtp::25", "smtp route needs a host"),
        ("smtp:[]:25", "smtp route needs a host"),
        ("smtp:host:99999", "bad port '99999'"),
        (f"smtp:host:{HIGHEST_PORT + 1}", f"bad port '{HIGHEST_PORT + 1}'"),
        ("smtp:host:0", "bad port '0'"),
        ("smtp:host:-1", "bad port '-1'"),
        ("smtp:host:smtp", "bad port 'smtp'"),
        ("smtp:host:25:26", "bad port '25:26'"),
        ("smtp:host:", "bad port ''"),
        ("smtp:[::1]:", "bad port ''"),
        ("smtp:host:²", "bad port '²'"),
        ("smtp:host:２５", "bad port '２５'"),
        ("smtp:[::1", "unclosed '['"),
        ("smtp:[::1]2525", "unexpected '2525' after ']'"),
        ("maildir:", "maildir route needs a path"),
        ("maildir", "maildir route needs a path"),
        ("mx:foo", "route 'mx' takes no argument"),
        ("mx:", "route 'mx' takes no argument"),
        ("discard:all", "route 'discard' takes no argument"),
        ("lmtp:/run/lmtp", "written 'lmtp:unix:/run/lmtp'"),
        ("lmtp:", "lmtp route needs a unix socket or a host and port"),
        ("lmtp:unix:", "lmtp unix route needs a socket path"),
        ("lmtp:dovecot.example", "lmtp route needs a port"),
        ("lmtp:dovecot.example:0", "bad port '0'"),
        ("lmtp:bad..name:24", "is not a host name or IP address"),
        ("", "unknown route ''"),
        ("relay.example.net", "unknown route 'relay.example.net'"),
    ],
)
def test_bad_routes(spec: str, fragment: str) -> None:
    """Malformed routes raise RouteError (a ValueError) with a reason an operator can act on."""
    with pytest.raises(RouteError) as info:
        parse_route(spec)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)


def test_unknown_route_lists_the_choices() -> None:
    """The error for an unknown kind says which kinds exist."""
    with pytest.raises(RouteError, match=r"expected mx, smtp:HOST\[:PORT\], smtps:HOST\[:PORT\], maildir:PATH, discard, "
                                         r"tlsrpt, lmtp:unix:PATH or lmtp:HOST:PORT"):
        parse_route("uucp:host")


@pytest.mark.parametrize(
    ("spec", "host", "port"),
    [("smtps:relay.example.net", "relay.example.net", None), ("SMTPS:relay.example.net:4650", "relay.example.net", 4650),
     ("smtps:[2001:db8::1]:465", "2001:db8::1", 465)],
)
def test_smtps_is_a_smarthost_over_implicit_tls(spec: str, host: str, port: int | None) -> None:
    """smtps:HOST[:PORT] is an smtp route with implicit TLS, and survives the spool's round trip."""
    route = parse_route(spec)
    assert route == Route("smtp", host=host, port=port, implicit_tls=True)
    assert not route.is_local
    assert parse_route(str(route)) == route
    assert str(route).startswith("smtps:")
    assert parse_route(f"smtp:{spec.partition(':')[2]}").implicit_tls is False


def test_tlsrpt_route_is_spooled_not_local() -> None:
    """'tlsrpt' (no argument) takes reports; it goes through the spool, so it is not is_local."""
    route = parse_route("tlsrpt")
    assert (route, str(route), route.is_local) == (Route("tlsrpt"), "tlsrpt", False)
    with pytest.raises(RouteError, match="takes no argument"):
        parse_route("tlsrpt:/tmp")


def test_smtps_port_and_tls() -> None:
    """smtps: connects to 465 unless it names a port and always runs TLS; smtp: and mx keep the options."""
    from tlsmta.config import OutboundTLS

    assert parse_route("smtps:relay.example").port_for(25) == 465
    assert parse_route("smtps:relay.example:4650").port_for(25) == 4650
    assert parse_route("smtp:relay.example").port_for(2525) == 2525
    assert parse_route("smtps:relay.example").tls_for(OutboundTLS.NO) is OutboundTLS.REQUIRED
    assert parse_route("smtp:relay.example").tls_for(OutboundTLS.IFAVAILABLE) is OutboundTLS.IFAVAILABLE


def test_smtps_needs_a_host() -> None:
    """smtps: takes the same HOST[:PORT] as smtp: and refuses a bad one."""
    with pytest.raises(RouteError, match="bad port"):
        parse_route("smtps:relay.example.net:0")


@pytest.mark.parametrize("spec", ["smtp:relay example", "smtp:bad..name", "smtp:-x.example", "smtp:a/b"])
def test_smarthost_must_be_a_host(spec):
    """A smarthost that is neither a host name nor an IP address is refused."""
    with pytest.raises(RouteError):
        parse_route(spec)


@pytest.mark.parametrize(
    "spec, route, text",
    [
        ("lmtp:unix:/run/dovecot/lmtp", Route("lmtp", path="/run/dovecot/lmtp"), "lmtp:unix:/run/dovecot/lmtp"),
        ("LMTP:UNIX:/run/dovecot/lmtp", Route("lmtp", path="/run/dovecot/lmtp"), "lmtp:unix:/run/dovecot/lmtp"),
        ("lmtp:127.0.0.1:24", Route("lmtp", host="127.0.0.1", port=24), "lmtp:127.0.0.1:24"),
        ("lmtp:dovecot.example:2424", Route("lmtp", host="dovecot.example", port=2424), "lmtp:dovecot.example:2424"),
        ("lmtp:[::1]:24", Route("lmtp", host="::1", port=24), "lmtp:[::1]:24"),
    ],
)
def test_lmtp(spec: str, route: Route, text: str) -> None:
    """lmtp:unix:PATH and lmtp:HOST:PORT are LMTP hops (not local), printed back in the same form."""
    parsed = parse_route(spec)
    assert parsed == route
    assert not parsed.is_local
    assert parsed.over_unix_socket is (route.path is not None)
    assert str(parsed) == text
    assert parse_route(text) == parsed


def test_lmtp_relative_socket_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative socket path is taken from the working directory at load, as maildir: does."""
    monkeypatch.chdir(tmp_path)
    assert parse_route("lmtp:unix:run/lmtp") == Route("lmtp", path=os.path.join(str(tmp_path), "run/lmtp"))
