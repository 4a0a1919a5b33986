"""Pure TLS decisions: no I/O, no reactor, no OpenSSL objects.

Given the ``tls_verify`` mode, what chain verification found, the names a
certificate presents and the names wanted, :func:`decide` returns a
:class:`Verdict`.  Everything the verify callbacks in :mod:`tlsmta.tls._contexts`
conclude is concluded here, so it is tested exhaustively without sockets.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

import attrs
from service_identity.hazmat import (
    DNS_ID,
    DNSPattern,
    IPAddress_ID,
    IPAddressPattern,
    VerificationError,
    verify_service_identity,
)

from tlsmta.config import OutboundTLS
from tlsmta.smtp import DomainNameError, Reply, normalize_domain
from tlsmta.tls import _rpt_types as rpt_types


class VerifyMode(enum.Enum):
    """The four ``tls_verify`` words."""

    NO = "no"
    CA = "ca"
    HOST = "host"
    OPTIONAL = "optional"

    @property
    def checks_chain(self) -> bool:
        return self is not VerifyMode.NO

    @property
    def checks_names(self) -> bool:
        return self in (VerifyMode.HOST, VerifyMode.OPTIONAL)

    @property
    def enforcing(self) -> bool:
        """A failed check fails the delivery (or the client, inbound)."""
        return self in (VerifyMode.CA, VerifyMode.HOST)


class Outcome(enum.Enum):
    """What verification concluded."""

    VERIFIED = "verified"
    UNCHECKED = "unchecked"  # tls_verify = no: nothing was asked of the certificate
    SOFTFAIL = "softfail"
    FAILED = "failed"

    @property
    def word(self) -> str:
        """The log's ``verified`` field: yes, no or softfail."""
        return {"verified": "yes", "softfail": "softfail"}.get(self.value, "no")


TLS_ENHANCED_CODE = "4.7.5"
STARTTLS_MISSING_CODE = "4.7.6"


@attrs.frozen
class Verdict:
    """The result of certificate verification for one TLS session."""

    outcome: Outcome
    reason: str = ""
    matched_name: str | None = None

    @property
    def fatal(self) -> bool:
        return self.outcome is Outcome.FAILED

    @property
    def verified(self) -> bool:
        return self.outcome is Outcome.VERIFIED

    @property
    def enhanced_code(self) -> str | None:
        return TLS_ENHANCED_CODE if self.outcome in (Outcome.FAILED, Outcome.SOFTFAIL) else None

    @property
    def status_text(self) -> str:
        """``4.7.5 <reason>`` for failures, as the log and DSNs carry it."""
        return f"{self.enhanced_code} {self.reason}" if self.enhanced_code else self.reason


@attrs.frozen
class ChainError:
    """One X.509 verification error reported by OpenSSL at a chain depth."""

    depth: int
    errno: int
    text: str


# X509_V_ERR_* codes that mean "no path to a trust anchor", as opposed to a
# certificate that is trusted but unusable (expired, revoked, wrong purpose).
UNTRUSTED_ERRNOS = frozenset({2, 18, 19, 20, 21, 27, 28, 29, 30, 31})


@attrs.frozen
class ChainResult:
    """What the verify callback saw, depth by depth.

    ``hook_answers`` holds the verify hook's answer at each depth where it was
    called; an answer replaces the built-in result at that depth (the hook's
    answer decides).  ``hook_error`` is set when the hook raised.

    ``hook_saw_names``: the hook's ``ok`` at depth 0 included the name check
    (outbound, where the wanted names are known during the handshake).  When
    it did not (inbound: the EHLO name arrives later), an accepting answer at
    depth 0 covers only what the hook was shown, the chain, and the name
    check still applies; a pass-through hook must not turn ``host`` into ``ca``.
    """

    errors: tuple[ChainError, ...] = ()
    hook_answers: Mapping[int, bool] = attrs.field(factory=dict)
    hook_error: str | None = None
    hook_saw_names: bool = True


@attrs.frozen
class PresentedNames:
    """Names a certificate offers: subjectAltName dNSNames and iPAddresses, and subject CNs."""

    dns_names: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @property
    def for_matching(self) -> tuple[str, ...]:
        """RFC 6125: the CN counts only when there is no dNSName."""
        return self.dns_names if self.dns_names else self.common_names


def ip_literal(name: str) -> str | None:
    """``name`` as a canonical IP address when it is one (``[::1]`` too), else None."""
    try:
        return str(ipaddress.ip_address(name.removeprefix("[").removesuffix("]")))
    except ValueError:
        return None


def _match_ip(presented: PresentedNames, ip: str) -> bool:
    """RFC 6125 / RFC 5280: an IP reference identity matches only an iPAddress SAN, never a dNSName or CN."""
    patterns = [IPAddressPattern(pattern=ipaddress.ip_address(a)) for a in presented.ip_addresses]
    if not patterns:
        return False
    try:
        verify_service_identity(patterns, obligatory_ids=[IPAddress_ID(ip)], optional_ids=[])
    except VerificationError:
        return False
    return True


def _dns_patterns(presented: PresentedNames) -> list[DNSPattern]:
    patterns = []
    for raw in presented.for_matching:
        try:
            name = normalize_domain(raw, host=True, wildcard=True)
            patterns.append(DNSPattern.from_bytes(name.encode("ascii")))
        except Exception:  # no host name, or a pattern service_identity refuses: it matches nothing
            continue
    return patterns


def _match_dns(patterns: list[DNSPattern], want: str) -> str | None:
    try:
        norm = normalize_domain(want, host=True)  # a reference name, never a pattern
    except DomainNameError:
        return None
    try:
        verify_service_identity(patterns, obligatory_ids=[DNS_ID(norm)], optional_ids=[])
    except (VerificationError, ValueError):
        return None
    return norm


def match_names(presented: PresentedNames, wanted: Iterable[str]) -> str | None:
    """The first wanted name the certificate is valid for, or None.

    Matching follows RFC 6125 through service_identity: one leading
    wildcard label, no partial-label wildcards, IDNA A-labels,
    case-insensitive, trailing dots ignored.  A wanted IP address (the
    next hop of an ``smtp:127.0.0.1`` route) matches the certificate's IP
    address SANs only.
    """
    patterns = _dns_patterns(presented)
    for want in wanted:
        ip = ip_literal(want)
        if ip is not None:
            if _match_ip(presented, ip):
                return ip
        elif patterns and (matched := _match_dns(patterns, want)) is not None:
            return matched
    return None


def describe_wanted(wanted: Sequence[str]) -> str:
    return " or ".join(wanted) if wanted else "(no name wanted)"


def chain_failure(chain: ChainResult) -> str | None:
    """The reason the chain is not acceptable, or None."""
    if chain.hook_error is not None:
        return f"verify hook failed: {chain.hook_error}"
    # Depth 0 is judged in decide(), together with the names.
    rejected_by_hook = sorted(d for d, ok in chain.hook_answers.items() if not ok and d != 0)
    for error in chain.errors:
        if chain.hook_answers.get(error.depth) is True:
            continue  # the hook accepted this depth despite the error
        detail = f"{error.text} (depth {error.depth})"
        if error.errno in UNTRUSTED_ERRNOS:
            return f"certificate not signed by a trusted CA: {detail}"
        return f"certificate verification failed: {detail}"
    if rejected_by_hook:
        return f"certificate rejected by verify hook (depth {rejected_by_hook[0]})"
    return None


def decide(
    mode: VerifyMode,
    chain: ChainResult,
    presented: PresentedNames | None,
    wanted: Sequence[str],
) -> Verdict:
    """The verification verdict for one TLS session.

    ``presented`` is None when the peer sent no certificate.  ``wanted`` are
    the names that satisfy a ``host`` check (recipient domain and MX host
    outbound; EHLO name and reverse DNS name inbound).
    """
    if mode is VerifyMode.NO:
        return Verdict(Outcome.UNCHECKED)

    def fail(reason: str) -> Verdict:
        return Verdict(Outcome.SOFTFAIL if mode is VerifyMode.OPTIONAL else Outcome.FAILED, reason)

    reason = chain_failure(chain)
    if reason is not None:
        return fail(reason)
    if presented is None:
        return fail("no certificate presented")
    leaf_hook = chain.hook_answers.get(0)
    if not mode.checks_names:
        if leaf_hook is False:
            return fail("certificate rejected by verify hook (depth 0)")
        return Verdict(Outcome.VERIFIED)
    matched = match_names(presented, wanted)
    if leaf_hook is False:
        return fail("certificate rejected by verify hook (depth 0)")
    if leaf_hook is True and chain.hook_saw_names:
        # At depth 0 the hook saw the name check's result and its answer decides.
        return Verdict(Outcome.VERIFIED, matched_name=matched)
    # No hook, or one that was not shown the name check: the names decide.
    if matched is None:
        return fail(f"certificate name does not match {describe_wanted(wanted)}")
    return Verdict(Outcome.VERIFIED, matched_name=matched)


def depth_ok(mode: VerifyMode, chain_ok: bool, depth: int, presented: PresentedNames | None, wanted: Sequence[str]) -> bool:
    """The built-in answer at one depth, as the verify hook is shown it.

    At depth 0 under ``host``/``optional`` it includes the name check.
    """
    if not chain_ok:
        return False
    if depth == 0 and mode.checks_names:
        return presented is not None and match_names(presented, wanted) is not None
    return True


# -- outbound STARTTLS decisions -------------------------------------------------------


class TLSAction(enum.Enum):
    """What an outbound session does about TLS next."""

    STARTTLS = "starttls"
    PLAIN = "plain"  # carry on (or reconnect) without TLS


@attrs.frozen
class TLSFailure:
    """A TLS outcome that defers the delivery (transient, 4.7.x)."""

    status: str
    reason: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    @property
    def reply(self) -> Reply:
        """The deferral (451), or 550 for a permanent (5.x.x) status."""
        return Reply.of(550 if self.status.startswith("5") else 451, self.status, self.reason)


# The tls arguments are compared with ==, so that the words themselves ("no", ...) work too.
def starttls_decision(tls: OutboundTLS, advertised: bool) -> TLSAction | TLSFailure:
    """After EHLO: ``tls`` is no, ifavailable or required."""
    if tls == OutboundTLS.NO:
        return TLSAction.PLAIN
    if advertised:
        return TLSAction.STARTTLS
    if tls == OutboundTLS.REQUIRED:
        return TLSFailure(STARTTLS_MISSING_CODE, "STARTTLS required but not advertised")
    return TLSAction.PLAIN


# The one refusal of STARTTLS that may be followed by plain text (DESIGN.md, Outbound): 454
# "TLS not available due to temporary reason" says the server's TLS is broken for now.  Any
# other answer (502, 530, 354, 250, 221, ...) is a server that advertised STARTTLS and then
# did something else: continuing in clear text there is the STRIPTLS downgrade.
FALLBACK_REFUSAL_CODE = 454


def starttls_refused(tls: OutboundTLS, fallback: bool, reply: Reply) -> TLSAction | TLSFailure:
    """The server answered STARTTLS with something other than 220."""
    if tls == OutboundTLS.IFAVAILABLE and fallback and reply.code == FALLBACK_REFUSAL_CODE:
        return TLSAction.PLAIN
    return TLSFailure(TLS_ENHANCED_CODE, f"TLS negotiation failed: STARTTLS refused: {reply}")


def handshake_failed(
    tls: OutboundTLS, fallback: bool, verdict: Verdict | None, reason: str, completed: bool = False
) -> TLSAction | TLSFailure:
    """The TLS session did not get as far as the EHLO answer inside it.

    ``verdict`` is the certificate verdict when our verification aborted
    the handshake: that is never retried in plain text (anyone able to
    present a bad certificate could otherwise force clear text).
    ``completed``: the handshake itself finished (the connection broke
    afterwards, at the EHLO inside TLS); the server can do TLS, so plain
    text is never the answer either.
    """
    if verdict is not None and verdict.fatal:
        return TLSFailure(TLS_ENHANCED_CODE, verdict.reason)
    if completed:
        return TLSFailure(TLS_ENHANCED_CODE, f"TLS session failed after the handshake: {reason}")
    if tls == OutboundTLS.IFAVAILABLE and fallback:
        return TLSAction.PLAIN
    return TLSFailure(TLS_ENHANCED_CODE, f"TLS negotiation failed: {reason}")


# Why a session that wanted TLS went on in plain text: the delivery line's ``tls_fallback``.
FALLBACK_NOT_OFFERED = "not-offered"


def fallback_after_refusal(reply: Reply) -> str:
    return f"starttls-refused:{reply.code}"


def fallback_after_handshake(reason: str) -> str:
    return f"handshake-failed:{reason}"


# -- the strictest applicable policy for one MX ----------------------------------------------
#
# Local options (tls, tls_verify, fallback) are combined with what the recipient
# side publishes (MTA-STS, DANE) and what the message asks for (REQUIRETLS, or
# TLS-Required: No).  Each source can only make the session stricter, except
# TLS-Required: No, which sets the recipient-side policies aside (RFC 8689 5).

POLICY_LOCAL = "local"
POLICY_STS_ENFORCE = "mta-sts-enforce"
POLICY_STS_TESTING = "mta-sts-testing"
POLICY_DANE = "dane"
POLICY_DANE_REQUIRED = "dane-required"
POLICY_PINNED = "pinned"
POLICY_REQUIRETLS = "requiretls"

ENCRYPTION_NEEDED = "5.7.10"  # RFC 8689 4.2.1 / RFC 5248: TLS could not be had for a REQUIRETLS message
REQUIRETLS_NEEDED = "5.7.30"  # RFC 8689 4.2.1: the next hop does not offer REQUIRETLS


class DANEStatus(enum.Enum):
    """What the TLSA lookup for one MX found (RFC 7672 2.2)."""

    NONE = "none"  # not applicable: insecure MX or TLSA RRset, or no TLSA records
    USABLE = "usable"  # secure, with at least one usable DANE-TA/DANE-EE record
    UNUSABLE = "unusable"  # secure TLSA RRset, but no record we can use
    FAILED = "failed"  # the lookup failed (SERVFAIL, bogus, timeout): this MX cannot be used


@attrs.frozen
class STSState:
    """The recipient domain's MTA-STS policy as it applies to one MX."""

    mode: str  # enforce, testing or none
    mx_matches: bool


class Names(enum.Enum):
    """Which reference names a certificate must match."""

    DOMAIN_OR_MX = "domain-or-mx"  # tls_verify = host: the recipient domain or the MX host
    MX = "mx"  # MTA-STS and REQUIRETLS: the MX host name (RFC 8461 4.1, RFC 8689 4.2.1)


@attrs.frozen
class Requirement:
    """What one session to one MX must achieve, and what follows a failure."""

    policy: str  # the strongest policy applied, for the log and TLS-RPT
    tls: OutboundTLS = attrs.field(converter=OutboundTLS)
    verify: VerifyMode
    names: Names = Names.DOMAIN_OR_MX
    dane: bool = False  # the certificate is judged by the TLSA records, not by CA and names
    pins: tuple[str, ...] = ()  # tls_pins (hex SPKI SHA-256): set, they judge the certificate, not CA and names
    fallback: bool = True  # plain text after a failed handshake (only with tls = ifavailable)
    requiretls: bool = False  # MAIL FROM ... REQUIRETLS; the next hop must offer REQUIRETLS
    report_verify: bool = False  # MTA-STS testing: evaluate the enforce checks for reports only
    unusable: TLSFailure | None = None  # this MX must not be used at all, and why
    ignored: tuple[str, ...] = ()  # recipient-side policies set aside by TLS-Required: No

    @property
    def pinned(self) -> bool:
        return bool(self.pins)

    @property
    def permanent(self) -> bool:
        """A REQUIRETLS message bounces rather than waits or leaks (RFC 8689 4.2.1)."""
        return self.requiretls

    def wanted(self, domain: str, mx: str) -> tuple[str, ...]:
        return (mx,) if self.names is Names.MX else (domain, mx)

    def failure(self, status: str, reason: str) -> TLSFailure:
        """A TLS failure under this requirement (REQUIRETLS turns it into 5.7.10)."""
        if self.requiretls:
            return TLSFailure(ENCRYPTION_NEEDED, f"REQUIRETLS: {reason}")
        return TLSFailure(status, reason)


def effective_requirement(
    tls: OutboundTLS,
    verify: VerifyMode,
    fallback: bool,
    *,
    sts: STSState | None = None,
    dane: DANEStatus = DANEStatus.NONE,
    requiretls: bool = False,
    tls_required_no: bool = False,
    mx_secure: bool = False,
    dane_required: bool = False,
    pins: tuple[str, ...] = (),
) -> Requirement:
    """The strictest of the local options and the external policies, for one MX.

    - DANE (usable TLSA records, RFC 7672) wins over everything: STARTTLS
      required, no plain-text fallback, the certificate judged by the TLSA
      records instead of the CA and names (so MTA-STS is not applied, RFC
      8461 2).  A secure TLSA RRset with no usable record still makes TLS
      mandatory (unauthenticated, as Postfix does).  A failed TLSA lookup
      makes the MX unusable.
    - MTA-STS enforce: STARTTLS required, a CA-verified certificate for the
      MX host name, no fallback; an MX outside the policy is unusable.
      Testing: the local options, with the enforce checks evaluated for reports.
    - REQUIRETLS: verified TLS (host check on the MX name, or DANE), the
      next hop must offer REQUIRETLS, the MX must be DNSSEC-secure or
      listed in an MTA-STS policy, and any failure bounces (5.7.x).
    - TLS-Required: No (without REQUIRETLS): MTA-STS and DANE are ignored,
      the local options apply.
    - ``dane_required`` (local ``dane = "required"``, Postfix ``dane-only``):
      an MX without usable TLSA records is not used (4.7.5), never reached
      with PKIX checks or in plain text.  It is the operator's own policy,
      so TLS-Required: No does not set it, or the records it needs, aside.
    - ``pins`` (local ``tls_pins``, Postfix ``fingerprint``): the operator
      named the server's keys, which is more than any published policy can
      say: STARTTLS required, no fallback, the pins judge the certificate
      (no CA, no names), MTA-STS and DANE are not consulted.
    """
    if requiretls:
        tls_required_no = False  # RFC 8689 5: the header is ignored when REQUIRETLS is set
    ignored: tuple[str, ...] = ()
    if tls_required_no:
        ignored = tuple(
            name for name, present in (("mta-sts", sts is not None and sts.mode != "none"),
                                       ("dane", dane is not DANEStatus.NONE and not dane_required)) if present
        )
        sts = None
        dane = dane if dane_required else DANEStatus.NONE
    if sts is not None and sts.mode == "none":
        sts = None

    if pins:
        return Requirement(POLICY_PINNED, OutboundTLS.REQUIRED, VerifyMode.NO, pins=pins, fallback=False,
                           requiretls=requiretls, ignored=ignored)
    if dane is DANEStatus.FAILED:
        req = Requirement(POLICY_DANE, OutboundTLS.REQUIRED, verify, fallback=False, requiretls=requiretls)
        return attrs.evolve(req, unusable=req.failure(TLS_ENHANCED_CODE, "dane: TLSA lookup failed; MX not usable"))
    if dane is DANEStatus.USABLE:
        return Requirement(POLICY_DANE, OutboundTLS.REQUIRED, VerifyMode.NO, dane=True, fallback=False, requiretls=requiretls)
    if dane_required:
        req = Requirement(POLICY_DANE_REQUIRED, OutboundTLS.REQUIRED, verify, fallback=False, requiretls=requiretls)
        why = "no usable TLSA records" if dane is DANEStatus.UNUSABLE else "no DNSSEC-validated TLSA records"
        return attrs.evolve(req, unusable=req.failure(TLS_ENHANCED_CODE, f"dane: DANE required (dane = required) but {why}; MX not used"))

    req = Requirement(POLICY_LOCAL, tls, verify, fallback=fallback, ignored=ignored)
    if dane is DANEStatus.UNUSABLE:
        req = attrs.evolve(req, policy=POLICY_DANE, tls=OutboundTLS.REQUIRED, fallback=False)
    if sts is not None and sts.mode == "enforce":
        req = attrs.evolve(
            req,
            policy=POLICY_STS_ENFORCE if req.policy == POLICY_LOCAL else req.policy,
            tls=OutboundTLS.REQUIRED,
            verify=VerifyMode.HOST,  # optional and ca become an enforcing host check
            names=Names.MX,
            fallback=False,
        )
        if not sts.mx_matches:
            req = attrs.evolve(req, unusable=TLSFailure(TLS_ENHANCED_CODE, "MX host not listed in the MTA-STS policy"))
    elif sts is not None and sts.mode == "testing":
        req = attrs.evolve(req, policy=POLICY_STS_TESTING if req.policy == POLICY_LOCAL else req.policy, report_verify=True)
    if requiretls:
        req = attrs.evolve(
            req,
            policy=POLICY_REQUIRETLS,
            tls=OutboundTLS.REQUIRED,
            verify=VerifyMode.HOST,  # optional and ca become an enforcing host check
            names=Names.MX,
            fallback=False,
            requiretls=True,
            report_verify=False,
        )
        listed = sts is not None and sts.mx_matches
        if req.unusable is not None:
            req = attrs.evolve(req, unusable=req.failure(req.unusable.status, req.unusable.reason))
        elif not (mx_secure or listed):
            req = attrs.evolve(req, unusable=req.failure(ENCRYPTION_NEEDED, "MX host neither DNSSEC-validated nor listed in an MTA-STS policy"))
    return req


def pin_verdict(pins: Iterable[str], spki_sha256: str | None) -> Verdict:
    """``tls_pins`` (hex SHA-256 of SubjectPublicKeyInfos) against the presented key's; ``None``: no certificate."""
    if spki_sha256 is None:
        return Verdict(Outcome.FAILED, "pin: no certificate presented")
    if spki_sha256 in pins:
        return Verdict(Outcome.VERIFIED, f"pin: SPKI sha256:{spki_sha256} matched tls_pins")
    return Verdict(Outcome.FAILED, f"pin: SPKI sha256:{spki_sha256} is not in tls_pins")


def requiretls_refused(req: Requirement, advertised: bool) -> TLSFailure | None:
    """After the EHLO inside TLS: a REQUIRETLS message needs the extension there (RFC 8689 4.2.1 step 4)."""
    if req.requiretls and not advertised:
        return TLSFailure(REQUIRETLS_NEEDED, "REQUIRETLS: the server does not offer REQUIRETLS")
    return None


# -- TLS-RPT result types (RFC 8460 4.3) for what a session saw -------------------------------

RPT_STARTTLS_NOT_SUPPORTED = rpt_types.STARTTLS_NOT_SUPPORTED
RPT_CERT_HOST_MISMATCH = rpt_types.CERTIFICATE_HOST_MISMATCH
RPT_CERT_EXPIRED = rpt_types.CERTIFICATE_EXPIRED
RPT_CERT_NOT_TRUSTED = rpt_types.CERTIFICATE_NOT_TRUSTED
RPT_VALIDATION_FAILURE = rpt_types.VALIDATION_FAILURE
RPT_DNSSEC_INVALID = rpt_types.DNSSEC_INVALID

_EXPIRED_ERRNOS = frozenset({9, 10})  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED


def certificate_result_type(verdict: Verdict, errors: Sequence[ChainError]) -> str:
    """The RFC 8460 failure type of a certificate verdict that did not pass."""
    if verdict.reason.startswith("dane:"):
        return RPT_VALIDATION_FAILURE
    if any(e.errno in _EXPIRED_ERRNOS for e in errors):
        return RPT_CERT_EXPIRED
    if any(e.errno in UNTRUSTED_ERRNOS for e in errors):
        return RPT_CERT_NOT_TRUSTED
    if "name does not match" in verdict.reason:
        return RPT_CERT_HOST_MISMATCH
    return RPT_VALIDATION_FAILURE
