"""Address map files, as an operator writes them by hand: Postfix's postmap text format.

One entry a line, a key and its values separated by white space, values by
commas and/or white space; a line starting with ``#`` is a comment; blank
lines are skipped::

    # virtual aliases
    team@example.test       alice@example.test, bob@example.test
    # a mailbox: a key alone
    alice@example.test
    # the catch-all of a domain: anyone@example.org goes to anyone@example.test
    @example.org            @example.test

A key is ``local@domain`` or ``@domain`` (the domain's catch-all).  Keys
are compared without case (the domain in its IDNA A-label form).  A file
that does not parse is a configuration error naming the file and line, so
``tlsmta check-config`` refuses it and SIGHUP keeps the map that runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

from tlsmta.errors import TlsmtaError
from tlsmta.smtp import DomainNameError, normalize_domain

_SEPARATORS = re.compile(r"[,\s]+")


class AddressMapError(TlsmtaError, ValueError):
    """A map file that cannot be used; the message names the file and line."""


@attrs.frozen(eq=False)
class AddressMap:
    """Keys (``local@domain`` or ``@domain``, canonical) to their values, from the files in ``paths``."""

    paths: tuple[str, ...]
    entries: Mapping[str, tuple[str, ...]]

    @property
    def domains(self) -> frozenset[str]:
        """The domains the map has keys in."""
        return frozenset(key.rpartition("@")[2] for key in self.entries)

    def lookup(self, address: str) -> tuple[str, ...] | None:
        """The values of ``address`` (``local@domain``), else of its domain's catch-all; None when neither is listed."""
        local, domain = split_address(address)
        found = self.entries.get(f"{local}@{domain}")
        return found if found is not None else self.entries.get(f"@{domain}")


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) in the form map keys use: both lower case, the domain an A-label."""
    local, _, domain = address.rpartition("@")
    try:
        domain = normalize_domain(domain)
    except DomainNameError:
        domain = domain.lower()
    return local.lower(), domain


def _key(text: str) -> str:
    local, at, domain = text.rpartition("@")
    if not at or not domain:
        raise ValueError(f"{text!r} is not an address (local@domain) or a catch-all (@domain)")
    try:
        domain = normalize_domain(domain)
    except DomainNameError as e:
        raise ValueError(f"{text!r}: {e}") from None
    return f"{local.lower()}@{domain}"


def address_value(text: str) -> str:
    """A value that is an address or ``@domain`` (aliases): checked like a key, kept as written."""
    _key(text)
    return text


def login_value(text: str) -> str:
    """A value that is a login name (sender login maps)."""
    return text


def load_address_maps(paths: tuple[str, ...], value: Callable[[str], str]) -> AddressMap:
    """Read and merge the map files; a key listed twice (in one file or two) is an error."""
    entries: dict[str, tuple[str, ...]] = {}
    where: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise AddressMapError(f"{path}: {e}") from None
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if line[0].isspace():
                # postmap would join it to the entry above; a stray indent must not make a new key.
                raise AddressMapError(f"{path}:{number}: starts with white space: put the values on their key's line")
            key_text, *values = _SEPARATORS.split(text)
            try:
                key = _key(key_text)
                checked = tuple(value(v) for v in values if v)
            except ValueError as e:
                raise AddressMapError(f"{path}:{number}: {e}") from None
            if key in entries:
                raise AddressMapError(f"{path}:{number}: {key_text!r} is listed already at {where[key]}")
            entries[key] = checked
            where[key] = f"{path}:{number}"
    return AddressMap(paths, entries)
