"""SMTP AUTH (PLAIN, LOGIN) against a file of scrypt password hashes, or, on the
dev relay (``[dev] auth``), with any credentials (PLAIN, LOGIN, CRAM-MD5).

The file has one ``user:hash`` line per account; ``tlsmta hash-password``
makes the hash.  Hashing is deliberately slow, so checks run in a thread.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from typing import ClassVar, Protocol

import attrs

from tlsmta.errors import TlsmtaError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class AuthFileError(TlsmtaError, ValueError):
    """The users file cannot be used; the message names the line."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64 parts)."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except (ValueError, binascii.Error, TypeError, OverflowError):
        # TypeError: hashlib.scrypt's answer to a negative or huge n, r or p.
        return False
    return hmac.compare_digest(got, want)


@functools.cache
def _decoy_hash() -> str:
    """A hash to check unknown users against, made once so they cost one scrypt, as known users do."""
    return hash_password("decoy")


def well_formed_hash(stored: str) -> bool:
    """A hash check_password can use, with sane cost parameters (no DoS by users file)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(p.isascii() and p.isdigit() for p in parts[1:4]):
        return False
    n, r, p = (int(x) for x in parts[1:4])
    if not (1 < n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    try:
        return bool(base64.b64decode(parts[4], validate=True)) and len(base64.b64decode(parts[5], validate=True)) >= 16
    except binascii.Error:
        return False


class Credentials(Protocol):
    """What checks AUTH credentials (and the dev relay's POP3 and IMAP logins)."""

    mechanisms: ClassVar[tuple[str, ...]]  # the SASL mechanisms it can check

    def check(self, user: str, password: str) -> bool: ...

    def check_cram_md5(self, user: str, challenge: str, digest: str) -> bool: ...


class AnyCredentials:
    """The dev relay's AUTH: every user name and password is accepted, so an application
    configured with a password can send; the user name is recorded with the message."""

    mechanisms: ClassVar[tuple[str, ...]] = ("PLAIN", "LOGIN", "CRAM-MD5")

    def check(self, user: str, password: str) -> bool:
        return True

    def check_cram_md5(self, user: str, challenge: str, digest: str) -> bool:
        return True


@attrs.frozen
class UserDB:
    """Accounts loaded from a users file."""

    # Hashes only: CRAM-MD5 would need every password in clear on the server.
    mechanisms: ClassVar[tuple[str, ...]] = ("PLAIN", "LOGIN")

    users: dict[str, str]

    @classmethod
    def load(cls, path: str) -> UserDB:
        users = {}
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, sep, stored = line.partition(":")
                if not sep or not name or not well_formed_hash(stored):
                    raise AuthFileError(f"{path}:{number}: expected 'user:scrypt$N$r$p$salt$hash' (tlsmta hash-password)")
                users[name] = stored
        return cls(users)

    def check(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        if stored is None:
            check_password(password, _decoy_hash())  # same cost for unknown users
            return False
        return check_password(password, stored)

    def check_cram_md5(self, user: str, challenge: str, digest: str) -> bool:
        return False  # not offered (see mechanisms)
