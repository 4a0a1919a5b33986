"""The strictest applicable policy for one MX: local options + MTA-STS + DANE + REQUIRETLS
(policy.effective_requirement), exhaustively, without a reactor."""

from __future__ import annotations

import itertools

import pytest

from tlsmta.tls import _policy as policy
from tlsmta.tls._policy import DANEStatus, Names, STSState, VerifyMode, effective_requirement

TLS = ("no", "ifavailable", "required")
MODES = tuple(VerifyMode)
STS = (None, STSState("none", False), STSState("testing", True), STSState("testing", False), STSState("enforce", True), STSState("enforce", False))
DANE = tuple(DANEStatus)
ALL = list(itertools.product(TLS, MODES, (True, False), STS, DANE, (False, True), (False, True), (False, True)))


def _req(tls, verify, fallback, sts, dane, requiretls, no, secure):  # type: ignore[no-untyped-def]
    return effective_requirement(tls, verify, fallback, sts=sts, dane=dane, requiretls=requiretls, tls_required_no=no, mx_secure=secure)


RANK = {"no": 0, "ifavailable": 1, "required": 2}


def test_never_weaker_than_local() -> None:
    """For every combination: the session is never weaker than the local options
    (except that DANE replaces the CA/name check by the TLSA match)."""
    for case in ALL:
        tls, verify, fallback, sts, dane, requiretls, no, secure = case
        req = _req(*case)
        assert RANK[req.tls] >= RANK[tls], case
        assert not (req.fallback and not fallback), case
        if not req.dane:
            assert req.verify is verify or req.verify is VerifyMode.HOST, case


def test_external_requirements_hold() -> None:
    """For every combination: enforce, DANE and REQUIRETLS mean STARTTLS required and no
    plain-text fallback; REQUIRETLS means a verified certificate (host check on the MX name,
    or DANE) and bounces on failure."""
    for case in ALL:
        _check_external(case)


def _check_external(case: tuple) -> None:  # type: ignore[type-arg]
    tls, verify, fallback, sts, dane, requiretls, no, secure = case
    req = _req(*case)
    applies = not no or requiretls
    if requiretls or (applies and (dane is not DANEStatus.NONE or (sts is not None and sts.mode == "enforce"))):
        assert req.tls == "required" and req.fallback is False
    if requiretls:
        assert req.requiretls and req.permanent
        assert req.unusable is not None or req.dane or (req.verify is VerifyMode.HOST and req.names is Names.MX)
    else:
        assert not req.permanent


def test_local_only() -> None:
    """No external policy: the local options as they are, names = domain or MX."""
    req = effective_requirement("ifavailable", VerifyMode.OPTIONAL, True)
    assert (req.policy, req.tls, req.verify, req.fallback, req.names) == ("local", "ifavailable", VerifyMode.OPTIONAL, True, Names.DOMAIN_OR_MX)
    assert req.unusable is None and req.wanted("example.test", "mx.example.test") == ("example.test", "mx.example.test")


def test_sts_enforce_matching_mx() -> None:
    """Enforce with a listed MX: STARTTLS required, host check on the MX name only, no fallback."""
    req = effective_requirement("ifavailable", VerifyMode.NO, True, sts=STSState("enforce", True))
    assert (req.policy, req.tls, req.verify, req.fallback) == ("mta-sts-enforce", "required", VerifyMode.HOST, False)
    assert req.wanted("example.test", "mx.example.test") == ("mx.example.test",)
    assert req.unusable is None


def test_sts_enforce_other_mx_is_unusable() -> None:
    """Enforce: an MX the policy does not list is not used (deferred 4.7.5, never plain text)."""
    req = effective_requirement("no", VerifyMode.NO, True, sts=STSState("enforce", False))
    assert req.unusable is not None and req.unusable.status == "4.7.5" and "MTA-STS" in req.unusable.reason


def test_sts_testing_changes_nothing_but_reports() -> None:
    """Testing: deliver as before (local options), with the enforce checks evaluated for reports."""
    req = effective_requirement("ifavailable", VerifyMode.NO, True, sts=STSState("testing", False))
    assert (req.policy, req.tls, req.verify, req.fallback, req.report_verify) == ("mta-sts-testing", "ifavailable", VerifyMode.NO, True, True)
    assert req.unusable is None


def test_sts_none_is_no_policy() -> None:
    """mode: none is the same as no policy."""
    assert effective_requirement("no", VerifyMode.NO, True, sts=STSState("none", False)).policy == "local"


def test_dane_usable_overrides_everything() -> None:
    """Usable TLSA records: DANE judges the certificate; STARTTLS mandatory; MTA-STS not applied."""
    req = effective_requirement("no", VerifyMode.HOST, True, sts=STSState("enforce", False), dane=DANEStatus.USABLE)
    assert (req.policy, req.tls, req.dane, req.fallback, req.unusable) == ("dane", "required", True, False, None)


def test_dane_unusable_records_mean_mandatory_tls() -> None:
    """A secure TLSA RRset without a usable record: TLS mandatory (no fallback), local checks kept."""
    req = effective_requirement("ifavailable", VerifyMode.OPTIONAL, True, dane=DANEStatus.UNUSABLE)
    assert (req.policy, req.tls, req.dane, req.fallback, req.verify) == ("dane", "required", False, False, VerifyMode.OPTIONAL)


def test_dane_lookup_failure_makes_mx_unusable() -> None:
    """A failed TLSA lookup: the MX is not used (RFC 7672 2.2); deferral, or 5.7.10 with REQUIRETLS."""
    req = effective_requirement("no", VerifyMode.NO, True, dane=DANEStatus.FAILED)
    assert req.unusable is not None and req.unusable.status == "4.7.5"
    req = effective_requirement("no", VerifyMode.NO, True, dane=DANEStatus.FAILED, requiretls=True, mx_secure=True)
    assert req.unusable is not None and req.unusable.status == "5.7.10"


def test_requiretls() -> None:
    """REQUIRETLS: verified TLS on the MX name, REQUIRETLS at the next hop, failures bounce 5.7.10."""
    req = effective_requirement("no", VerifyMode.NO, True, requiretls=True, mx_secure=True)
    assert (req.policy, req.tls, req.verify, req.names, req.fallback, req.requiretls) == (
        "requiretls", "required", VerifyMode.HOST, Names.MX, False, True)
    assert str(req.failure("4.7.5", "certificate name does not match")).startswith("5.7.10 REQUIRETLS:")
    assert policy.requiretls_refused(req, advertised=False).status == "5.7.30"
    assert policy.requiretls_refused(req, advertised=True) is None


def test_requiretls_needs_a_validated_mx() -> None:
    """RFC 8689 4.2.1: the MX must be DNSSEC-secure or listed in an MTA-STS policy."""
    assert effective_requirement("no", VerifyMode.NO, True, requiretls=True).unusable.status == "5.7.10"
    assert effective_requirement("no", VerifyMode.NO, True, requiretls=True, sts=STSState("testing", True)).unusable is None
    assert effective_requirement("no", VerifyMode.NO, True, requiretls=True, sts=STSState("enforce", False)).unusable.status == "5.7.10"


def test_tls_required_no_ignores_recipient_policies() -> None:
    """TLS-Required: No sets MTA-STS and DANE aside (RFC 8689 5); local options still apply."""
    req = effective_requirement("ifavailable", VerifyMode.OPTIONAL, True, sts=STSState("enforce", False), dane=DANEStatus.USABLE, tls_required_no=True)
    assert (req.policy, req.tls, req.verify, req.fallback, req.unusable) == ("local", "ifavailable", VerifyMode.OPTIONAL, True, None)
    assert req.ignored == ("mta-sts", "dane")


def test_tls_required_no_is_ignored_with_requiretls() -> None:
    """With the REQUIRETLS MAIL parameter the TLS-Required header does not count."""
    req = effective_requirement("no", VerifyMode.NO, True, sts=STSState("enforce", True), requiretls=True, tls_required_no=True)
    assert req.requiretls and req.tls == "required" and req.ignored == ()


@pytest.mark.parametrize(
    ("reason", "errnos", "expected"),
    [
        ("certificate verification failed: certificate has expired (depth 0)", (10,), "certificate-expired"),
        ("certificate not signed by a trusted CA: unable to get local issuer certificate (depth 0)", (20,), "certificate-not-trusted"),
        ("certificate name does not match mx.example.test", (), "certificate-host-mismatch"),
        ("dane: no TLSA record matched the certificate chain", (), "validation-failure"),
        ("certificate rejected by verify hook (depth 0)", (), "validation-failure"),
    ],
)
def test_tlsrpt_result_types(reason: str, errnos: tuple[int, ...], expected: str) -> None:
    """Certificate failures map to the RFC 8460 result types."""
    verdict = policy.Verdict(policy.Outcome.FAILED, reason)
    errors = [policy.ChainError(0, e, "x") for e in errnos]
    assert policy.certificate_result_type(verdict, errors) == expected


@pytest.mark.parametrize("dane, why", [(DANEStatus.NONE, "no DNSSEC-validated TLSA records"), (DANEStatus.UNUSABLE, "no usable TLSA records")])
@pytest.mark.parametrize("tls", TLS)
def test_dane_required_without_usable_records_makes_the_mx_unusable(dane: DANEStatus, why: str, tls: str) -> None:
    """dane = "required" (Postfix dane-only): no usable TLSA records means this MX is not used (4.7.5), whatever
    the local tls; never PKIX-only or plain text.  Also for a TLS-Required: No message (the sender's own policy)."""
    for no in (False, True):
        req = effective_requirement(tls, VerifyMode.HOST, True, dane=dane, dane_required=True, tls_required_no=no)
        assert (req.policy, req.tls, req.fallback) == ("dane-required", "required", False)
        assert str(req.unusable) == f"4.7.5 dane: DANE required (dane = required) but {why}; MX not used"


def test_dane_required_with_usable_records_is_dane() -> None:
    """Usable records: DANE decides as without the option, also under TLS-Required: No; a failed lookup stays unusable."""
    for no in (False, True):
        req = effective_requirement("no", VerifyMode.NO, True, dane=DANEStatus.USABLE, dane_required=True, tls_required_no=no)
        assert (req.policy, req.dane, req.unusable, req.ignored) == ("dane", True, None, ())
    req = effective_requirement("no", VerifyMode.NO, True, dane=DANEStatus.FAILED, dane_required=True)
    assert req.unusable is not None and "TLSA lookup failed" in req.unusable.reason
    req = effective_requirement("no", VerifyMode.NO, True, dane=DANEStatus.NONE, dane_required=True, requiretls=True, mx_secure=True)
    assert req.unusable is not None and req.unusable.status == "5.7.10"  # REQUIRETLS: a bounce, not a wait


PIN = "ab" * 32


def test_pins_decide_and_require_tls() -> None:
    """tls_pins set: STARTTLS required, no fallback, the pins judge the certificate (no CA, no names); published
    policies (MTA-STS enforce for another MX, DANE) are not consulted."""
    for tls, dane in itertools.product(TLS, DANE):
        req = effective_requirement(tls, VerifyMode.HOST, True, sts=STSState("enforce", False), dane=dane, pins=(PIN,))
        assert (req.policy, req.tls, req.verify, req.fallback, req.pinned, req.dane, req.unusable) == (
            "pinned", "required", VerifyMode.NO, False, True, False, None)


def test_pin_verdict() -> None:
    """Any pin of several (rotation) matches; another key or no certificate fails."""
    assert policy.pin_verdict((PIN, "cd" * 32), "cd" * 32).verified
    assert policy.pin_verdict((PIN,), "cd" * 32).reason == f"pin: SPKI sha256:{'cd' * 32} is not in tls_pins"
    assert policy.pin_verdict((PIN,), None).fatal
