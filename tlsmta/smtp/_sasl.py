"""SASL responses of SMTP AUTH (RFC 4954) as the client sends them, sans I/O."""

from __future__ import annotations

import base64
import binascii


def decode_plain(response: bytes) -> tuple[str, str] | None:
    """RFC 4616 ``[authzid] NUL authcid NUL passwd`` -> (user, password)."""
    try:
        raw = base64.b64decode(response, validate=True)
        authzid, user, password = raw.decode("utf-8").split("\0")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if authzid and authzid != user:
        return None  # no proxy authorization
    return user, password


def decode_b64_text(response: bytes) -> str | None:
    try:
        return base64.b64decode(response, validate=True).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def decode_cram_md5(response: bytes) -> tuple[str, str] | None:
    """RFC 2195 ``user SP hex-digest`` -> (user, lower-case digest)."""
    text = decode_b64_text(response)
    if text is None:
        return None
    user, _, digest = text.rpartition(" ")
    digest = digest.lower()
    if not user or len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return user, digest
