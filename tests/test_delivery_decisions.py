"""delivery.decisions: the choices delivery makes about one MX, which `tlsmta probe` shares."""

from __future__ import annotations

import pytest

from tlsmta.delivery import _decisions as decisions
from tlsmta.discovery._published import MXTLSA, ExternalFacts
from tlsmta.smtp._reply import Reply
from tlsmta.smtp.client_session import GreetingRefused, HelloRefused
from tlsmta.tls import _policy as policy
from tlsmta.tls._policy import DANEStatus, Outcome, Requirement, TLSAction, TLSFailure, Verdict, VerifyMode


def test_addresses_tried_per_host() -> None:
    addresses = [f"192.0.2.{i}" for i in range(1, 8)]
    assert decisions.addresses_to_try(addresses) == addresses[: decisions.MAX_ADDRESSES_PER_HOST]
    assert decisions.addresses_to_try(addresses[:2]) == addresses[:2]


@pytest.mark.parametrize(
    "refused, expected",
    [
        (GreetingRefused(Reply(554, ("5.3.2 busy",))), "451 4.3.2 mx.test said: 554 5.3.2 busy"),
        (GreetingRefused(Reply(421, ("closing",))), "451 4.4.0 mx.test said: 421 closing"),
        (HelloRefused(Reply(550, ("no",))), "451 4.5.0 mx.test refused EHLO and HELO"),
        (HelloRefused(Reply(550, ("no",)), tls=True), "451 4.5.0 mx.test refused EHLO after STARTTLS"),
    ],
)
def test_greeting_failure_defers(refused: GreetingRefused | HelloRefused, expected: str) -> None:
    assert str(decisions.greeting_failure(refused, "mx.test")) == expected


def test_requirement_takes_the_mx_facts() -> None:
    facts = ExternalFacts(mx_secure=True, tlsa={"mx.test": MXTLSA(DANEStatus.USABLE)})
    assert decisions.requirement("ifavailable", VerifyMode.NO, True, facts, "mx.test").dane
    assert not decisions.requirement("ifavailable", VerifyMode.NO, True, facts, "other.test").dane
    assert decisions.requirement("ifavailable", VerifyMode.NO, True, facts, "mx.test", tls_required_no=True).tls == "ifavailable"


def test_dane_verdict_only_with_usable_records() -> None:
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    assert decisions.dane_verdict(ExternalFacts(), "mx.test", [], now) is None
    verdict = decisions.dane_verdict(ExternalFacts(tlsa={"mx.test": MXTLSA(DANEStatus.USABLE)}), "mx.test", [], now)
    assert verdict is not None and verdict.fatal  # no chain matches no record


@pytest.mark.parametrize(
    "caps, size, smtputf8, expected",
    [
        ({"SIZE": "100"}, 101, False, "552 5.3.4 message size 101 exceeds mx.test's limit 100"),
        ({"SIZE": "100"}, 100, False, None),
        ({"SIZE": "0"}, 10**9, False, None),  # no limit
        ({"SIZE": ""}, 10**9, False, None),
        ({}, 10, True, "553 5.6.7 mx.test does not support SMTPUTF8"),
        ({"SMTPUTF8": ""}, 10, True, None),
    ],
)
def test_envelope_refusal(caps: dict[str, str], size: int, smtputf8: bool, expected: str | None) -> None:
    refusal = decisions.envelope_refusal(caps, size, smtputf8, "mx.test")
    assert (str(refusal) if refusal else None) == expected


@pytest.mark.parametrize(
    "caps, body_type, smtputf8, requiretls, expected",
    [
        ({}, "7BIT", False, False, []),
        ({"SIZE": "", "8BITMIME": ""}, "8BITMIME", False, False, ["SIZE=42", "BODY=8BITMIME"]),
        ({}, "8BITMIME", True, True, ["SMTPUTF8", "REQUIRETLS"]),  # no BODY= unless offered
    ],
)
def test_mail_parameters(caps: dict[str, str], body_type: str, smtputf8: bool, requiretls: bool, expected: list[str]) -> None:
    assert decisions.mail_parameters(caps, 42, body_type, smtputf8, requiretls) == expected


OK = Verdict(Outcome.VERIFIED)
BAD = Verdict(Outcome.FAILED, "certificate name does not match mx.test")
SOFT = Verdict(Outcome.SOFTFAIL, "self-signed")


def local(tls: str, fallback: bool = True) -> Requirement:
    return Requirement("local", tls, VerifyMode.HOST, fallback=fallback)


@pytest.mark.parametrize(
    "req, seen, expected",
    [
        (local("no"), {"starttls_offered": True}, TLSAction.PLAIN),
        (local("ifavailable"), {"starttls_offered": False}, TLSAction.PLAIN),
        (local("required"), {"starttls_offered": False}, "451 4.7.6 STARTTLS required but not advertised"),
        (local("ifavailable"), {"starttls_offered": True, "refused": Reply(454, ("4.7.0 no",))}, TLSAction.PLAIN),
        (local("ifavailable", fallback=False), {"starttls_offered": True, "refused": Reply(454, ("4.7.0 no",))},
         "451 4.7.5 TLS negotiation failed: STARTTLS refused: 454 4.7.0 no"),
        (local("ifavailable"), {"starttls_offered": True, "handshake_error": "reset"}, TLSAction.PLAIN),
        (local("required"), {"starttls_offered": True, "handshake_error": "reset"}, "451 4.7.5 TLS negotiation failed: reset"),
        (local("ifavailable"), {"starttls_offered": True, "verdict": OK}, TLSAction.STARTTLS),
        (local("ifavailable"), {"starttls_offered": True, "verdict": SOFT}, TLSAction.STARTTLS),
        # A certificate that failed is never followed by plain text, whatever the fallback.
        (local("ifavailable"), {"starttls_offered": True, "verdict": BAD}, "451 4.7.5 certificate name does not match mx.test"),
        (Requirement("requiretls", "required", VerifyMode.HOST, requiretls=True), {"starttls_offered": True, "verdict": BAD},
         "550 5.7.10 REQUIRETLS: certificate name does not match mx.test"),
        (Requirement("requiretls", "required", VerifyMode.HOST, requiretls=True), {"starttls_offered": True, "verdict": OK},
         "550 5.7.30 REQUIRETLS: the server does not offer REQUIRETLS"),
        (Requirement("requiretls", "required", VerifyMode.HOST, requiretls=True),
         {"starttls_offered": True, "verdict": OK, "requiretls_offered": True}, TLSAction.STARTTLS),
        (Requirement("mta-sts-enforce", "required", VerifyMode.HOST, unusable=TLSFailure("4.7.5", "MX host not listed")),
         {"starttls_offered": True, "verdict": OK}, "451 4.7.5 MX host not listed"),
    ],
)
def test_session_outcome(req: Requirement, seen: dict, expected: TLSAction | str) -> None:
    outcome = decisions.session_outcome(req, **seen)
    assert (str(outcome.reply) if isinstance(outcome, TLSFailure) else outcome) == expected


@pytest.mark.parametrize("code", [502, 530, 354, 250, 221, 500, 554, 421])
def test_only_454_to_starttls_falls_back_to_plain_text(code: int) -> None:
    """DESIGN.md: a 454 may be followed by plain text under ifavailable; any other answer to STARTTLS defers
    4.7.5 (a server that advertises STARTTLS and then answers 502, 354 or 250 is the STRIPTLS downgrade)."""
    refused = Reply(code, ("no",))
    outcome = decisions.session_outcome(local("ifavailable"), starttls_offered=True, refused=refused)
    assert str(outcome.reply) == f"451 4.7.5 TLS negotiation failed: STARTTLS refused: {code} no"


def test_no_plain_text_after_a_completed_handshake() -> None:
    """The connection broke after the handshake finished (at the EHLO inside TLS): never plain text."""
    assert policy.handshake_failed("ifavailable", True, None, "connection lost") is TLSAction.PLAIN
    outcome = policy.handshake_failed("ifavailable", True, OK, "connection lost", completed=True)
    assert str(outcome) == "4.7.5 TLS session failed after the handshake: connection lost"


def test_fallback_words() -> None:
    """The delivery line's tls_fallback says why plain text was used."""
    assert policy.fallback_after_refusal(Reply(454, ("4.7.0 later",))) == "starttls-refused:454"
    assert policy.fallback_after_handshake("no shared cipher") == "handshake-failed:no shared cipher"
    assert policy.FALLBACK_NOT_OFFERED == "not-offered"
