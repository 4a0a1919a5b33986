"""SMTP command-line parsing, sans I/O.

Parsers raise :class:`Reject` carrying the reply to send, so the protocol
class only routes commands and never builds error text itself.
"""

from __future__ import annotations

import re

import attrs

from tlsmta.smtp._names import domain_of
from tlsmta.smtp._reply import Reply, SMTPError

# RFC 5321 4.5.3.1.4: 512 octets for a command line including CRLF.  MAIL
# and RCPT may grow by the parameters of the extensions we advertise
# (RFC 1869 allows up to 512 more per extension that adds parameters).
COMMAND_LINE_LIMIT = 512
PARAMETER_ALLOWANCE = 512
MAX_PATH_LENGTH = 256  # RFC 5321 4.5.3.1.3


class Reject(SMTPError):
    """A command that must be refused with ``code`` and ``text`` (status code first)."""

    def __init__(self, code: int, text: str):
        super().__init__(Reply(code, (text,)))


def line_limit(verb: bytes) -> int:
    """Longest acceptable line (CRLF included) for a command verb."""
    if verb.upper() in (b"MAIL", b"RCPT"):
        return COMMAND_LINE_LIMIT + PARAMETER_ALLOWANCE
    return COMMAND_LINE_LIMIT


def split_command(line: bytes) -> tuple[str, bytes]:
    """``b"MAIL FROM:<a@b>"`` -> ``("MAIL", b"FROM:<a@b>")``; verb upper-cased.

    A verb that is not plain ASCII letters comes back as ``""`` (unknown).
    """
    verb, _, rest = line.strip().partition(b" ")
    if not verb.isalpha() or not verb.isascii():
        return "", rest.strip()
    return verb.decode("ascii").upper(), rest.strip()


# C0 controls (TAB included), DEL and C1 controls: no place in a domain or an
# address literal (RFC 5321 4.1.1.1), and the name ends up in logs, headers and
# on the operator's terminal (`tlsmta queue show`).
_GREETING_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def greeting_name(arg: bytes, verb: str) -> str:
    """The client's name from a HELO/EHLO argument (the first word; more is tolerated)."""
    words = arg.split()
    name = words[0].decode("utf-8", "replace") if words else ""
    if not name:
        raise Reject(501, f"5.5.4 Syntax: {verb} hostname")
    if _GREETING_CONTROLS.search(arg.decode("utf-8", "replace")):
        raise Reject(501, f"5.5.2 Syntax: control characters are not allowed in {verb}")
    return name


@attrs.frozen
class Path:
    """A parsed reverse-path or forward-path with its ESMTP parameters."""

    address: str  # "" for the null reverse-path
    params: dict[str, str | None]

    @property
    def domain(self) -> str:
        return domain_of(self.address)


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[^\[\]\\\s]+\]"
_MAILBOX_ASCII = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})\Z")
# With SMTPUTF8 (RFC 6531) local parts and labels may hold any non-ASCII
# character; we still forbid controls, spaces and the specials that break parsing.
_U = r"[^\x00-\x7f]"
_ATEXT_U = rf"(?:{_ATEXT}|{_U})"
_LABEL_U = rf"(?:[A-Za-z0-9]|{_U})(?:(?:[A-Za-z0-9-]|{_U}){{0,61}}(?:[A-Za-z0-9]|{_U}))?"
_MAILBOX_UTF8 = re.compile(
    rf"(?:{_ATEXT_U}+(?:\.{_ATEXT_U}+)*|{_QUOTED})@(?:{_LABEL_U}(?:\.{_LABEL_U})*\.?|{_LITERAL})\Z"
)


def parse_path(arg: bytes, keyword: str, utf8: bool = False, allow_null: bool = False) -> Path:
    """Parse ``FROM:<addr> params`` or ``TO:<addr> params``.

    ``utf8``: the transaction uses SMTPUTF8, so non-ASCII addresses are
    allowed.  Tolerates one space after the colon, as most MTAs do.
    """
    syntax = Reject(501, f"5.5.4 Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>")
    head = keyword.encode("ascii") + b":"
    if arg[: len(head)].upper() != head:
        raise syntax
    rest = arg[len(head) :].lstrip(b" ")
    if not rest.startswith(b"<"):
        raise syntax
    close = rest.find(b">")
    if close < 0:
        raise syntax
    raw_addr, raw_params = rest[1:close], rest[close + 1 :]
    if raw_params and not raw_params.startswith(b" "):
        raise syntax
    params = parse_params(raw_params)
    if keyword == "FROM" and "SMTPUTF8" in params:
        utf8 = True  # the parameter that follows the address governs its decoding
    try:
        text = raw_addr.decode("utf-8" if utf8 else "ascii")
    except UnicodeDecodeError:
        if utf8:
            raise Reject(553, "5.6.7 address is not valid UTF-8") from None
        raise Reject(553, "5.6.7 non-ASCII address needs SMTPUTF8") from None
    address = _strip_source_route(text)
    if address == "":
        if not allow_null:
            raise Reject(501, "5.1.3 empty address not allowed here")
    elif keyword == "TO" and address.lower() == "postmaster":
        address = "postmaster"
    else:
        if len(raw_addr) > MAX_PATH_LENGTH:
            raise Reject(501, "5.1.3 address too long")
        pattern = _MAILBOX_UTF8 if utf8 else _MAILBOX_ASCII
        if not pattern.match(address):
            code = "5.1.7" if keyword == "FROM" else "5.1.3"
            raise Reject(501, f"{code} bad address syntax")
    return Path(address, params)


def _strip_source_route(addr: str) -> str:
    """``@a,@b:user@c`` -> ``user@c`` (RFC 5321 4.1.1.3: MUST accept, SHOULD ignore)."""
    if addr.startswith("@") and ":" in addr:
        return addr.split(":", 1)[1]
    return addr


def parse_params(raw: bytes) -> dict[str, str | None]:
    """ESMTP ``KEY=VALUE`` / ``KEY`` parameters; keys upper-cased."""
    params: dict[str, str | None] = {}
    for token in raw.split():
        key, eq, value = token.partition(b"=")
        if not key or not re.fullmatch(rb"[A-Za-z0-9][A-Za-z0-9-]*", key):
            raise Reject(501, f"5.5.4 bad parameter {token[:40]!r}")
        try:
            params[key.decode("ascii").upper()] = value.decode("utf-8") if eq else None
        except UnicodeDecodeError:
            raise Reject(501, "5.5.4 parameter value is not valid UTF-8") from None
    return params


@attrs.frozen
class MailParams:
    """The MAIL FROM parameters we implement, validated."""

    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False
    requiretls: bool = False


# RFC 8689 defines no reply for REQUIRETLS outside TLS (it is advertised only
# inside TLS); RFC 3207's 530 "issue STARTTLS first" with 5.7.10 "encryption
# needed" (RFC 5248 registry) tells the client what to do.
REQUIRETLS_NEEDS_TLS = (530, "5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS first")


def mail_params(params: dict[str, str | None], max_size: int, tls_active: bool = False) -> MailParams:
    """Validate MAIL parameters: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531),
    REQUIRETLS (RFC 8689, only inside TLS)."""
    size = None
    body = "7BIT"
    smtputf8 = False
    requiretls = False
    for key, value in params.items():
        if key == "SIZE":
            # ASCII digits only: str.isdigit() also admits "²", which int() refuses.
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise Reject(501, "5.5.4 SIZE needs a number")
            size = int(value)
            if size > max_size:
                raise Reject(552, f"5.3.4 message size exceeds fixed limit of {max_size} octets")
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise Reject(501, "5.5.4 BODY must be 7BIT or 8BITMIME")
            body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise Reject(501, "5.5.4 SMTPUTF8 takes no value")
            smtputf8 = True
        elif key == "REQUIRETLS":
            if value is not None:
                raise Reject(501, "5.5.4 REQUIRETLS takes no value")
            if not tls_active:
                raise Reject(*REQUIRETLS_NEEDS_TLS)
            requiretls = True
        else:
            raise Reject(555, f"5.5.4 unsupported MAIL parameter {key}")
    return MailParams(size, body, smtputf8, requiretls)


def rcpt_params(params: dict[str, str | None]) -> None:
    """We implement no RCPT parameters (DSN is not advertised)."""
    for key in params:
        raise Reject(555, f"5.5.4 unsupported RCPT parameter {key}")
