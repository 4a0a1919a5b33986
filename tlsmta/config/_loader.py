"""Configuration: TOML loading, validation and scope resolution.

Everything here is pure apart from reading the file itself and checking
that referenced certificate and CA files exist and load.  Validation
collects every problem it finds so an operator fixes a file in one pass;
each problem names the file, the table and the key.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

import attrs

from tlsmta.config._address_maps import AddressMap, address_value, load_address_maps, login_value
from tlsmta.config._dev_auth import open_relays
from tlsmta.config._dkim import DkimDomain, parse_selector
from tlsmta.config._door import DnsblZone, Rate, parse_dnsbl, parse_rate
from tlsmta.config._endpoints import overlaps, port_problem, tcp_address
from tlsmta.config._milter_addresses import milter_addresses
from tlsmta.config._redis_address import RedisAddress, parse_redis_url
from tlsmta.config._routes import Route, RouteError, parse_route
from tlsmta.config._tls_modes import DANE_REQUIRED_WORD, ListenerTLS, OutboundTLS
from tlsmta.errors import TlsmtaError
from tlsmta.smtp import normalize_domain

# -- errors -----------------------------------------------------------------


@attrs.frozen
class Problem:
    """One thing wrong with a configuration file."""

    file: str
    table: str
    key: str | None
    why: str

    def __str__(self) -> str:
        where = f"[{self.table}]" if self.table else "(top level)"
        if self.key is not None:
            where += f" {self.key}"
        return f"{self.file}: {where}: {self.why}"


class ConfigError(TlsmtaError):
    """A configuration file is unusable; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# -- value checkers -----------------------------------------------------------
# A checker takes the raw TOML value and returns the validated value or
# raises ValueError with a message meant for the operator.

Checker = Callable[[Any], Any]
StrEnumT = TypeVar("StrEnumT", bound=enum.StrEnum)


def _enum(*choices: str) -> Checker:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")
        return value.lower()

    return check


def _enum_of(kind: type[StrEnumT]) -> Checker:
    """A value of ``kind``, written as one of its words (any case)."""
    check_word = _enum(*kind)

    def check(value: Any) -> StrEnumT:
        return kind(check_word(value))

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false (got {value!r})")
    return value


def _dane(value: Any) -> bool | str:
    """``dane``: true, false, or ``"required"`` (no usable TLSA records: the MX is not used)."""
    if isinstance(value, str) and value.lower() == DANE_REQUIRED_WORD:
        return DANE_REQUIRED_WORD
    if not isinstance(value, bool):
        raise ValueError(f'must be true, false or "{DANE_REQUIRED_WORD}" (got {value!r})')
    return value


def _int(minimum: int = 0, maximum: int | None = None) -> Checker:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer (got {value!r})")
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise ValueError(f"must be at least {minimum}{upper} (got {value})")
        return value

    return check


_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(s|m|h|d)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(off: bool = False) -> Checker:
    """Seconds, as a number or Postfix-style ``"30s"``, ``"10m"``, ``"4h"``, ``"5d"``; more than zero,
    or ``off``: zero (or ``"0h"``) turns the feature off (None)."""

    def check(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f'must be seconds or a duration like "30s", "10m", "4h", "5d" (got {value!r})')
        if isinstance(value, str):
            match = _DURATION.fullmatch(value.strip().lower())
            if match is None:
                raise ValueError(f'must be seconds or a duration like "30s", "10m", "4h", "5d" (got {value!r})')
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
        else:
            seconds = float(value)
        if seconds == 0 and off:
            return None
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"must be more than zero{' (0 turns it off)' if off else ''} (got {value!r})")
        return seconds

    return check


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string (got {value!r})")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of non-empty strings (got {value!r})")
    return tuple(value)


# A dev relay tag: what [http] tag_rules may name and the page and API accept.
TAG_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
TAG_RULE_FIELDS = ("subject", "from", "to", "body")
_TAG_RULE = re.compile(rf"({TAG_PATTERN})=({'|'.join(TAG_RULE_FIELDS)}):(.+)", re.S)


def _tag_rules(value: Any) -> tuple[tuple[str, str, str], ...]:
    """The dev relay's automatic tags: ``"invoice=subject:Invoice"`` tags a message
    whose Subject contains "Invoice" (any case); as (tag, field, text) triples."""
    rules = []
    for rule in _str_list(value):
        match = _TAG_RULE.fullmatch(rule)
        if match is None:
            raise ValueError(f'each rule must be "TAG=FIELD:TEXT", FIELD one of subject, from, to, body (got {rule!r})')
        rules.append((match.group(1).lower(), match.group(2), match.group(3)))
    return tuple(rules)


def _sha256_pin(text: str) -> str:
    """``sha256:`` and 32 bytes in base64 (HPKP style) or hex (colons allowed, as Postfix logs them) -> hex."""
    algorithm, _, data = text.partition(":")
    if algorithm.lower() != "sha256" or not data:
        raise ValueError(f"{text!r} is not a pin: expected 'sha256:' and the SHA-256 in base64 or hex")
    digest = None
    hexdigits = data.replace(":", "")
    if len(hexdigits) == 64:
        try:
            digest = bytes.fromhex(hexdigits)
        except ValueError:
            pass
    if digest is None and len(data) == 44:
        try:
            digest = base64.b64decode(data, validate=True)
        except binascii.Error:
            pass
    if digest is None or len(digest) != 32:
        raise ValueError(f"{text!r} is not a pin: the SHA-256 must be 64 hex digits or 44 base64 characters")
    return digest.hex()


def _pins(value: Any) -> tuple[str, ...]:
    """A list of ``sha256:...`` pins (several, for key rotation), kept as lower-case hex."""
    return tuple(dict.fromkeys(_sha256_pin(pin) for pin in _str_list(value)))
def _groups(value: Any) -> tuple[str, ...]:
    """Key-exchange group names, most preferred first (OpenSSL names: X25519MLKEM768, X25519, secp256r1)."""
    names = _str_list(value)
    if not names:
        raise ValueError("must name at least one key-exchange group")
    for name in names:
        if not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"{name!r} is not a group name (one name per list item)")
    return names


def _path(value: Any) -> str:
    """A directory path; relative paths are taken from the directory tlsmta starts in."""
    return os.path.abspath(_str(value))


def _readable_file(value: Any) -> str:
    path = _str(value)
    if not os.path.isfile(path):
        raise ValueError(f"file {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file {path!r} is not readable")
    return path


def _files_or_none(value: Any) -> str | tuple[str, ...] | None:
    """Certificate/key paths: one, or a list (one chain per key type); ``none`` unsets an inherited one."""
    if value == "none":
        return None
    return _readable_files(value) if isinstance(value, list) else _readable_file(value)


def _readable_files(value: Any) -> tuple[str, ...]:
    """One file, or a non-empty list of them (a chain per key type, Exim-style)."""
    if isinstance(value, list) and value:
        return tuple(_readable_file(item) for item in value)
    return (_readable_file(value),)


def _address_maps(value_check: Callable[[str], str]) -> Checker:
    """One map file or a list of them (postmap text format, :mod:`tlsmta.config._address_maps`), read now."""

    def check(value: Any) -> AddressMap:
        return load_address_maps(_readable_files(value), value_check)

    return check


def _listener_certificates(value: Any) -> tuple[str, ...] | str:
    """A listener's certificate chain files (one per key type), or the word ``auto``."""
    return "auto" if value == "auto" else _readable_files(value)


def _chains(certificates: tuple[str, ...], keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if len(certificates) != len(keys):
        raise ValueError(f"{len(keys)} key file(s) for {len(certificates)} certificate file(s): one key per certificate, in order")
    return tuple(zip(certificates, keys))


def _sni_certificates(value: Any) -> tuple[tuple[tuple[str, str], ...], ...]:
    """``tls_sni``: a list of ``{certificate = ..., key = ...}`` tables, each a file or a list (one per key type)."""
    if not isinstance(value, list):
        raise ValueError("must be a list of tables: {certificate = \"...\", key = \"...\"}")
    out = []
    for number, entry in enumerate(value, 1):
        if not isinstance(entry, dict) or set(entry) != {"certificate", "key"}:
            raise ValueError(f"entry {number}: must be a table with exactly certificate and key (got {entry!r})")
        try:
            out.append(_chains(_readable_files(entry["certificate"]), _readable_files(entry["key"])))
        except ValueError as e:
            raise ValueError(f"entry {number}: {e}") from None
    return tuple(out)


def _ca_location(value: Any) -> str:
    path = _str(value)
    if not (os.path.isfile(path) or os.path.isdir(path)):
        raise ValueError(f"CA file or directory {path!r} does not exist")
    return path


def _rate(value: Any) -> tuple[int, float]:
    """``"N/PERIOD"``: N messages per PERIOD (a duration), as (N, seconds)."""
    count, slash, period = _str(value).partition("/")
    if not slash or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f'must be "N/PERIOD" with N at least 1, like "600/1h" (got {value!r})')
    seconds = _duration()(period.strip())
    assert seconds is not None
    return int(count), seconds


def _redis_url(value: Any) -> RedisAddress:
    return parse_redis_url(_str(value))


def _route(value: Any) -> Route:
    try:
        return parse_route(_str(value))
    except RouteError as e:
        raise ValueError(str(e)) from None


TLS_VERSIONS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_PROTOCOL_NAMES = {
    "ALL": TLS_VERSIONS,
    "SSLv3": (),  # never supported; accepted so Momentum strings parse
    "TLSv1": ("TLSv1.0",),
    **{v: (v,) for v in TLS_VERSIONS},
}


def parse_protocols(spec: str) -> frozenset[str]:
    """Parse a Momentum-style protocol list such as ``+ALL:-TLSv1.0``.

    Returns the set of allowed TLS versions; terms apply left to right.
    """
    allowed: set[str] = set()
    for term in spec.split(":"):
        term = term.strip()
        if not term:
            continue
        sign, name = (term[0], term[1:]) if term[0] in "+-" else ("+", term)
        if name not in _PROTOCOL_NAMES:
            raise ValueError(f"unknown protocol {name!r} in {spec!r}")
        versions = set(_PROTOCOL_NAMES[name])
        allowed = allowed | versions if sign == "+" else allowed - versions
    if not allowed:
        raise ValueError(f"{spec!r} allows no protocol version")
    return frozenset(allowed)


def _protocols(value: Any) -> frozenset[str]:
    return parse_protocols(_str(value))


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in _str_list(value):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network") from None
    return tuple(nets)


def _domains(value: Any) -> frozenset[str]:
    return frozenset(normalize_domain(d) for d in _str_list(value))


def _hook(value: Any) -> str:
    spec = _str(value)
    module, sep, func = spec.partition(":")
    if not sep or not module or not func:
        raise ValueError(f"must look like 'package.module:function' (got {spec!r})")
    return spec


class Environment(Protocol):
    """The checks that need this machine: OpenSSL, key files, hook imports, users files.

    Each returns why the value cannot be used, or None.  The loader asks them
    where the option is validated, so their problems stand in file order
    beside the syntax ones; ``tlsmta.app._preflight`` has the real checks.
    """

    def ca_file(self, path: str) -> str | None:
        """A CA file or directory that exists; whether it holds certificates."""
        ...

    def cipher_list(self, text: str) -> str | None: ...

    def tls13_suites(self, text: str) -> str | None: ...

    def groups(self, names: tuple[str, ...]) -> str | None:
        """Key-exchange group names: whether the OpenSSL tlsmta runs on offers each."""
        ...

    def hook(self, spec: str) -> str | None: ...

    def chains(self, chains: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
        """None, or the config key at fault (tls_certificate / tls_key) and why: each (certificate, key)
        pair loads and matches, and no two share a key type (OpenSSL holds one per type)."""
        ...

    def sni_certificates(self, entries: tuple[tuple[tuple[str, str], ...], ...]) -> str | None:
        """Why a ``tls_sni`` entry cannot be served (as :meth:`chains`, and a DNS name to match)."""
        ...

    def users_file(self, path: str) -> str | None: ...

    def endpoint(self, text: str) -> str | None:
        """A server endpoint string: whether tlsmta could listen with it (not whether the port is free)."""
        ...

    def dkim_key(self, path: str) -> str | None:
        """Whether a DKIM key file holds an RSA or Ed25519 private key tlsmta can sign with."""
        ...

    def commit(self, way: str) -> str | None:
        """Whether this kernel can commit received messages ``way`` (syncfs reports write errors from Linux 5.8)."""
        ...


class SyntaxOnly:
    """An :class:`Environment` that finds nothing wrong: syntax and data checks only."""

    def ca_file(self, path: str) -> str | None:
        return None

    def cipher_list(self, text: str) -> str | None:
        return None

    def tls13_suites(self, text: str) -> str | None:
        return None

    def groups(self, names: tuple[str, ...]) -> str | None:
        return None

    def hook(self, spec: str) -> str | None:
        return None

    def chains(self, chains: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
        return None

    def sni_certificates(self, entries: tuple[tuple[tuple[str, str], ...], ...]) -> str | None:
        return None

    def users_file(self, path: str) -> str | None:
        return None

    def endpoint(self, text: str) -> str | None:
        return None

    def dkim_key(self, path: str) -> str | None:
        return None

    def commit(self, way: str) -> str | None:
        return None


SYNTAX_ONLY = SyntaxOnly()

# The dev relay's TLS lab modes (tlsmta.devrelay makes their certificates).
CERTIFICATE_LAB_MODES = ("good", "expired", "wrong-name", "untrusted", "self-signed")
LAB_MODES = (*CERTIFICATE_LAB_MODES, "handshake-fail", "no-starttls")
BAD_CERTIFICATE_LAB_MODES = CERTIFICATE_LAB_MODES[1:]  # a client that goes on with one of these did not verify


def _endpoint(value: Any) -> str:
    """A server endpoint string; a TCP port is checked here, the rest by the Environment (Twisted's parser)."""
    text = _str(value)
    why = port_problem(text)
    if why is not None:
        raise ValueError(why)
    return text


def _http_url(value: Any) -> str:
    """An absolute http:// or https:// URL with a host, as ASCII (Twisted's Agent takes bytes)."""
    text = _str(value)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or not text.isascii():
        raise ValueError(f"must be an http:// or https:// URL with a host, in ASCII (got {text!r})")
    return text


def _every_route(global_options: Mapping[str, Any], domains: Mapping[str, Mapping[str, Any]],
                 scopes: list[ScopeTable]) -> list[Route | None]:
    """Each route the configuration sets (None: the global one is not set, so mx)."""
    tables = [domains, *(scope.domains for scope in scopes)]
    return [global_options.get("route"), *(scope.options.get("route") for scope in scopes),
            *(options.get("route") for table in tables for options in table.values())]


def _address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


# -- option tables -----------------------------------------------------------


@attrs.frozen
class Option:
    """A configuration option: how to check it and its built-in default."""

    check: Checker
    default: Any = None
    help: str = ""
    environment: str | None = None  # the Environment method that checks the value on this machine


# Options valid in every delivery scope (global, binding_group, binding,
# domain and the nested domain scopes), resolved per (binding, domain).
DELIVERY_OPTIONS: dict[str, Option] = {
    "tls": Option(_enum_of(OutboundTLS), OutboundTLS.NO, "use STARTTLS when sending"),
    "tls_verify": Option(_enum("no", "ca", "host", "optional"), "no", "check the server certificate"),
    "tls_ca": Option(_ca_location, None, "trust anchors; default: system store", "ca_file"),
    "tls_certificate": Option(_files_or_none, None, "client certificate, or a list (one per key type)"),
    "tls_key": Option(_files_or_none, None, "client key, or a list in the certificates' order"),
    "tls_ifavailable_fallback": Option(_bool, True, "plain-text retry after a failed handshake"),
    # Postfix's "fingerprint" level: when set, the server key's SPKI SHA-256 must be one of these
    # (STARTTLS required, no fallback); the CA chain and the names are not looked at.
    "tls_pins": Option(_pins, (), 'SPKI pins, "sha256:BASE64" or "sha256:HEX"; set: they decide the certificate check'),
    "tls_remember_broken": Option(_duration(off=True), None,
                                  "after a fallback, go straight to plain text to that MX host for this long; 0: off"),
    "tls_protocols": Option(_protocols, parse_protocols("+ALL"), "allowed protocol versions"),
    "tls_ciphers": Option(_str, None, "OpenSSL cipher list (TLS 1.2 and below)", "cipher_list"),
    "tlsv13_ciphersuites": Option(_str, None, "OpenSSL TLS 1.3 ciphersuites", "tls13_suites"),
    "tls_groups": Option(
        _groups, None, "key-exchange groups, most preferred first; default: X25519MLKEM768 (if OpenSSL has it), "
        "X25519, secp256r1, secp384r1", "groups"
    ),
    "route": Option(_route, parse_route("mx"), "where mail for the domain goes"),
    "smtp_port": Option(_int(1, 65535), 25, "port for MX and smarthost routes"),
    "max_connections": Option(_int(1), 20, "connections per destination"),
    "max_messages_per_connection": Option(_int(1), 100, "messages per SMTP session"),
    # Postfix's smtp_connection_cache_time_limit: mail that trickles in (a relay's) finds the
    # connection, and its TLS session, still open instead of paying for new ones.
    "connection_cache_time": Option(_duration(off=True), 2.0, "how long a connection with nothing left to "
                                    "send waits for more mail to the same destination before QUIT; 0: QUIT at once"),
    "source_address": Option(_address, None, "local address to connect from"),
    "ehlo_hostname": Option(_str, None, "name sent in EHLO; default: global hostname"),
    "mta_sts": Option(_bool, True, "apply the recipient domain's MTA-STS policy (RFC 8461); false opts out"),
    "dane": Option(_dane, True, 'apply DANE TLSA records of DNSSEC-signed MX hosts (RFC 7672); false opts out, '
                                '"required" defers (4.7.5) an MX without usable TLSA records'),
    # Outbound timeouts (Postfix smtp_*_timeout; RFC 5321 4.5.3.2 minimums as defaults).
    "connect_timeout": Option(_duration(), 30.0, "TCP connect to a mail host"),
    "greeting_timeout": Option(_duration(), 300.0, "the server's 220 banner"),
    "command_timeout": Option(_duration(), 300.0, "the reply to EHLO, MAIL, RCPT and other commands"),
    "data_timeout": Option(_duration(), 180.0, "the 354 to DATA, and the server taking each block of the body"),
    "data_end_timeout": Option(_duration(), 600.0, "the reply to the final dot"),
    # Per-destination back-off: after this many consecutive connection-level failures (no host
    # answered usefully), attempts to the destination wait, doubling from min to max; a success resets.
    "destination_backoff_after": Option(_int(0), 5, "consecutive connection failures before back-off; 0: never"),
    "destination_backoff_min": Option(_duration(), 300.0, "first back-off delay"),
    "destination_backoff_max": Option(_duration(), 3600.0, "longest back-off delay"),
    # A fleet sharing one Redis ([cluster]): connections to the destination from all nodes together.
    "cluster_max_connections": Option(_int(1), None, "fleet-wide concurrent connections per destination and binding; "
                                      "default: no fleet cap"),
    "cluster_message_rate": Option(_rate, None, 'fleet-wide messages per destination and binding, "N/PERIOD" '
                                   '(e.g. "600/1h": a burst of up to N, then one every PERIOD/N); default: no limit'),
}

GLOBAL_ONLY_OPTIONS: dict[str, Option] = {
    "hostname": Option(_str, None, "banner and EHLO name; default: this host's FQDN"),
    "state_dir": Option(_path, "/var/lib/tlsmta", "certificates generated at first start"),
    "max_hops": Option(_int(1), 50, "Received: headers before a message is refused as a loop"),
    "mta_sts_https_port": Option(_int(1, 65535), 443, "port of the MTA-STS policy servers (labs change it)"),
    "tlsrpt_reports": Option(_bool, False, "send daily TLS-RPT reports (RFC 8460) to the domains that ask"),
    "tlsrpt_organization": Option(_str, None, "organization-name in reports; default: hostname"),
    "tlsrpt_contact": Option(_str, None, "contact-info in reports; default: postmaster@hostname"),
    "tlsrpt_sender": Option(_str, None, "From and envelope sender of reports; default: noreply-tlsrpt@hostname"),
}

HOOK_OPTIONS: dict[str, Option] = {
    "outbound_tls_verify_callback": Option(_hook, environment="hook"),
    "inbound_tls_verify_callback": Option(_hook, environment="hook"),
    "outbound_tls_parameters": Option(_hook, environment="hook"),
    "outbound_binding": Option(_hook, environment="hook"),
}

LISTENER_OPTIONS: dict[str, Option] = {
    "name": Option(_str, None, "used by binding_rule matches and in logs"),
    "endpoint": Option(_endpoint, None, "Twisted server endpoint string", "endpoint"),
    "tls": Option(_enum_of(ListenerTLS), ListenerTLS.STARTTLS),
    "tls_certificate": Option(_listener_certificates, None, "PEM certificate chain, a list (one per key type), or 'auto'"),
    "tls_key": Option(_readable_files, None, "the key of each tls_certificate, in order"),
    "tls_sni": Option(_sni_certificates, (), "certificates chosen by the client's SNI name", "sni_certificates"),
    "tls_client_ca": Option(_ca_location, None, "CAs for client certificates", "ca_file"),
    "tls_verify": Option(_enum("no", "ca", "host", "optional"), "no", "client certificates"),
    "tls_protocols": Option(_protocols, parse_protocols("+ALL:-TLSv1.0:-TLSv1.1")),
    "tls_ciphers": Option(_str, None, environment="cipher_list"),
    "tlsv13_ciphersuites": Option(_str, None, environment="tls13_suites"),
    "tls_groups": Option(_groups, None, "key-exchange groups, as for delivery", "groups"),
    "local_domains": Option(_domains, frozenset()),
    "relay_networks": Option(_networks, ()),
    "proxy_networks": Option(
        _networks, _networks(["127.0.0.0/8", "::1/128"]), "haproxy: endpoints: who may send the PROXY header"
    ),
    "tls_verified_peer_can_relay": Option(_bool, False),
    # Postfix relay_clientcerts: a client whose certificate's SPKI or whole-certificate SHA-256 is
    # listed may relay, whatever signed it (setting it makes the listener ask for a certificate).
    "relay_client_pins": Option(_pins, (), 'client certificates that may relay: "sha256:..." of the SPKI or the certificate'),
    "require_tls_for_auth": Option(_bool, True),
    "auth_users_file": Option(_readable_file, None, "user:scrypt-hash lines"),
    "max_message_size": Option(_int(1024), 50 * 1024 * 1024),
    "max_recipients": Option(_int(1), 1000),
    "max_connections": Option(_int(1), 1000),
    "max_connections_per_ip": Option(_int(1), 50, "per client address; relay_networks exempt"),
    "max_line_length": Option(_int(78, 1024 * 1024), 998, "octets, CRLF excluded"),
    "idle_timeout": Option(_int(1), 300, "seconds to send a complete command line (trickled bytes do not extend it)"),
    "data_timeout": Option(_int(1), 600, "seconds without DATA bytes"),
    "session_timeout": Option(
        _int(1), 1800, "seconds a session may last; checked between commands, so a DATA transfer that keeps going finishes"
    ),
    "tls_lab": Option(_enum(*LAB_MODES), None, "dev relay: serve a good or deliberately bad TLS peer"),
    # A domain's MX and its submission service (README, "Run a domain's MX").
    "recipient_maps": Option(_address_maps(address_value), None, "who receives mail for local_domains; others 550 5.1.1"),
    "role": Option(_enum("mx", "submission"), "mx", "submission: AUTH before MAIL, Message-ID/Date added"),
    "sender_login_maps": Option(_address_maps(login_value), None, "sender address or @domain -> logins that may use it"),
    # Milters (Sendmail/Postfix milter protocol 6), asked in order at MAIL, RCPT and end of message.
    "milters": Option(milter_addresses, (), 'e.g. ["inet:127.0.0.1:8891", "unix:/run/opendkim/opendkim.sock"]'),
    "milter_default_action": Option(_enum("tempfail", "accept"), "tempfail", "when a milter is down, stalls or sends garbage"),
    "milter_connect_timeout": Option(_duration(), 30.0, "connecting to a milter and its option negotiation"),
    "milter_command_timeout": Option(_duration(), 30.0, "a milter's answer to CONNECT, HELO, MAIL and RCPT"),
    "milter_content_timeout": Option(_duration(), 300.0, "a milter's answer to each header, body chunk and end of message"),
    # At the door (tlsmta.inbound._door): postscreen's pregreet test and DNSBL score, anvil's rates.
    "pregreet_wait": Option(_duration(off=True), None, "hold the greeting this long; a client that talks first gets 554 5.5.1"),
    "dnsbl": Option(parse_dnsbl, (), 'blocklists: [{zone = "zen.example", weight = 2}, ...]'),
    "dnsbl_threshold": Option(_int(1), 1, "a client whose listed weights add up to this gets 554 5.7.1"),
    "dnsbl_timeout": Option(_duration(), 2.0, "the longest the greeting waits for the DNSBL answers"),
    "max_connection_rate": Option(parse_rate, None, 'per client address, e.g. "30/1m": 421 4.7.0 above it'),
    "max_message_rate": Option(parse_rate, None, 'MAIL commands per client address, e.g. "100/1h": 450 4.7.1 above it'),
}

SPOOL_OPTIONS: dict[str, Option] = {
    "path": Option(_path, "/var/spool/tlsmta"),
    "min_free": Option(
        _int(0), 64 * 1024 * 1024, "bytes the spool's filesystem keeps free: MAIL is 452 4.3.1 when SIZE plus this is not free"
    ),
    "commit": Option(
        _enum("fsync", "syncfs"), "fsync",
        "how a received message is made durable before its 250: an fsync per file in disk threads, or"
        " the messages that finish together with two syncfs(2) of their filesystem (storage.groupcommit)",
        "commit",
    ),
}



def _retry_schedule(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of seconds")
    return tuple(_int(1)(v) for v in value)


QUEUE_OPTIONS: dict[str, Option] = {
    "retry_schedule": Option(_retry_schedule, (60, 300, 900, 1800, 3600), "seconds; the last repeats"),
    "max_queue_lifetime": Option(_int(60), 5 * 24 * 3600, "seconds before a bounce"),
    "max_connections": Option(_int(1), 200, "outbound connections in all"),
    "delay_warning_time": Option(_duration(off=True), None, "warn the sender once after this long queued; default: never"),
    "soft_bounce": Option(_bool, False, "keep permanent failures queued as deferred, send no bounce (maintenance)"),
}

METRICS_OPTIONS: dict[str, Option] = {
    "endpoint": Option(_endpoint, None, "Twisted endpoint serving /metrics, e.g. tcp:9125:interface=127.0.0.1", "endpoint"),
}

HTTP_OPTIONS: dict[str, Option] = {
    "endpoint": Option(
        _endpoint, None, "Twisted endpoint for the dev relay's web page and JSON API (no auth: loopback only)", "endpoint"
    ),
    "maildir": Option(_path, None, "the Maildir the page shows; default: the global maildir: route"),
    "allowed_hosts": Option(_str_list, (), "Host header names accepted besides loopback ones (DNS rebinding guard)"),
    "keep_messages": Option(_int(0), 1000, "the page's Maildir keeps the newest N messages, older ones are deleted; 0: all"),
    "tag_rules": Option(_tag_rules, (), 'automatic tags, "TAG=FIELD:TEXT" (FIELD: subject, from, to or body)'),
    # The dev relay's message checks and webhook (tlsmta.devrelay._linkcheck, _webhook).
    "link_check_hosts": Option(_str_list, (), "hosts the link check may request (default none)"),
    "webhook_url": Option(_http_url, None, "POST each captured message's summary here (needs [http] endpoint)"),
}

# Receiving TLS-RPT reports by HTTPS (RFC 8460 3: "https:" rua); by mail they come to a ``tlsrpt`` route.
TLSRPT_INBOX_OPTIONS: dict[str, Option] = {
    "endpoint": Option(_endpoint, None, "Twisted endpoint serving HTTPS POST /tlsrpt, e.g. tcp:443", "endpoint"),
    "tls_certificate": Option(_readable_file, None, "PEM certificate chain the endpoint presents"),
    "tls_key": Option(_readable_file, None, "its private key"),
}

# The dev relay's extras: AUTH with any credentials, POP3 and IMAP over the captured mail.
DEV_OPTIONS: dict[str, Option] = {
    "auth": Option(_bool, False, "offer AUTH PLAIN/LOGIN/CRAM-MD5 accepting any credentials on listeners without "
                   "auth_users_file; the user is recorded with the message"),
    "auth_users_file": Option(_readable_file, None, "real credentials (user:scrypt-hash lines) for [dev] auth, POP3 "
                              "and IMAP instead of any; CRAM-MD5 is then not offered", "users_file"),
    "pop3": Option(_endpoint, None, "Twisted endpoint for POP3 over the captured mail, e.g. tcp:1110:interface=127.0.0.1",
                   "endpoint"),
    "pop3_tls": Option(_enum("starttls", "implicit"), "starttls", "STLS with the dev certificate, or TLS from the first byte"),
    "imap": Option(_endpoint, None, "Twisted endpoint for IMAP over the captured mail, e.g. tcp:1143:interface=127.0.0.1",
                   "endpoint"),
    "imap_tls": Option(_enum("starttls", "implicit"), "starttls", "STARTTLS with the dev certificate, or TLS from the first byte"),
}

# [dkim."DOMAIN"]: signing mail that leaves tlsmta (tlsmta.delivery._dkim).
DKIM_OPTIONS: dict[str, Option] = {
    "selector": Option(parse_selector, None, "the s= tag: the public key is the TXT of SELECTOR._domainkey.DOMAIN"),
    "key_file": Option(_readable_file, None, "PEM RSA (2048 bits or more advised) or Ed25519 private key", "dkim_key"),
}

CONTROL_OPTIONS: dict[str, Option] = {
    "socket": Option(_path, None, "UNIX socket for `tlsmta queue`; default: state_dir/control.sock"),
    "shutdown_grace": Option(_int(0), 30, "seconds sessions and deliveries may finish after SIGTERM"),
}

# A fleet of nodes sharing leases, membership and TLS knowledge through Redis (tlsmta.cluster).
CLUSTER_OPTIONS: dict[str, Option] = {
    "redis": Option(_redis_url, None, 'redis://HOST[:PORT][/DB], rediss://... (TLS) or unix:/PATH[?db=N]'),
    "redis_ca": Option(_readable_file, None, "trust anchors for a rediss:// server; default: the system store"),
    "redis_timeout": Option(_duration(), 0.5, "longest wait for one Redis reply before local limits apply"),
    "key_prefix": Option(_str, "tlsmta:", "prefix of every key, one per fleet sharing a Redis"),
    "node_id": Option(_str, None, "this node's name in the fleet; default: the hostname"),
    "heartbeat": Option(_duration(), 5.0, "how often the node renews its membership and leases"),
    "node_ttl": Option(_duration(), 15.0, "a node missing heartbeats this long is out of the fleet"),
    "lease_ttl": Option(_duration(), 30.0, "a crashed node's connection leases free themselves after this"),
}

BINDING_RULE_OPTIONS: dict[str, Option] = {
    "binding": Option(_str),
    "listener": Option(_str),
    "sender_domain": Option(_domains),
    "recipient_domain": Option(_domains),
}

# -- the parsed configuration --------------------------------------------------


@attrs.frozen
class ListenerConfig:
    """One ``[[listener]]``: where and how mail is received."""

    name: str
    endpoint: str
    tls: ListenerTLS
    tls_certificate: str | None
    tls_key: str | None
    tls_client_ca: str | None
    tls_verify: str
    tls_protocols: frozenset[str]
    tls_ciphers: str | None
    tlsv13_ciphersuites: str | None
    local_domains: frozenset[str]
    relay_networks: tuple[Any, ...]
    proxy_networks: tuple[Any, ...]
    tls_verified_peer_can_relay: bool
    require_tls_for_auth: bool
    auth_users_file: str | None
    max_message_size: int
    max_recipients: int
    max_connections: int
    max_connections_per_ip: int
    max_line_length: int
    idle_timeout: int
    data_timeout: int
    session_timeout: int
    tls_lab: str | None = None
    # Every (certificate, key) pair of tls_certificate/tls_key, one per key type; tls_certificate
    # and tls_key themselves hold the first pair (or 'auto'), as logs and the TLS lab know them.
    tls_chains: tuple[tuple[str, str], ...] = ()
    tls_sni: tuple[tuple[tuple[str, str], ...], ...] = ()  # each entry's chains
    relay_client_pins: tuple[str, ...] = ()
    tls_groups: tuple[str, ...] | None = None
    recipient_maps: AddressMap | None = None
    role: str = "mx"
    sender_login_maps: AddressMap | None = None
    milters: tuple[str, ...] = ()
    milter_default_action: str = "tempfail"
    milter_connect_timeout: float = 30.0
    milter_command_timeout: float = 30.0
    milter_content_timeout: float = 300.0
    pregreet_wait: float | None = None
    dnsbl: tuple[DnsblZone, ...] = ()
    dnsbl_threshold: int = 1
    dnsbl_timeout: float = 2.0
    max_connection_rate: Rate | None = None
    max_message_rate: Rate | None = None


@attrs.frozen
class ScopeTable:
    """Options set in one scope, plus the domain scopes nested in it."""

    options: Mapping[str, Any]
    domains: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    bindings: tuple[str, ...] = ()  # binding groups only


@attrs.frozen
class BindingRule:
    """``[[binding_rule]]``: choose a binding by listener, sender, recipient."""

    binding: str
    listener: str | None = None
    sender_domain: frozenset[str] | None = None
    recipient_domain: frozenset[str] | None = None


@attrs.frozen
class Resolved:
    """One effective option and the scope that set it."""

    value: Any
    scope: str


@attrs.frozen
class Config:
    """A validated configuration."""

    path: str
    hostname: str | None
    state_dir: str
    max_hops: int
    global_options: Mapping[str, Any]
    domains: Mapping[str, Mapping[str, Any]]
    bindings: Mapping[str, ScopeTable]
    binding_groups: Mapping[str, ScopeTable]
    listeners: tuple[ListenerConfig, ...]
    spool: Mapping[str, Any]
    queue: Mapping[str, Any]
    hooks: Mapping[str, str]
    dns: Mapping[str, Mapping[str, tuple[str, ...]]]
    binding_rules: tuple[BindingRule, ...]
    metrics: Mapping[str, Any] = attrs.field(factory=lambda: {"endpoint": None})
    http: Mapping[str, Any] = attrs.field(factory=lambda: dict.fromkeys(HTTP_OPTIONS) | {"allowed_hosts": ()})
    control: Mapping[str, Any] = attrs.field(factory=lambda: {"socket": None, "shutdown_grace": 30})
    tlsrpt_inbox: Mapping[str, Any] = attrs.field(factory=lambda: dict.fromkeys(TLSRPT_INBOX_OPTIONS))
    dev: Mapping[str, Any] = attrs.field(factory=lambda: {k: o.default for k, o in DEV_OPTIONS.items()})
    # [dns] nameservers: where every lookup goes; empty: the system's (/etc/resolv.conf).
    dns_nameservers: tuple[tuple[str, int], ...] = ()
    dkim: Mapping[str, DkimDomain] = attrs.field(factory=dict)  # [dkim."DOMAIN"], by canonical domain
    # [cluster]: None without it (a single node, today's behaviour).
    cluster: Mapping[str, Any] | None = None
    # resolve() results; not an init field, so attrs.evolve() starts a fresh one.
    _resolved: dict[tuple[str, str], dict[str, Resolved]] = attrs.field(init=False, factory=dict, eq=False, repr=False)

    def global_option(self, name: str) -> Any:
        """A ``[global]`` option that is not resolved per domain (GLOBAL_ONLY_OPTIONS)."""
        return self.global_options.get(name, GLOBAL_ONLY_OPTIONS[name].default)

    def group_of(self, binding: str) -> str | None:
        """The binding group that lists ``binding``, if any."""
        for name, group in self.binding_groups.items():
            if binding in group.bindings:
                return name
        return None


# -- scope resolution ----------------------------------------------------------


def resolve(config: Config, domain: str, binding: str = "default") -> dict[str, Resolved]:
    """Effective delivery options for a message to ``domain`` via ``binding``
    (cached per config; treat the result as read-only).

    Each option comes from the first scope that sets it, in this order
    (docs/architecture.md):
    binding.B.domain.D, binding_group.G.domain.D, binding.B, binding_group.G,
    domain.D, global, built-in default.
    """
    domain = normalize_domain(domain)
    cached = config._resolved.get((domain, binding))
    if cached is not None:
        return cached
    group = config.group_of(binding)
    empty: Mapping[str, Any] = {}
    btable = config.bindings.get(binding)
    gtable = config.binding_groups.get(group) if group else None
    chain: list[tuple[str, Mapping[str, Any]]] = [
        (f'binding."{binding}".domain."{domain}"', btable.domains.get(domain, empty) if btable else empty),
        (f'binding_group."{group}".domain."{domain}"', gtable.domains.get(domain, empty) if gtable else empty),
        (f'binding."{binding}"', btable.options if btable else empty),
        (f'binding_group."{group}"', gtable.options if gtable else empty),
        (f'domain."{domain}"', config.domains.get(domain, empty)),
        ("global", config.global_options),
    ]
    result = {}
    for name, option in DELIVERY_OPTIONS.items():
        for scope, table in chain:
            if name in table:
                result[name] = Resolved(table[name], scope)
                break
        else:
            result[name] = Resolved(option.default, "default")
    if len(config._resolved) < 100_000:  # bounded: domains come from the network
        config._resolved[(domain, binding)] = result
    return result


# -- loading -------------------------------------------------------------------


class _Validator:
    """Walks the raw TOML document and collects problems."""

    def __init__(self, path: str, environment: Environment = SYNTAX_ONLY):
        self.path = path
        self.environment = environment
        self.problems: list[Problem] = []

    def problem(self, table: str, key: str | None, why: str) -> None:
        self.problems.append(Problem(self.path, table, key, why))

    def table(self, raw: Any, table: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(table, None, "must be a table")
            return {}
        return raw

    def options(
        self,
        raw: Mapping[str, Any],
        table: str,
        allowed: Mapping[str, Option],
        skip: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Check each key of ``raw`` against ``allowed``; unknown keys are problems."""
        out = {}
        for key, value in raw.items():
            if key in skip:
                continue
            option = allowed.get(key)
            if option is None:
                self.problem(table, key, "unknown option")
                continue
            try:
                checked = option.check(value)
            except ValueError as e:
                self.problem(table, key, str(e))
                continue
            why = self._on_this_machine(option, checked)
            if why is not None:
                self.problem(table, key, why)
                continue
            out[key] = checked
        return out

    def _on_this_machine(self, option: Option, value: Any) -> str | None:
        if option.environment is None or value is None:
            return None
        check: Callable[[Any], str | None] = getattr(self.environment, option.environment)
        return check(value)

    def with_defaults(self, values: Mapping[str, Any], allowed: Mapping[str, Option]) -> dict[str, Any]:
        return {k: values.get(k, o.default) for k, o in allowed.items()}

    def domain_keyed(self, raw: Any, table: str) -> Iterator[tuple[str, str, Any]]:
        """Each sub-table of ``table`` named by a domain: (canonical domain, its label, its body). A name
        that is no domain, or names a domain another sub-table named already, is a problem and skipped."""
        seen: set[str] = set()
        for name, body in self.table(raw, table).items():
            label = f'{table}."{name}"'
            try:
                key = normalize_domain(name)
            except ValueError as e:
                self.problem(label, None, str(e))
                continue
            if key in seen:
                self.problem(label, None, f"names the same domain as another table: {key!r}")
                continue
            seen.add(key)
            yield key, label, body

    def domain_tables(self, raw: Any, parent: str) -> dict[str, dict[str, Any]]:
        out = {}
        for key, label, body in self.domain_keyed(raw, parent + "domain"):
            out[key] = self.options(self.table(body, label), label, DELIVERY_OPTIONS)
            _check_pairs(self, out[key], label)
        return out


Overrides = Mapping[str, Mapping[str, Any]]  # table -> keys set over the file's (the command line's)


def with_overrides(raw: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
    """``raw`` with each override's keys set in its table, so they are validated like the file's own.

    A table the file has in a shape other than a table stays as it is, to be reported."""
    out = dict(raw)
    for table, values in overrides.items():
        current = raw.get(table, {})
        out[table] = {**current, **values} if isinstance(current, dict) else current
    return out


def load(path: str, environment: Environment = SYNTAX_ONLY, overrides: Overrides | None = None) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem.

    ``environment`` adds the checks that need this machine (see
    :class:`Environment`); without it, syntax and data only.  ``overrides``
    (see :func:`with_overrides`) are checked as if the file said them; their
    problems name the file.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([Problem(path, "", None, "file not found")]) from None
    except OSError as e:
        raise ConfigError([Problem(path, "", None, f"cannot read: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(path, "", None, f"not valid TOML: {e}")]) from None
    return from_dict(with_overrides(raw, overrides or {}), path, environment)


_TOP_LEVEL = {
    "global",
    "domain",
    "binding",
    "binding_group",
    "listener",
    "spool",
    "queue",
    "hooks",
    "dns",
    "binding_rule",
    "metrics",
    "control",
    "http",
    "tlsrpt_inbox",
    "cluster",
    "dev",
    "dkim",
}


def from_dict(raw: Mapping[str, Any], path: str = "<config>", environment: Environment = SYNTAX_ONLY) -> Config:
    """Validate an already-parsed TOML document."""
    v = _Validator(path, environment)
    for key in raw:
        if key not in _TOP_LEVEL:
            v.problem(key, None, "unknown table")

    glob = v.table(raw.get("global"), "global")
    global_options = v.options(glob, "global", {**DELIVERY_OPTIONS, **GLOBAL_ONLY_OPTIONS})
    hostname = global_options.pop("hostname", None)
    state_dir = global_options.pop("state_dir", GLOBAL_ONLY_OPTIONS["state_dir"].default)
    max_hops = global_options.pop("max_hops", GLOBAL_ONLY_OPTIONS["max_hops"].default)

    domains = v.domain_tables(raw.get("domain"), "")

    bindings = {}
    for name, body in v.table(raw.get("binding"), "binding").items():
        label = f'binding."{name}"'
        body = v.table(body, label)
        bindings[name] = ScopeTable(
            options=v.options(body, label, DELIVERY_OPTIONS, skip=("domain",)),
            domains=v.domain_tables(body.get("domain"), label + "."),
        )
        _check_pairs(v, bindings[name].options, label)

    groups = {}
    seen_in_group: dict[str, str] = {}
    for name, body in v.table(raw.get("binding_group"), "binding_group").items():
        label = f'binding_group."{name}"'
        body = v.table(body, label)
        members: tuple[str, ...] = ()
        if "bindings" in body:
            try:
                members = _str_list(body["bindings"])
            except ValueError as e:
                v.problem(label, "bindings", str(e))
        for member in members:
            if member not in bindings and member != "default":
                v.problem(label, "bindings", f"binding {member!r} is not defined")
            if member in seen_in_group:
                v.problem(label, "bindings", f"binding {member!r} is already in group {seen_in_group[member]!r}")
            seen_in_group[member] = name
        groups[name] = ScopeTable(
            options=v.options(body, label, DELIVERY_OPTIONS, skip=("domain", "bindings")),
            domains=v.domain_tables(body.get("domain"), label + "."),
            bindings=members,
        )
        _check_pairs(v, groups[name].options, label)

    listeners = _listeners(v, raw.get("listener"))

    spool = v.with_defaults(v.options(v.table(raw.get("spool"), "spool"), "spool", SPOOL_OPTIONS), SPOOL_OPTIONS)
    queue = v.with_defaults(v.options(v.table(raw.get("queue"), "queue"), "queue", QUEUE_OPTIONS), QUEUE_OPTIONS)
    hooks = v.options(v.table(raw.get("hooks"), "hooks"), "hooks", HOOK_OPTIONS)
    metrics = v.with_defaults(v.options(v.table(raw.get("metrics"), "metrics"), "metrics", METRICS_OPTIONS), METRICS_OPTIONS)
    control = v.with_defaults(v.options(v.table(raw.get("control"), "control"), "control", CONTROL_OPTIONS), CONTROL_OPTIONS)
    http = v.with_defaults(v.options(v.table(raw.get("http"), "http"), "http", HTTP_OPTIONS), HTTP_OPTIONS)
    dev = v.with_defaults(v.options(v.table(raw.get("dev"), "dev"), "dev", DEV_OPTIONS), DEV_OPTIONS)
    tlsrpt_inbox = _tlsrpt_inbox(v, raw.get("tlsrpt_inbox"))
    cluster = _cluster(v, raw.get("cluster"))
    _one_socket_each(v, listeners, metrics["endpoint"], http["endpoint"], tlsrpt_inbox["endpoint"])
    route = global_options.get("route")
    if http["endpoint"] and http["maildir"] is None and (route is None or route.kind != "maildir"):
        v.problem("http", "maildir", "is required when the global route is not maildir:PATH")
    for key in ("pop3", "imap"):
        if dev[key] and http["maildir"] is None and (route is None or route.kind != "maildir"):
            v.problem("dev", key, "serves the captured mail: needs [http] maildir or a global maildir: route")
    for name in open_relays(listeners, dev, _every_route(global_options, domains, [*bindings.values(), *groups.values()])):
        v.problem("dev", "auth", f"accepts any user and password, and listener {name!r} is not on loopback while "
                  "mail may be routed out (mx, smtp:): anyone could relay; set [dev] auth_users_file")
    if http["webhook_url"] and not http["endpoint"]:
        v.problem("http", "webhook_url", "needs [http] endpoint: the webhook runs with the dev relay's web page")
    if control["socket"] is None:
        control["socket"] = os.path.join(state_dir, "control.sock")
    dns_table = v.table(raw.get("dns"), "dns")
    nameservers = _nameservers(v, dns_table.pop("nameservers", None))
    dns = _dns(v, dns_table)
    rules = _binding_rules(v, raw.get("binding_rule"), bindings)
    dkim = _dkim(v, raw.get("dkim"))

    _check_pairs(v, global_options, "global")  # domain scopes: checked in domain_tables

    if v.problems:
        raise ConfigError(v.problems)
    return Config(
        path=path,
        hostname=hostname,
        state_dir=state_dir,
        max_hops=max_hops,
        global_options=global_options,
        domains=domains,
        bindings=bindings,
        binding_groups=groups,
        listeners=tuple(listeners),
        spool=spool,
        queue=queue,
        hooks=hooks,
        dns=dns,
        dns_nameservers=nameservers,
        binding_rules=rules,
        metrics=metrics,
        control=control,
        http=http,
        tlsrpt_inbox=tlsrpt_inbox,
        dev=dev,
        dkim=dkim,
        cluster=cluster,
    )


def _dkim(v: _Validator, raw: Any) -> dict[str, DkimDomain]:
    """``[dkim."DOMAIN"]`` tables, each with its selector and key file."""
    out = {}
    for domain, label, body in v.domain_keyed(raw, "dkim"):
        values = v.options(v.table(body, label), label, DKIM_OPTIONS)
        missing = [key for key in DKIM_OPTIONS if key not in body]
        for key in missing:
            v.problem(label, key, "is required")
        if len(values) == len(DKIM_OPTIONS):
            out[domain] = DkimDomain(**values)
    return out


def _cluster(v: _Validator, raw: Any) -> dict[str, Any] | None:
    """``[cluster]``: absent, None; present, it needs ``redis``, and heartbeats more often than the TTLs."""
    if raw is None:
        return None
    given = v.table(raw, "cluster")
    table = v.with_defaults(v.options(given, "cluster", CLUSTER_OPTIONS), CLUSTER_OPTIONS)
    if "redis" not in given:
        v.problem("cluster", "redis", "is required in [cluster]")
    for key in ("node_ttl", "lease_ttl"):
        if table[key] <= table["heartbeat"]:
            v.problem("cluster", key, f"must be longer than heartbeat ({table['heartbeat']:g}s), or live nodes expire")
    return table


def _tlsrpt_inbox(v: _Validator, raw: Any) -> dict[str, Any]:
    """``[tlsrpt_inbox]``: an endpoint needs the certificate and key it serves HTTPS with."""
    table = v.with_defaults(v.options(v.table(raw, "tlsrpt_inbox"), "tlsrpt_inbox", TLSRPT_INBOX_OPTIONS), TLSRPT_INBOX_OPTIONS)
    if table["endpoint"]:
        missing = [key for key in ("tls_certificate", "tls_key") if not table[key]]
        for key in missing:
            v.problem("tlsrpt_inbox", key, "is required with endpoint (reports are POSTed over HTTPS, RFC 8460 3)")
        if not missing:
            _check_chains(v, "tlsrpt_inbox", table["tls_certificate"], table["tls_key"])
    return table


def _check_pairs(v: _Validator, table: Mapping[str, Any], label: str) -> None:
    """A client certificate set in a scope needs its key there too, and they must match."""
    cert, key = table.get("tls_certificate"), table.get("tls_key")
    if ("tls_certificate" in table) != ("tls_key" in table):
        missing = "tls_key" if "tls_certificate" in table else "tls_certificate"
        v.problem(label, missing, "must be set together with " + ({"tls_key", "tls_certificate"} - {missing}).pop())
        return
    if cert and key:
        _check_chains(v, label, cert, key)


def _check_chains(
    v: _Validator, label: str, certificates: str | tuple[str, ...], keys: str | tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    """The (certificate, key) pairs of one table's tls_certificate and tls_key, checked; () when unusable."""
    try:
        chains = _chains(_as_files(certificates), _as_files(keys))
    except ValueError as e:
        v.problem(label, "tls_key", str(e))
        return ()
    fault = v.environment.chains(chains)
    if fault is not None:
        v.problem(label, *fault)
    return chains


def _as_files(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def _first_chain(values: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """tls_certificate and tls_key as ListenerConfig keeps them: the first pair, or 'auto'."""
    cert, keys = values["tls_certificate"], values["tls_key"]
    return (cert[0] if isinstance(cert, tuple) else cert), (keys[0] if keys else None)


def listener_label(index: int, body: Any, names: set[str]) -> str:
    """How problems name a ``[[listener]]``: by its ``name`` as logs do, where it has its own
    (``names``: those of the listeners before it); else by its place in the file."""
    name = body.get("name") if isinstance(body, dict) else None
    return f'listener."{name}"' if isinstance(name, str) and name and name not in names else f"listener.{index}"


def _one_socket_each(v: _Validator, listeners: list[ListenerConfig], metrics: str | None, http: str | None,
                     tlsrpt_inbox: str | None = None) -> None:
    """Two endpoints on one TCP port: the second would fail to bind at start."""
    taken: list[tuple[tuple[int, str], str]] = []  # (address, who has it)
    endpoints: list[tuple[str, str | None, str]] = [
        (f'listener."{item.name}"', item.endpoint, f"listener {item.name!r}") for item in listeners
    ]
    endpoints += [("metrics", metrics, "[metrics]"), ("http", http, "[http]"), ("tlsrpt_inbox", tlsrpt_inbox, "[tlsrpt_inbox]")]
    for table, endpoint, who in endpoints:
        address = tcp_address(endpoint) if endpoint else None
        if address is None:
            continue
        holder = next((other for bound, other in taken if overlaps(bound, address)), None)
        if holder is not None:
            v.problem(table, "endpoint", f"{endpoint!r}: {holder} listens on port {address[0]} already")
            continue
        taken.append((address, who))


NEEDS_TLS = "needs tls = 'starttls', 'required' or 'implicit'"


def _listeners(v: _Validator, raw: Any) -> list[ListenerConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        v.problem("listener", None, "must be an array of tables: [[listener]]")
        return []
    out = []
    names: set[str] = set()
    for index, body in enumerate(raw):
        label = listener_label(index, body, names)
        body = v.table(body, label)
        values = v.with_defaults(v.options(body, label, LISTENER_OPTIONS), LISTENER_OPTIONS)
        if "endpoint" not in body:  # when set but unusable, that is reported already
            v.problem(label, "endpoint", "is required (e.g. 'tcp:25')")
        name = values["name"] or f"listener{index}"
        duplicate = name in names
        if duplicate:
            v.problem(label, "name", f"{name!r} is used by another listener")
        names.add(name)
        values["name"] = name
        cert = values["tls_certificate"]
        lab = values["tls_lab"]
        if lab is not None and values["tls"] is ListenerTLS.NO:
            v.problem(label, "tls_lab", NEEDS_TLS)
        if lab == "no-starttls" and values["tls"] in (ListenerTLS.IMPLICIT, ListenerTLS.REQUIRED):
            v.problem(label, "tls_lab", "'no-starttls' needs tls = 'starttls'")
        if lab is not None and cert is None:
            cert = values["tls_certificate"] = "auto"  # the lab serves dev CA certificates
        if values["tls"] is not ListenerTLS.NO:
            if cert is None:
                if "tls_certificate" not in body:  # when set but unusable, that is reported already
                    v.problem(label, "tls_certificate", f"is required when tls = {values['tls'].value!r} (or 'auto')")
            elif cert != "auto":
                if values["tls_key"] is None:
                    if "tls_key" not in body:
                        v.problem(label, "tls_key", "is required with tls_certificate")
                else:
                    values["tls_chains"] = _check_chains(v, label, cert, values["tls_key"])
        elif values["tls_sni"]:
            v.problem(label, "tls_sni", NEEDS_TLS)
        values["tls_certificate"], values["tls_key"] = _first_chain(values)
        if values["auth_users_file"] is not None:
            why = v.environment.users_file(values["auth_users_file"])
            if why is not None:
                v.problem(label, "auth_users_file", why)
        _check_mx_options(v, label, values)
        if values["tls_verify"] != "no" and values["tls_client_ca"] is None:
            v.problem(label, "tls_client_ca", f"is required when tls_verify = {values['tls_verify']!r}")
        if values["tls_verify"] != "no" and values["tls"] is ListenerTLS.NO:
            v.problem(label, "tls_verify", NEEDS_TLS)
        if values["relay_client_pins"] and values["tls"] is ListenerTLS.NO:
            v.problem(label, "relay_client_pins", NEEDS_TLS)
        if duplicate:
            continue  # one problem for it: its endpoint is not compared with the others'
        try:
            out.append(ListenerConfig(**values))
        except TypeError as e:  # only reachable through a programming error
            v.problem(label, None, str(e))
    return out


def _check_mx_options(v: _Validator, label: str, values: dict[str, Any]) -> None:
    """What recipient_maps, role and sender_login_maps need of the rest of the listener."""
    if values["recipient_maps"] is not None and not values["local_domains"]:
        v.problem(label, "recipient_maps", "needs local_domains: the maps say who receives mail for them")
    if values["role"] == "submission" and values["auth_users_file"] is None:
        v.problem(label, "role", "'submission' needs auth_users_file: AUTH is required before MAIL")
    elif values["role"] == "submission" and values["tls"] is ListenerTLS.NO and values["require_tls_for_auth"]:
        v.problem(label, "role", "'submission' with tls = 'no' never offers AUTH (require_tls_for_auth), "
                                 "so every MAIL would get 530")
    if values["sender_login_maps"] is not None and values["auth_users_file"] is None:
        v.problem(label, "sender_login_maps", "needs auth_users_file: the maps name AUTH logins")


_DNS_TABLES = ("mx", "hosts", "txt", "tlsa", "ptr")


def _dns(v: _Validator, raw: Any) -> dict[str, dict[str, tuple[str, ...]]]:
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for kind, body in v.table(raw, "dns").items():
        if kind not in _DNS_TABLES:
            v.problem("dns", kind, f"unknown table (expected one of {', '.join(_DNS_TABLES)})")
            continue
        table = {}
        for name, answers in v.table(body, f"dns.{kind}").items():
            try:
                values = _str_list(answers)
                if kind == "hosts":  # A/AAAA answers: an address, or every lookup of the name fails at run time
                    values = tuple(_address(value) for value in values)
                table[_dns_owner(name) if kind != "ptr" else name] = values
            except ValueError as e:
                v.problem(f"dns.{kind}", name, str(e))
        out[kind] = table
    return out


def _nameservers(v: _Validator, raw: Any) -> tuple[tuple[str, int], ...]:
    """``[dns] nameservers``: ``"IP"``, ``"IP:PORT"`` or ``"[IPv6]:PORT"``; port 53 by default."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) for item in raw):
        v.problem("dns", "nameservers", 'must be a non-empty list of "IP" or "IP:PORT" strings')
        return ()
    servers = []
    for item in raw:
        text = item.strip()
        if text.startswith("["):  # [IPv6] or [IPv6]:PORT
            host, _, rest = text[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else (rest or "53")
        elif text.count(":") == 1:  # IPv4:PORT
            host, _, port = text.partition(":")
        else:  # a bare IPv4 or IPv6 address
            host, port = text, "53"
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            ip = ""
        if not ip or not port.isdigit():
            v.problem("dns", "nameservers", f"{item!r} is not an IP address (with an optional :PORT)")
            continue
        if not 0 < int(port) < 65536:
            v.problem("dns", "nameservers", f"{item!r}: port must be 1-65535")
            continue
        servers.append((ip, int(port)))
    return tuple(servers)


def _dns_owner(name: str) -> str:
    """A [dns] key: a domain, after any leading service labels (``_25._tcp``, ``_mta-sts``)."""
    labels = name.strip().rstrip(".").split(".")
    service = []
    while len(labels) > 1 and labels[0].startswith("_"):
        label = labels.pop(0).lower()
        if not re.fullmatch(r"_[a-z0-9-]+", label):
            raise ValueError(f"{name!r} is not a valid DNS name")
        service.append(label)
    return ".".join([*service, normalize_domain(".".join(labels))])


def _binding_rules(v: _Validator, raw: Any, bindings: Mapping[str, ScopeTable]) -> tuple[BindingRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        v.problem("binding_rule", None, "must be an array of tables: [[binding_rule]]")
        return ()
    out = []
    for index, body in enumerate(raw):
        label = f"binding_rule.{index}"
        values = v.options(v.table(body, label), label, BINDING_RULE_OPTIONS)
        target = values.get("binding")
        if target is None:
            v.problem(label, "binding", "is required")
            continue
        if target not in bindings and target != "default":
            v.problem(label, "binding", f"binding {target!r} is not defined")
        out.append(BindingRule(**values))
    return tuple(out)


def select_binding(
    config: Config,
    listener: str | None = None,
    sender_domain: str | None = None,
    recipient_domain: str | None = None,
) -> str:
    """The binding a message leaves through: the first matching
    ``[[binding_rule]]``, else ``default``."""
    for rule in config.binding_rules:
        if rule.listener is not None and rule.listener != listener:
            continue
        if rule.sender_domain is not None and sender_domain not in rule.sender_domain:
            continue
        if rule.recipient_domain is not None and recipient_domain not in rule.recipient_domain:
            continue
        return rule.binding
    return "default"
