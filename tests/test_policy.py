"""Unit tests for tlsmta.policy: the pure TLS verification verdicts.

No reactor, no sockets, no OpenSSL objects: chain results and presented
names are built by hand, exactly as tlsmta.tls hands them to the policy.
"""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmta.tls._policy import (
    TLS_ENHANCED_CODE,
    UNTRUSTED_ERRNOS,
    ChainError,
    ChainResult,
    Outcome,
    PresentedNames,
    Verdict,
    VerifyMode,
    chain_failure,
    decide,
    depth_ok,
    match_names,
)

# X509_V_ERR_* codes from OpenSSL's x509_vfy.h, with OpenSSL's own texts.
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20

EXPIRED_TEXT = "certificate has expired"
SELF_SIGNED_TEXT = "self-signed certificate"
SELF_SIGNED_IN_CHAIN_TEXT = "self-signed certificate in certificate chain"
NO_LOCAL_ISSUER_TEXT = "unable to get local issuer certificate"

UNTRUSTED_REASON = "certificate not signed by a trusted CA: "
VERIFY_FAILED_REASON = "certificate verification failed: "
NO_CERT_REASON = "no certificate presented"

# Outbound: a message to example.com whose MX is mx.example.com.
DOMAIN = "example.com"
MX_HOST = "mx.example.com"
WANTED = (DOMAIN, MX_HOST)
NAME_MISMATCH_REASON = f"certificate name does not match {DOMAIN} or {MX_HOST}"

LEAF = 0
INTERMEDIATE = 1


def error(depth: int, errno: int, text: str) -> ChainError:
    """One chain error as tlsmta.tls records it."""
    return ChainError(depth=depth, errno=errno, text=text)


# -- the chain outcomes of the matrix ------------------------------------------------
# Each entry: the ChainResult, and the chain reason decide() must report (None
# when the chain is acceptable and the name/certificate checks decide).

CHAINS: dict[str, tuple[ChainResult, str | None]] = {
    "clean": (ChainResult(), None),
    "untrusted-20": (
        ChainResult(errors=(error(LEAF, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, NO_LOCAL_ISSUER_TEXT),)),
        f"{UNTRUSTED_REASON}{NO_LOCAL_ISSUER_TEXT} (depth {LEAF})",
    ),
    "untrusted-19": (
        ChainResult(
            errors=(error(INTERMEDIATE, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, SELF_SIGNED_IN_CHAIN_TEXT),)
        ),
        f"{UNTRUSTED_REASON}{SELF_SIGNED_IN_CHAIN_TEXT} (depth {INTERMEDIATE})",
    ),
    "untrusted-18": (
        ChainResult(errors=(error(LEAF, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_TEXT),)),
        f"{UNTRUSTED_REASON}{SELF_SIGNED_TEXT} (depth {LEAF})",
    ),
    "expired-10": (
        ChainResult(errors=(error(LEAF, X509_V_ERR_CERT_HAS_EXPIRED, EXPIRED_TEXT),)),
        f"{VERIFY_FAILED_REASON}{EXPIRED_TEXT} (depth {LEAF})",
    ),
    "hook-accepted-error": (
        ChainResult(
            errors=(error(INTERMEDIATE, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, SELF_SIGNED_IN_CHAIN_TEXT),),
            hook_answers={INTERMEDIATE: True},
        ),
        None,
    ),
    "hook-rejected-depth": (
        ChainResult(hook_answers={INTERMEDIATE: False}),
        f"certificate rejected by verify hook (depth {INTERMEDIATE})",
    ),
    "hook-raised": (
        ChainResult(hook_error="RuntimeError: boom"),
        "verify hook failed: RuntimeError: boom",
    ),
}

# The name cases of the matrix: what the certificate presents, and whether the
# host check passes (and on which name) when it is reached.
NAMES: dict[str, tuple[PresentedNames | None, str | None]] = {
    "match-domain": (PresentedNames(dns_names=(DOMAIN,)), DOMAIN),
    "match-mx-only": (PresentedNames(dns_names=(MX_HOST,)), MX_HOST),
    "no-match": (PresentedNames(dns_names=("mail.other.example.net",)), None),
    "no-certificate": (None, None),
}


def expected_verdict(mode: VerifyMode, chain_reason: str | None, names_case: str) -> tuple[Outcome, str]:
    """The verdict the tls_verify semantics prescribe, cell by cell, stated as a table lookup."""
    presented, matched = NAMES[names_case]
    if mode is VerifyMode.NO:
        return Outcome.UNCHECKED, ""
    failed = Outcome.SOFTFAIL if mode is VerifyMode.OPTIONAL else Outcome.FAILED
    if chain_reason is not None:
        return failed, chain_reason
    if presented is None:
        return failed, NO_CERT_REASON
    if mode is VerifyMode.CA:
        return Outcome.VERIFIED, ""
    if matched is None:
        return failed, NAME_MISMATCH_REASON
    return Outcome.VERIFIED, ""


WORDS = {
    Outcome.VERIFIED: "yes",
    Outcome.UNCHECKED: "no",
    Outcome.SOFTFAIL: "softfail",
    Outcome.FAILED: "no",
}


@pytest.mark.parametrize(
    ("mode", "chain_case", "names_case"),
    list(itertools.product(VerifyMode, CHAINS, NAMES)),
)
def test_decide_matrix(mode: VerifyMode, chain_case: str, names_case: str) -> None:
    """Every tls_verify mode x chain outcome x name case gives the outcome,
    fatality, log word and reason that the tls_verify semantics prescribe."""
    chain, chain_reason = CHAINS[chain_case]
    presented, matched = NAMES[names_case]
    outcome, reason = expected_verdict(mode, chain_reason, names_case)

    verdict = decide(mode, chain, presented, WANTED)

    assert verdict.outcome is outcome
    assert verdict.reason == reason
    assert verdict.fatal is (outcome is Outcome.FAILED)
    assert verdict.verified is (outcome is Outcome.VERIFIED)
    assert verdict.outcome.word == WORDS[outcome]
    if outcome is Outcome.VERIFIED and mode.checks_names:
        assert verdict.matched_name == matched


# -- single cells spelled out, so a reader sees the rules without the table ---------


def test_no_mode_never_looks_at_the_certificate() -> None:
    """tls_verify = no is UNCHECKED even for an untrusted, nameless, absent certificate."""
    chain, _ = CHAINS["untrusted-20"]
    verdict = decide(VerifyMode.NO, chain, None, WANTED)
    assert verdict == Verdict(Outcome.UNCHECKED)
    assert not verdict.fatal
    assert verdict.outcome.word == "no"
    assert verdict.enhanced_code is None


def test_ca_mode_fails_untrusted_chain_with_ca_reason() -> None:
    """tls_verify = ca fails (fatal) an untrusted chain and says it is not signed by a trusted CA."""
    chain, _ = CHAINS["untrusted-20"]
    verdict = decide(VerifyMode.CA, chain, PresentedNames(dns_names=(DOMAIN,)), WANTED)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.fatal
    assert verdict.reason == f"certificate not signed by a trusted CA: {NO_LOCAL_ISSUER_TEXT} (depth {LEAF})"
    assert verdict.enhanced_code == TLS_ENHANCED_CODE
    assert verdict.status_text == f"{TLS_ENHANCED_CODE} {verdict.reason}"


def test_ca_mode_ignores_names() -> None:
    """tls_verify = ca verifies a trusted certificate that names neither the domain nor the MX."""
    verdict = decide(VerifyMode.CA, ChainResult(), PresentedNames(dns_names=("unrelated.example.org",)), WANTED)
    assert verdict.outcome is Outcome.VERIFIED
    assert verdict.outcome.word == "yes"
    assert verdict.status_text == ""


def test_host_mode_accepts_mx_name() -> None:
    """tls_verify = host is satisfied by the MX host name alone, and reports which name matched."""
    verdict = decide(VerifyMode.HOST, ChainResult(), PresentedNames(dns_names=(MX_HOST,)), WANTED)
    assert verdict.outcome is Outcome.VERIFIED
    assert verdict.matched_name == MX_HOST


def test_host_mode_name_mismatch_is_fatal() -> None:
    """tls_verify = host fails a trusted certificate for another name, naming domain and MX."""
    verdict = decide(VerifyMode.HOST, ChainResult(), PresentedNames(dns_names=("evil.example",)), WANTED)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.fatal
    assert verdict.reason == "certificate name does not match example.com or mx.example.com"
    assert verdict.status_text == "4.7.5 certificate name does not match example.com or mx.example.com"


def test_optional_mode_softfails_instead_of_failing() -> None:
    """tls_verify = optional runs the host checks but a failure is a non-fatal SOFTFAIL with its reason."""
    verdict = decide(VerifyMode.OPTIONAL, ChainResult(), PresentedNames(dns_names=("evil.example",)), WANTED)
    assert verdict.outcome is Outcome.SOFTFAIL
    assert not verdict.fatal
    assert verdict.outcome.word == "softfail"
    assert verdict.reason == NAME_MISMATCH_REASON
    assert verdict.enhanced_code == TLS_ENHANCED_CODE


def test_optional_mode_softfails_untrusted_chain() -> None:
    """tls_verify = optional turns an untrusted chain into a SOFTFAIL carrying the CA reason."""
    chain, reason = CHAINS["untrusted-18"]
    verdict = decide(VerifyMode.OPTIONAL, chain, PresentedNames(dns_names=(DOMAIN,)), WANTED)
    assert verdict.outcome is Outcome.SOFTFAIL
    assert verdict.reason == reason
    assert verdict.reason.startswith(UNTRUSTED_REASON)


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST, VerifyMode.OPTIONAL])
def test_no_certificate_presented(mode: VerifyMode) -> None:
    """A peer that sends no certificate fails every checking mode with 'no certificate presented'."""
    verdict = decide(mode, ChainResult(), None, WANTED)
    assert verdict.outcome is (Outcome.SOFTFAIL if mode is VerifyMode.OPTIONAL else Outcome.FAILED)
    assert verdict.reason == NO_CERT_REASON


def test_empty_wanted_list_never_matches() -> None:
    """With no wanted name a host check cannot pass, and the reason says so."""
    verdict = decide(VerifyMode.HOST, ChainResult(), PresentedNames(dns_names=(DOMAIN,)), ())
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason == "certificate name does not match (no name wanted)"


# -- the verify hook at depth 0 -------------------------------------------------------


@pytest.mark.parametrize("mode", [VerifyMode.HOST, VerifyMode.OPTIONAL])
def test_leaf_hook_accept_overrides_name_mismatch(mode: VerifyMode) -> None:
    """At depth 0 the hook saw the name check; its 'accept' verifies a certificate whose names do not match."""
    chain = ChainResult(hook_answers={LEAF: True})
    verdict = decide(mode, chain, PresentedNames(dns_names=("other.example",)), WANTED)
    assert verdict.outcome is Outcome.VERIFIED
    assert verdict.matched_name is None


@pytest.mark.parametrize("mode", [VerifyMode.HOST, VerifyMode.OPTIONAL])
def test_leaf_hook_not_shown_names_cannot_override_name_mismatch(mode: VerifyMode) -> None:
    """Inbound the hook is shown a depth-0 result without the name check (the EHLO name comes
    later): its 'accept' then does not switch the name check off (a pass-through hook would
    otherwise turn host into ca), but still covers the chain it was shown."""
    mismatch = PresentedNames(dns_names=("other.example",))
    chain = ChainResult(hook_answers={LEAF: True}, hook_saw_names=False)
    verdict = decide(mode, chain, mismatch, WANTED)
    assert verdict.outcome is (Outcome.SOFTFAIL if mode is VerifyMode.OPTIONAL else Outcome.FAILED)
    assert verdict.reason == NAME_MISMATCH_REASON
    # With matching names it verifies, and a depth-0 chain error the hook accepted stays accepted.
    matching = PresentedNames(dns_names=(MX_HOST,))
    assert decide(mode, chain, matching, WANTED) == Verdict(Outcome.VERIFIED, matched_name=MX_HOST)
    accepted_error = ChainResult(
        errors=(error(LEAF, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_TEXT),),
        hook_answers={LEAF: True},
        hook_saw_names=False,
    )
    assert decide(mode, accepted_error, matching, WANTED).outcome is Outcome.VERIFIED
    assert decide(mode, accepted_error, mismatch, WANTED).reason == NAME_MISMATCH_REASON
    # A rejecting answer still rejects; under ca the names were never wanted.
    rejected = decide(mode, ChainResult(hook_answers={LEAF: False}, hook_saw_names=False), matching, WANTED)
    assert rejected.reason == "certificate rejected by verify hook (depth 0)"
    assert decide(VerifyMode.CA, chain, mismatch, WANTED).outcome is Outcome.VERIFIED


@pytest.mark.parametrize("mode", [VerifyMode.CA, VerifyMode.HOST, VerifyMode.OPTIONAL])
def test_leaf_hook_reject_overrides_good_certificate(mode: VerifyMode) -> None:
    """A hook rejecting depth 0 fails a trusted, matching certificate (soft-fail under optional)."""
    chain = ChainResult(hook_answers={LEAF: False})
    verdict = decide(mode, chain, PresentedNames(dns_names=(DOMAIN,)), WANTED)
    assert verdict.outcome is (Outcome.SOFTFAIL if mode is VerifyMode.OPTIONAL else Outcome.FAILED)
    assert verdict.reason == "certificate rejected by verify hook (depth 0)"


def test_leaf_hook_accepts_leaf_chain_error() -> None:
    """A hook accepting an untrusted self-signed leaf at depth 0 makes a ca check pass."""
    chain = ChainResult(
        errors=(error(LEAF, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_TEXT),),
        hook_answers={LEAF: True},
    )
    verdict = decide(VerifyMode.CA, chain, PresentedNames(dns_names=(DOMAIN,)), WANTED)
    assert verdict.outcome is Outcome.VERIFIED


def test_hook_error_beats_hook_acceptance() -> None:
    """A hook that raised fails verification even if it had accepted other depths."""
    chain = ChainResult(hook_answers={LEAF: True, INTERMEDIATE: True}, hook_error="ValueError: x")
    verdict = decide(VerifyMode.HOST, chain, PresentedNames(dns_names=(DOMAIN,)), WANTED)
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason == "verify hook failed: ValueError: x"


# -- chain_failure --------------------------------------------------------------------


def test_chain_failure_clean_chain() -> None:
    """A chain with no error, no hook rejection and no hook error is acceptable."""
    assert chain_failure(ChainResult()) is None
    assert chain_failure(ChainResult(hook_answers={LEAF: True, INTERMEDIATE: True})) is None


@pytest.mark.parametrize("errno", sorted(UNTRUSTED_ERRNOS))
def test_chain_failure_untrusted_errnos(errno: int) -> None:
    """Every 'no path to a trust anchor' errno is reported as not signed by a trusted CA."""
    reason = chain_failure(ChainResult(errors=(error(2, errno, "some text"),)))
    assert reason == f"{UNTRUSTED_REASON}some text (depth 2)"


@pytest.mark.parametrize(
    "errno",
    [X509_V_ERR_CERT_HAS_EXPIRED, 9, 23, 26],  # expired, not yet valid, revoked, invalid purpose
)
def test_chain_failure_other_errnos(errno: int) -> None:
    """A trusted but unusable certificate (expired, revoked, ...) is a verification failure, not a CA failure."""
    assert errno not in UNTRUSTED_ERRNOS
    reason = chain_failure(ChainResult(errors=(error(LEAF, errno, "why"),)))
    assert reason == f"{VERIFY_FAILED_REASON}why (depth {LEAF})"


def test_chain_failure_reports_first_unaccepted_error() -> None:
    """Errors the hook accepted are skipped; the first remaining error is the reason."""
    chain = ChainResult(
        errors=(
            error(2, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, SELF_SIGNED_IN_CHAIN_TEXT),
            error(LEAF, X509_V_ERR_CERT_HAS_EXPIRED, EXPIRED_TEXT),
        ),
        hook_answers={2: True},
    )
    assert chain_failure(chain) == f"{VERIFY_FAILED_REASON}{EXPIRED_TEXT} (depth {LEAF})"


def test_chain_failure_hook_false_does_not_hide_error() -> None:
    """A hook answering False at an erroring depth leaves the chain error as the reason."""
    chain = ChainResult(
        errors=(error(INTERMEDIATE, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, NO_LOCAL_ISSUER_TEXT),),
        hook_answers={INTERMEDIATE: False},
    )
    assert chain_failure(chain) == f"{UNTRUSTED_REASON}{NO_LOCAL_ISSUER_TEXT} (depth {INTERMEDIATE})"


def test_chain_failure_hook_error_first() -> None:
    """A hook that raised is the reason even when the chain also has errors."""
    chain = ChainResult(
        errors=(error(LEAF, X509_V_ERR_CERT_HAS_EXPIRED, EXPIRED_TEXT),),
        hook_error="KeyError: 'x'",
    )
    assert chain_failure(chain) == "verify hook failed: KeyError: 'x'"


def test_chain_failure_leaves_leaf_rejection_to_decide() -> None:
    """A depth-0 hook rejection is not a chain failure: decide() judges depth 0 with the names."""
    assert chain_failure(ChainResult(hook_answers={LEAF: False})) is None


def test_chain_failure_reports_rejected_ca_depth_alongside_leaf() -> None:
    """A hook rejecting a CA depth is reported even when it also rejected depth 0."""
    chain = ChainResult(hook_answers={LEAF: False, 2: False})
    assert chain_failure(chain) == "certificate rejected by verify hook (depth 2)"


# -- depth_ok -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(VerifyMode))
@pytest.mark.parametrize("depth", [LEAF, INTERMEDIATE, 2])
def test_depth_ok_false_when_chain_not_ok(mode: VerifyMode, depth: int) -> None:
    """What OpenSSL rejected is shown to the hook as not ok, at any depth, in any mode."""
    assert depth_ok(mode, False, depth, PresentedNames(dns_names=(DOMAIN,)), WANTED) is False


@pytest.mark.parametrize("mode", list(VerifyMode))
def test_depth_ok_ca_depths_ignore_names(mode: VerifyMode) -> None:
    """Above depth 0 the built-in answer is OpenSSL's, names play no part."""
    assert depth_ok(mode, True, INTERMEDIATE, None, WANTED) is True


@pytest.mark.parametrize(
    ("mode", "names_case", "expected"),
    [
        (VerifyMode.HOST, "match-domain", True),
        (VerifyMode.HOST, "match-mx-only", True),
        (VerifyMode.HOST, "no-match", False),
        (VerifyMode.HOST, "no-certificate", False),
        (VerifyMode.OPTIONAL, "match-domain", True),
        (VerifyMode.OPTIONAL, "no-match", False),
        (VerifyMode.CA, "no-match", True),
        (VerifyMode.NO, "no-match", True),
    ],
)
def test_depth_ok_leaf_includes_name_check(mode: VerifyMode, names_case: str, expected: bool) -> None:
    """At depth 0, host and optional fold the name check into the answer the hook sees; ca and no do not."""
    presented, _ = NAMES[names_case]
    assert depth_ok(mode, True, LEAF, presented, WANTED) is expected


# -- modes and outcomes -------------------------------------------------------------


def test_verify_mode_properties() -> None:
    """Which modes check the chain, check names, and enforce (fail the delivery)."""
    assert [m for m in VerifyMode if m.checks_chain] == [VerifyMode.CA, VerifyMode.HOST, VerifyMode.OPTIONAL]
    assert [m for m in VerifyMode if m.checks_names] == [VerifyMode.HOST, VerifyMode.OPTIONAL]
    assert [m for m in VerifyMode if m.enforcing] == [VerifyMode.CA, VerifyMode.HOST]
    assert {m.value for m in VerifyMode} == {"no", "ca", "host", "optional"}


def test_outcome_words() -> None:
    """The log's verified field is yes / no / softfail."""
    assert {o: o.word for o in Outcome} == WORDS


# -- match_names: RFC 6125 -------------------------------------------------------------


def dns(*names: str) -> PresentedNames:
    """A certificate presenting these subjectAltName dNSNames."""
    return PresentedNames(dns_names=names)


@pytest.mark.parametrize(
    ("presented", "wanted", "expected"),
    [
        ("example.com", "example.com", "example.com"),
        ("*.example.com", "a.example.com", "a.example.com"),
        ("*.example.com", "mx-1.example.com", "mx-1.example.com"),
        ("*.example.com", "a.b.example.com", None),  # one label only
        ("*.example.com", "example.com", None),  # wildcard needs a label
        ("f*.example.com", "foo.example.com", None),  # no partial wildcards
        ("*o.example.com", "foo.example.com", None),
        ("a.*.example.com", "a.b.example.com", None),  # only the leading label
        ("*.*.example.com", "a.b.example.com", None),
        ("*.com", "example.com", None),  # too few labels for a wildcard
        ("*", "example", None),
        ("example.com", "www.example.com", None),
        ("www.example.com", "example.com", None),
        ("example.com", "example.co", None),
        ("example.co", "example.com", None),
    ],
)
def test_match_names_rfc6125(presented: str, wanted: str, expected: str | None) -> None:
    """Exact names match; a wildcard is one whole leading label standing for exactly one label."""
    assert match_names(dns(presented), [wanted]) == expected


@pytest.mark.parametrize(
    ("presented", "wanted"),
    [
        ("xn--bcher-kva.example", "bücher.example"),  # A-label presented, U-label wanted
        ("bücher.example", "xn--bcher-kva.example"),  # U-label presented, A-label wanted
        ("bücher.example", "bücher.example"),
        ("XN--BCHER-KVA.EXAMPLE", "BÜCHER.example"),
        ("*.xn--bcher-kva.example", "mx.bücher.example"),
        ("*.bücher.example", "mx.xn--bcher-kva.example"),
    ],
)
def test_match_names_idna(presented: str, wanted: str) -> None:
    """Names compare as IDNA A-labels whichever form each side uses; the A-label is what is reported."""
    matched = match_names(dns(presented), [wanted])
    assert matched is not None
    assert matched.endswith("xn--bcher-kva.example")


def test_match_names_idna_different_names() -> None:
    """IDNA conversion does not make different names equal (bücher is not bucher)."""
    assert match_names(dns("xn--bcher-kva.example"), ["bucher.example"]) is None
    assert match_names(dns("bucher.example"), ["bücher.example"]) is None


@pytest.mark.parametrize(
    ("presented", "wanted"),
    [
        ("EXAMPLE.COM", "example.com"),
        ("example.com", "Example.Com"),
        ("example.com.", "example.com"),
        ("example.com", "example.com."),
        ("Example.Com.", "EXAMPLE.com."),
        ("*.EXAMPLE.com.", "A.example.COM"),
    ],
)
def test_match_names_case_and_trailing_dot(presented: str, wanted: str) -> None:
    """Case and a trailing dot on either side make no difference; the match is reported normalised."""
    matched = match_names(dns(presented), [wanted])
    assert matched is not None
    assert matched == matched.lower()
    assert not matched.endswith(".")


def test_common_name_used_only_without_dns_names() -> None:
    """RFC 6125: the subject CN counts when the certificate has no dNSName."""
    assert match_names(PresentedNames(common_names=("b.example",)), ["b.example"]) == "b.example"


def test_common_name_ignored_when_dns_names_present() -> None:
    """A certificate with dNSName a.example and CN b.example is NOT valid for b.example."""
    presented = PresentedNames(dns_names=("a.example",), common_names=("b.example",))
    assert match_names(presented, ["b.example"]) is None
    assert match_names(presented, ["a.example"]) == "a.example"
    verdict = decide(VerifyMode.HOST, ChainResult(), presented, ["b.example"])
    assert verdict.outcome is Outcome.FAILED
    assert verdict.reason == "certificate name does not match b.example"


def test_match_names_any_presented_name() -> None:
    """Any of several dNSNames may satisfy the check."""
    presented = dns("one.example", "two.example", "*.three.example")
    assert match_names(presented, ["two.example"]) == "two.example"
    assert match_names(presented, ["mx.three.example"]) == "mx.three.example"


def test_match_names_first_wanted_that_matches() -> None:
    """With several wanted names the first one the certificate is valid for is returned."""
    presented = dns(MX_HOST, DOMAIN)
    assert match_names(presented, [DOMAIN, MX_HOST]) == DOMAIN
    assert match_names(presented, ["nope.example", MX_HOST]) == MX_HOST


@pytest.mark.parametrize(
    ("presented", "wanted", "expected"),
    [
        (PresentedNames(ip_addresses=("127.0.0.1",)), "127.0.0.1", "127.0.0.1"),
        (PresentedNames(ip_addresses=("::1",)), "[::1]", "::1"),  # an smtp:[::1] route's host
        (PresentedNames(ip_addresses=("2001:db8::1",)), "2001:DB8:0::1", "2001:db8::1"),
        (PresentedNames(ip_addresses=("127.0.0.1",)), "127.0.0.2", None),
        (PresentedNames(dns_names=("127.0.0.1",)), "127.0.0.1", None),  # an IP in a dNSName is no IP SAN
        (PresentedNames(common_names=("127.0.0.1",)), "127.0.0.1", None),  # nor in the CN
        (PresentedNames(dns_names=("mx.example",), ip_addresses=("192.0.2.1",)), "mx.example", "mx.example"),
    ],
)
def test_match_names_ip_literals(presented: PresentedNames, wanted: str, expected: str | None) -> None:
    """An IP-literal next hop matches only an iPAddress SAN (RFC 6125 1.7.2, via service_identity's IPAddress_ID)."""
    assert match_names(presented, [wanted]) == expected


def test_host_mode_verifies_an_ip_next_hop() -> None:
    """tls_verify = host toward 127.0.0.1 passes with a certificate listing that IP, whatever the domain."""
    verdict = decide(VerifyMode.HOST, ChainResult(), PresentedNames(ip_addresses=("127.0.0.1",)), [DOMAIN, "127.0.0.1"])
    assert verdict.verified and verdict.matched_name == "127.0.0.1"


def test_match_names_nothing_presented() -> None:
    """A certificate with neither dNSName nor CN matches nothing."""
    assert match_names(PresentedNames(), [DOMAIN]) is None


GARBAGE = [
    "",
    ".",
    "..",
    "*",
    "*.",
    "a..example",
    "exa mple.com",
    "-a-.example",
    "example.com\x00.evil",
    "192.0.2.1",
    "[192.0.2.1]",
    "xn--.example",
    "f*o.example",
    "ex@mple.com",
]


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_presented_names_never_match(name: str) -> None:
    """A malformed name in a certificate matches nothing, not even the same string wanted."""
    assert match_names(dns(name), [name]) is None
    assert match_names(dns(name), [DOMAIN]) is None


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_wanted_names_never_match(name: str) -> None:
    """A malformed wanted name matches nothing, while a good wanted name after it still can."""
    assert match_names(dns(DOMAIN, "*.example.com"), [name]) is None
    assert match_names(dns(DOMAIN), [name, DOMAIN]) == DOMAIN


def test_garbage_presented_name_does_not_spoil_good_ones() -> None:
    """A malformed dNSName beside a good one is skipped, not fatal to matching."""
    assert match_names(dns("a..example", "f*.example.com", DOMAIN), [DOMAIN]) == DOMAIN


def test_underscore_host_names_match_exactly() -> None:
    """ASCII names with '_' (not IDNA, but seen on real MX hosts) still match exactly, case-insensitively."""
    assert match_names(dns("mx_1.example.com"), ["MX_1.example.com."]) == "mx_1.example.com"
    assert match_names(dns("*.example.com"), ["mx_1.example.com"]) == "mx_1.example.com"
    assert match_names(dns("mx_1.example.com"), ["mx-1.example.com"]) is None


def test_wanted_wildcard_is_not_a_reference_name() -> None:
    """A wildcard on the wanted side is never a valid reference identity."""
    assert match_names(dns("*.example.com"), ["*.example.com"]) is None


# -- properties -----------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
_HOST = st.lists(_LABEL, min_size=2, max_size=4).map(".".join)


def _vary(name: str, data: st.DataObject) -> str:
    """Randomly upper-case letters of name and maybe add a trailing dot."""
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    varied = "".join(c.upper() if f else c for c, f in zip(name, flips))
    return varied + ("." if data.draw(st.booleans()) else "")


@settings(max_examples=75, deadline=None)
@given(host=_HOST, data=st.data())
def test_property_case_and_dot_invariance(host: str, data: st.DataObject) -> None:
    """For any host name, any casing and trailing dot on either side still matches, reported normalised."""
    presented = _vary(host, data)
    wanted = _vary(host, data)
    assert match_names(dns(presented), [wanted]) == host


@settings(max_examples=75, deadline=None)
@given(labels=st.lists(_LABEL, min_size=3, max_size=5))
def test_property_wildcard_covers_exactly_one_label(labels: list[str]) -> None:
    """*.P matches L.P for one label L, and never P itself or a name with extra labels."""
    parent = ".".join(labels[1:])
    pattern = dns(f"*.{parent}")
    assert match_names(pattern, [f"{labels[0]}.{parent}"]) == f"{labels[0]}.{parent}"
    assert match_names(pattern, [parent]) is None
    assert match_names(pattern, [f"x.{labels[0]}.{parent}"]) is None


@settings(max_examples=50, deadline=None)
@given(
    chain_case=st.sampled_from(sorted(CHAINS)),
    names_case=st.sampled_from(sorted(NAMES)),
)
def test_property_optional_is_host_without_fatality(chain_case: str, names_case: str) -> None:
    """optional reaches the same conclusion as host, except that a failure is soft and never fatal."""
    chain, _ = CHAINS[chain_case]
    presented, _ = NAMES[names_case]
    host = decide(VerifyMode.HOST, chain, presented, WANTED)
    optional = decide(VerifyMode.OPTIONAL, chain, presented, WANTED)
    assert optional.reason == host.reason
    assert not optional.fatal
    expected = Outcome.SOFTFAIL if host.outcome is Outcome.FAILED else host.outcome
    assert optional.outcome is expected
    assert attrs.evolve(optional, outcome=host.outcome) == host
