"""Whether the spool's filesystem has room for one more message (RFC 1870, as Postfix's
``queue_minfree``): the decision is pure, the free space comes from ``os.statvfs``."""

from __future__ import annotations

import os

from tlsmta.storage._interfaces import StoreError


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def space_refusal(declared_size: int | None, free: int, reserve: int) -> StoreError | None:
    """452 4.3.1 unless a message of ``declared_size`` (none declared: 0) fits and still leaves ``reserve`` free."""
    if (declared_size or 0) + reserve <= free:
        return None
    return StoreError.insufficient_storage()
