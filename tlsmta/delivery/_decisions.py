"""Delivery's decisions about one MX, as pure functions that ``tlsmta probe`` shares.

The pool takes these steps one at a time while a session runs; the probe
asks :func:`session_outcome`, which takes the same steps over what one
connection showed, so that what ``probe`` predicts is what delivery does:
which addresses of an MX are tried, what a refused greeting defers with,
the effective TLS requirement, the DANE verdict and the outcome under it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from cryptography import x509

from tlsmta.config import DANE_REQUIRED_WORD, OutboundTLS
from tlsmta.discovery import ExternalFacts, verify_chain
from tlsmta.smtp import Reply
from tlsmta.smtp.client_session import GreetingRefused, HelloRefused
from tlsmta.tls import (
    TLS_ENHANCED_CODE,
    DANEStatus,
    Requirement,
    TLSAction,
    TLSFailure,
    Verdict,
    VerifyMode,
    effective_requirement,
    handshake_failed,
    pin_verdict,
    requiretls_refused,
    spki_sha256,
    starttls_decision,
    starttls_refused,
)

MAX_ADDRESSES_PER_HOST = 4


def addresses_to_try(addresses: Sequence[str]) -> list[str]:
    """The addresses of one MX host that are tried, in DNS order."""
    return list(addresses[:MAX_ADDRESSES_PER_HOST])


def greeting_failure(refused: GreetingRefused | HelloRefused, mx: str) -> Reply:
    """A greeting that did not succeed defers (the next MX may do better)."""
    if isinstance(refused, HelloRefused):
        return Reply.of(451, "4.5.0", f"{mx} refused EHLO after STARTTLS" if refused.tls else f"{mx} refused EHLO and HELO")
    status = refused.reply.enhanced or "4.4.0"
    return Reply.of(451, "4" + status[1:], f"{mx} said: {refused.reply}")


def requirement(tls: OutboundTLS, verify: VerifyMode, fallback: bool, facts: ExternalFacts, mx: str, *,
                requiretls: bool = False, tls_required_no: bool = False, dane: bool | str = True,
                pins: Sequence[str] = ()) -> Requirement:
    """The strictest of the local options and what MTA-STS, DANE and the message ask, for ``mx``
    (``dane``: the option's value, true, false or "required"; ``pins``: ``tls_pins``)."""
    return effective_requirement(
        tls, verify, fallback,
        sts=facts.sts_state(mx),
        dane=facts.dane_for(mx).status,
        requiretls=requiretls,
        tls_required_no=tls_required_no,
        mx_secure=facts.mx_secure,
        dane_required=dane == DANE_REQUIRED_WORD,
        pins=tuple(pins),
    )


def dane_verdict(facts: ExternalFacts, mx: str, chain: Sequence[x509.Certificate], now: datetime.datetime) -> Verdict | None:
    """RFC 7672: the presented chain against the MX host's usable TLSA records (None: DANE does not judge)."""
    tlsa = facts.dane_for(mx)
    if tlsa.status is not DANEStatus.USABLE:
        return None
    return verify_chain(tlsa.records, list(chain), (mx,), now)


def pinned_verdict(pins: Sequence[str], chain: Sequence[x509.Certificate]) -> Verdict:
    """``tls_pins`` against the presented leaf's key (Postfix's fingerprint level: no CA, no names)."""
    return pin_verdict(pins, spki_sha256(chain[0]) if chain else None)


def certificate_failure(verdict: Verdict) -> TLSFailure | None:
    """Once TLS is up: a fatal verdict is never sent over (a hook may accept in the callback and fail here)."""
    return TLSFailure(TLS_ENHANCED_CODE, verdict.reason) if verdict.fatal else None


def session_outcome(
    req: Requirement, *, starttls_offered: bool, refused: Reply | None = None, handshake_error: str | None = None,
    verdict: Verdict | None = None, requiretls_offered: bool = False,
) -> TLSAction | TLSFailure:
    """What a session to one MX comes to, given what the server showed: a failure (under ``req``),
    PLAIN (deliver without TLS) or STARTTLS (deliver over TLS).  ``refused`` is a non-220 answer to
    STARTTLS, ``handshake_error`` a handshake that did not complete, ``verdict`` the certificate
    verdict once it did.  Delivery takes these steps one at a time in :mod:`tlsmta.delivery._pool`."""
    if req.unusable is not None:
        return req.unusable
    step = starttls_decision(req.tls, starttls_offered)
    if step is not TLSAction.STARTTLS:
        return _under(req, step)
    if refused is not None:
        return _under(req, starttls_refused(req.tls, req.fallback, refused))
    if handshake_error is not None:
        return _under(req, handshake_failed(req.tls, req.fallback, None, handshake_error))
    assert verdict is not None
    failure = certificate_failure(verdict)
    if failure is not None:
        return req.failure(failure.status, failure.reason)
    return requiretls_refused(req, requiretls_offered) or TLSAction.STARTTLS


def _under(req: Requirement, step: TLSAction | TLSFailure) -> TLSAction | TLSFailure:
    return req.failure(step.status, step.reason) if isinstance(step, TLSFailure) else step


def envelope_refusal(capabilities: Mapping[str, str], size: int, smtputf8: bool, remote: str) -> Reply | None:
    """A message this server said it will not take, refused before MAIL: over its SIZE, or SMTPUTF8 unoffered."""
    limit = capabilities.get("SIZE", "")
    if limit.isascii() and limit.isdigit() and int(limit) and size > int(limit):
        return Reply.of(552, "5.3.4", f"message size {size} exceeds {remote}'s limit {limit}")
    if smtputf8 and "SMTPUTF8" not in capabilities:
        return Reply.of(553, "5.6.7", f"{remote} does not support SMTPUTF8")
    return None


def mail_parameters(capabilities: Mapping[str, str], size: int, body_type: str, smtputf8: bool, requiretls: bool) -> list[str]:
    """The MAIL FROM parameters for one message to this server."""
    params = []
    if "SIZE" in capabilities:
        params.append(f"SIZE={size}")
    if body_type == "8BITMIME" and "8BITMIME" in capabilities:
        params.append("BODY=8BITMIME")
    if smtputf8:
        params.append("SMTPUTF8")
    if requiretls:
        params.append("REQUIRETLS")  # RFC 8689 4.2.1: the next hop carries the requirement on
    return params
