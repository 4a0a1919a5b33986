"""Verify hooks referenced by tests as ``verify_hooks:NAME`` in [hooks]."""

from __future__ import annotations

from typing import Any

calls: list[tuple[int, int, bool, Any]] = []


def record_and_accept(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    """Accept every certificate, remembering what the hook was shown."""
    calls.append((depth, errno, ok, ctx))
    return True


def passthrough(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    """Answer what the built-in check was: the hook adds no rule of its own."""
    calls.append((depth, errno, ok, ctx))
    return ok


def reject(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    calls.append((depth, errno, ok, ctx))
    return False


def explode(conn: Any, cert: Any, errno: int, depth: int, ok: bool, ctx: Any) -> bool:
    raise RuntimeError("hook bug")


def tls_parameters_relaxed(message: Any, domain: str, binding: str) -> dict[str, Any] | None:
    """outbound_tls_parameters: no verification for example.test."""
    calls.append((0, 0, True, (message.id, domain, binding)))
    return {"tls_verify": "no"} if domain == "example.test" else None


def binding_out1(sender: str, recipient: str, listener: str) -> str | None:
    """outbound_binding: everything for example.test leaves through out1."""
    return "out1" if recipient.endswith("@example.test") else None


def tls_parameters_bad_value(message: Any, domain: str, binding: str) -> dict[str, Any]:
    """outbound_tls_parameters returning a value the config would refuse."""
    return {"tls": True}


def tls_parameters_raises(message: Any, domain: str, binding: str) -> dict[str, Any]:
    raise RuntimeError("hook bug")
