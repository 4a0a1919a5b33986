"""``[dkim."DOMAIN"]``: the selector and key file tlsmta signs that domain's mail with.

Syntax only; whether the key file holds a usable RSA or Ed25519 key is asked
through the loader's ``Environment`` (``dkim_key``), so ``check-config``
names the file, the table and the key.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*", re.I)


@attrs.frozen
class DkimDomain:
    """Mail whose From: is in this domain (or below it) is signed with ``selector`` (``s=``) and ``key_file``."""

    selector: str
    key_file: str


def parse_selector(value: Any) -> str:
    """A selector is one or more DNS labels (RFC 6376 3.1): ``SELECTOR._domainkey.DOMAIN`` holds the key."""
    if not isinstance(value, str) or not _SELECTOR.fullmatch(value):
        raise ValueError(f"must be DNS labels like 's2026' or 'mail.rsa' (got {value!r})")
    return value.lower()
