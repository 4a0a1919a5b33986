"""What one delivery attempt tells the log: a ``delivery`` line per recipient.

A session that delivers to two recipients, one accepted and one refused, is
two lines, each with its own result and the reply that recipient got (the
RCPT answer for a refused one, the final answer after DATA otherwise), so a
mixed result is never collapsed into one. The attempt as a whole (counts,
the worst reply) is the quiet ``attempt`` event: it feeds the metrics, which
count attempts and TLS handshakes, not recipients. Pure: fields in, fields out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tlsmta.smtp import Reply
from tlsmta.storage import BOUNCED, DELIVERED, PENDING

RESULT_WORDS = {DELIVERED: "delivered", PENDING: "deferred", BOUNCED: "bounced"}


class Outcome(Protocol):
    """One recipient's result (``delivery._pool.RecipientResult``)."""

    @property
    def address(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reply(self) -> Reply: ...


def relay_of(mx: str | None, ip: str | None, port: int | None) -> str | None:
    """``mx.example.com[192.0.2.1]:25``, Postfix's ``relay=``; None when no host was reached."""
    if mx is None:
        return None
    if port == 0:  # a unix socket (an lmtp:unix: route): its path is the host
        return f"unix:{mx}"
    return f"{mx}[{ip or '?'}]" + (f":{port}" if port is not None else "")


def _reply_fields(reply: Reply) -> dict[str, Any]:
    return {"code": reply.code, "status": reply.enhanced, "text": reply.text}


def recipient_lines(head: Mapping[str, Any], tail: Mapping[str, Any], results: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One ``delivery`` event's fields per recipient: ``head`` (message and relay),
    then ``to=<address>``, its result and reply, then ``tail`` (attempt, delay, TLS facts)."""
    lines = []
    for result in results:
        fields = {"msgid": head.get("msgid"), "message_id": head.get("message_id"), "to": f"<{result.address}>"}
        fields.update((k, v) for k, v in head.items() if k not in fields)
        fields["result"] = RESULT_WORDS[result.status]
        fields.update(_reply_fields(result.reply))
        fields.update(tail)
        lines.append(fields)
    return lines


def attempt_summary(head: Mapping[str, Any], tail: Mapping[str, Any], results: Sequence[Outcome]) -> dict[str, Any]:
    """The quiet ``attempt`` event: the counts, and the first undelivered recipient's reply."""
    counts = {word: sum(1 for r in results if r.status == status) for status, word in RESULT_WORDS.items()}
    worst = next((r for r in results if r.status != DELIVERED), results[0]).reply
    if counts["delivered"] == len(results):
        result = "delivered"
    else:
        result = "bounced" if counts["bounced"] == len(results) else "deferred"
    return {**head, "result": result, **counts, **_reply_fields(worst), **tail}
