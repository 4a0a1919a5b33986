"""The configuration checks that need this machine, and loading with them.

:mod:`tlsmta.config` is data and syntax; whether OpenSSL takes a cipher
string, a CA file holds certificates, a key matches its certificate, a hook
imports, a users file or an endpoint string parses is asked here, through the loader's
:class:`~tlsmta.config._loader.Environment`, so every problem still names its
file, table and key in file order.  Everything that starts tlsmta or checks
its configuration loads through :func:`check` (or :func:`load`, its
configuration alone); command-line overrides go in as keys of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
from OpenSSL import SSL

from tlsmta.app._endpoints import endpoint_problem
from tlsmta.config import Config, Overrides
from tlsmta.config import from_dict as config_from_dict
from tlsmta.config import load as load_config
from tlsmta.delivery import load_signing_key
from tlsmta.inbound import AuthFileError, UserDB
from tlsmta.tls import HookError, KeyPairError, check_chains, load_hook, openssl_version, unsupported_groups


def _scratch_context() -> SSL.Context:
    return SSL.Context(SSL.TLS_METHOD)


def _unless_openssl_takes(setter: str, text: str, what: str) -> str | None:
    """None when a scratch context's ``setter`` accepts ``text``, else why not."""
    try:
        getattr(_scratch_context(), setter)(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return f"{text!r} matches no {what} OpenSSL knows"
    return None


class HostEnvironment:
    """:class:`~tlsmta.config._loader.Environment` on this machine's OpenSSL and files.

    One per load: it keeps the users files it read (``users``), so whoever
    runs the configuration uses what was checked instead of reading them again.
    """

    def __init__(self) -> None:
        self.users: dict[str, UserDB] = {}

    def ca_file(self, path: str) -> str | None:
        if os.path.isdir(path):
            return None  # a directory of hashed certificates is read as needed
        try:
            _scratch_context().load_verify_locations(path)
        except SSL.Error:
            return f"CA file {path!r} holds no PEM certificate"
        return None

    # OpenSSL strings are tried on a scratch context now: a typo that matches no cipher
    # would otherwise pass check-config and fail every TLS session that uses it.
    def cipher_list(self, text: str) -> str | None:
        return _unless_openssl_takes("set_cipher_list", text, "cipher")

    def tls13_suites(self, text: str) -> str | None:
        return _unless_openssl_takes("set_tls13_ciphersuites", text, "TLS 1.3 ciphersuite")

    def groups(self, names: tuple[str, ...]) -> str | None:
        missing = unsupported_groups(names)
        if not missing:
            return None
        why = f"key-exchange group {', '.join(map(repr, missing))} not supported by {openssl_version()}"
        if any("MLKEM" in name.upper() for name in missing):
            why += " (ML-KEM groups need OpenSSL 3.5 or later)"
        return why + " (the OpenSSL linked by pyOpenSSL/cryptography)"

    def hook(self, spec: str) -> str | None:
        try:
            load_hook(spec)  # import now so a typo is a config error, not a runtime one
        except HookError as e:
            return str(e)
        return None

    def chains(self, chains: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
        try:
            check_chains(chains)
        except KeyPairError as e:
            return e.key, str(e)
        return None

    def sni_certificates(self, entries: tuple[tuple[tuple[str, str], ...], ...]) -> str | None:
        for number, chains in enumerate(entries, 1):
            try:
                check_chains(chains, sni=True)
            except KeyPairError as e:
                return f"entry {number}: {e}"
        return None

    def endpoint(self, text: str) -> str | None:
        return endpoint_problem(text)

    def dkim_key(self, path: str) -> str | None:
        try:
            load_signing_key(path)
        except (ValueError, OSError) as e:
            return f"DKIM key file {path!r} {e}" if isinstance(e, ValueError) else f"DKIM key file {path!r}: {e.strerror}"
        return None

    def commit(self, way: str) -> str | None:
        return syncfs_problem(os.uname()) if way == "syncfs" else None

    def users_file(self, path: str) -> str | None:
        try:
            self.users[path] = UserDB.load(path)
        except (AuthFileError, OSError, UnicodeDecodeError) as e:
            return str(e)
        return None


def syncfs_problem(uname: os.uname_result) -> str | None:
    """Why ``commit = "syncfs"`` cannot keep the durability promise here: before Linux 5.8,
    syncfs(2) returned 0 whatever failed to reach the disk."""
    if uname.sysname != "Linux":
        return f"syncfs needs Linux 5.8 or later; this is {uname.sysname}"
    try:
        version = tuple(int(part) for part in uname.release.split("-")[0].split(".")[:2])
    except ValueError:
        return f"syncfs needs Linux 5.8 or later; cannot read the kernel version {uname.release!r}"
    if version < (5, 8):
        return f"syncfs needs Linux 5.8 or later (it reports write errors from then); this is {uname.release}"
    return None


@attrs.frozen
class Checked:
    """A configuration with what checking it loaded: each ``auth_users_file`` by path."""

    config: Config
    users: Mapping[str, UserDB]


def check(path: str, overrides: Overrides | None = None) -> Checked:
    """:func:`tlsmta.config._loader.load` with this machine's checks, keeping the users files read."""
    environment = HostEnvironment()
    config = load_config(path, environment, overrides)
    return Checked(config, environment.users)


def load(path: str, overrides: Overrides | None = None) -> Config:
    """:func:`tlsmta.config._loader.load` with this machine's checks."""
    return check(path, overrides).config


def from_dict(raw: Mapping[str, Any], path: str = "<config>") -> Config:
    """:func:`tlsmta.config._loader.from_dict` with this machine's checks."""
    return config_from_dict(raw, path, HostEnvironment())
