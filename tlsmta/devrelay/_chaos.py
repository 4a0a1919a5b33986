"""Chaos: SMTP failures the dev relay gives on purpose, to test an application's error handling.

A :class:`FailureRule` says at which stage of a session (connect, EHLO, MAIL,
RCPT, DATA, end of data) to answer with which reply, how likely (``probability``,
against an injectable random source), how often (``times``: the next N times it
fires, then it is gone; None: until removed) and for which recipients (a
case-insensitive glob such as ``*@fail.test``).  :class:`ChaosRules` holds them
and is the inbound session's reply override (``ServerSettings.reply_override``):
asked at each stage, the first rule that fires answers.

Pure: no I/O, no reactor.  A lock keeps it consistent when the fixture
(``tlsmta.testing.Relay.fail``) changes it from the test's thread while the
reactor's thread asks it.
"""

from __future__ import annotations

import fnmatch
import random
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from tlsmta.errors import TlsmtaError
from tlsmta.smtp import Reply
from tlsmta.smtp.server_session import Stage

STAGES = tuple(stage.value for stage in Stage)
_RECIPIENT_STAGES = (Stage.RCPT, Stage.DATA, Stage.END_OF_DATA)
_STATUS = re.compile(r"([45])\.\d{1,3}\.\d{1,3}")
_TEXT_LIMIT = 400  # leaves room for code and status in RFC 5321's 512-octet reply line
_RECIPIENT_LIMIT = 320  # a glob over one address (RFC 5321 4.5.3.1: 64 + 1 + 255)
MAX_RULES = 100  # every session stage walks the list, and the page shows it whole


class ChaosError(TlsmtaError, ValueError):
    """A failure rule that cannot be made (the message names the field)."""


@attrs.frozen
class FailureRule:
    """One configured failure: where, what reply, how likely, how often, for whom."""

    id: int
    stage: Stage
    reply: Reply
    probability: float = 1.0
    times: int | None = None  # how many times it fires in all; None: until removed
    recipient: str | None = None  # glob over the stage's recipients; None: any

    def matches(self, stage: Stage, recipients: tuple[str, ...]) -> bool:
        if stage is not self.stage:
            return False
        if self.recipient is None:
            return True
        pattern = self.recipient.lower()
        return any(fnmatch.fnmatchcase(address.lower(), pattern) for address in recipients)


def parse_stage(value: Any) -> Stage:
    """``"rcpt"``, ``"RCPT"``, ``"end_of_data"`` ... -> the Stage."""
    if isinstance(value, Stage):
        return value
    if isinstance(value, str):
        try:
            return Stage(value.strip().upper().replace("_", "-"))
        except ValueError:
            pass
    raise ChaosError(f"stage must be one of {', '.join(STAGES)} (got {value!r})")


def failure_reply(code: Any, text: Any = None, status: Any = None, stage: Stage = Stage.RCPT) -> Reply:
    """A valid SMTP failure reply: a 4xx or 5xx code, an RFC 3463 status of the same class
    (default ``X.0.0``) and one line of printable text."""
    if not isinstance(code, int) or isinstance(code, bool) or not (400 <= code <= 559 and code % 100 // 10 <= 5):
        raise ChaosError(f"code must be an SMTP failure code, 4xx or 5xx (got {code!r})")
    if status is None:
        status = f"{code // 100}.0.0"
    if not isinstance(status, str) or not _STATUS.fullmatch(status) or status[0] != str(code)[0]:
        raise ChaosError(f"status must be an enhanced status code of the same class as {code}, e.g. {code // 100}.2.2 "
                         f"(got {status!r})")
    if text is None:
        text = f"chaos: {stage.value} failure injected by the dev relay"
    if not isinstance(text, str) or not text.isascii() or not text.isprintable() or len(text) > _TEXT_LIMIT:
        raise ChaosError(f"text must be one line of printable ASCII, at most {_TEXT_LIMIT} characters")
    return Reply.of(code, status, text)


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ChaosError(f"probability must be a number in (0, 1] (got {value!r})")
    return float(value)


def _times(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ChaosError(f"times must be a whole number from 1, or null for until removed (got {value!r})")
    return value


def _recipient(value: Any, stage: Stage) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > _RECIPIENT_LIMIT:
        raise ChaosError(f"recipient must be an address or a glob such as '*@example.test', at most "
                         f"{_RECIPIENT_LIMIT} characters (got {value[:40] if isinstance(value, str) else value!r})")
    if stage not in _RECIPIENT_STAGES:
        raise ChaosError(f"recipient applies only at {', '.join(s.value for s in _RECIPIENT_STAGES)}")
    return value.strip()


def described(rule: FailureRule, times_left: int | None) -> dict[str, Any]:
    """A rule as JSON."""
    reply = rule.reply
    return {"id": rule.id, "stage": rule.stage.value, "code": reply.code, "status": reply.enhanced, "text": reply.detail,
            "reply": str(reply), "probability": rule.probability, "times": rule.times, "times_left": times_left,
            "recipient": rule.recipient}


class ChaosRules:
    """The failure rules in force, in the order added; called as the session's reply override."""

    def __init__(self, chance: Callable[[], float] = random.random,
                 on_fire: Callable[[FailureRule, tuple[str, ...]], None] | None = None):
        self.chance = chance  # [0, 1): a rule with probability p fires when chance() < p
        self.on_fire = on_fire  # told each time a rule answers (the service logs it), outside the lock
        self._lock = threading.Lock()
        self._rules: list[FailureRule] = []
        self._left: dict[int, int] = {}  # rule id -> times it still fires (rules with times only)
        self._next_id = 1

    def add(self, stage: Any, code: Any, text: Any = None, status: Any = None, probability: Any = 1.0,
            times: Any = None, recipient: Any = None) -> FailureRule:
        """A new rule, checked (ChaosError names the field at fault)."""
        stage = parse_stage(stage)
        reply = failure_reply(code, text, status, stage)
        chance, count, pattern = _probability(probability), _times(times), _recipient(recipient, stage)
        with self._lock:
            if len(self._rules) >= MAX_RULES:
                raise ChaosError(f"at most {MAX_RULES} rules at once: remove some first")
            rule = FailureRule(self._next_id, stage, reply, chance, count, pattern)
            self._next_id += 1
            self._rules.append(rule)
            if count is not None:
                self._left[rule.id] = count
        return rule

    def add_from(self, fields: Mapping[str, Any]) -> FailureRule:
        """A rule from the API's JSON object (the keys of :meth:`add`)."""
        unknown = set(fields) - {"stage", "code", "text", "status", "probability", "times", "recipient"}
        if unknown:
            raise ChaosError(f"unknown field {sorted(unknown)[0]!r}")
        if "stage" not in fields or "code" not in fields:
            raise ChaosError("stage and code are required")
        return self.add(**fields)

    def remove(self, rule_id: int) -> bool:
        """Remove one rule; False when there is none with that id."""
        with self._lock:
            kept = [rule for rule in self._rules if rule.id != rule_id]
            found = len(kept) != len(self._rules)
            self._rules = kept
            self._left.pop(rule_id, None)
        return found

    def clear(self) -> int:
        """Remove every rule; returns how many there were."""
        with self._lock:
            count = len(self._rules)
            self._rules, self._left = [], {}
        return count

    def listing(self) -> list[dict[str, Any]]:
        """The rules as the API and the page show them (``times_left``: None for until removed)."""
        with self._lock:
            return [described(rule, self._left.get(rule.id)) for rule in self._rules]

    def __call__(self, stage: Stage, recipients: tuple[str, ...]) -> Reply | None:
        """The reply override: the reply of the first rule that fires at ``stage``, or None."""
        fired = self._fire(stage, recipients)
        if fired is None:
            return None
        if self.on_fire is not None:
            self.on_fire(fired, recipients)
        return fired.reply

    def _fire(self, stage: Stage, recipients: tuple[str, ...]) -> FailureRule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.matches(stage, recipients):
                    continue
                if rule.probability < 1 and not self.chance() < rule.probability:
                    continue
                if rule.id in self._left:
                    self._left[rule.id] -= 1
                    if not self._left[rule.id]:
                        del self._left[rule.id]
                        self._rules.remove(rule)
                return rule
        return None
