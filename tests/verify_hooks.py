"""Verify hooks referenced by tests as ``verify_hooks:NAME`` in [hooks]."""

from __future__ import annotations

from typing import Any

calls: list[tuple[int, int, bool, Any]] = []


def record_and_accept(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    """Accept every certificate, remembering what the hook was shown."""
    calls.append((depth, errno, ok, ctx))
    return True


def reject(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    calls.append((depth, errno, ok, ctx))
    return False


def explode(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    raise RuntimeError("hook bug")
