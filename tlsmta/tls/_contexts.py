"""pyOpenSSL plumbing: contexts, per-connection verify callbacks, name facts.

Decisions are not made here; :mod:`tlsmta.tls._policy` makes them.  This module
turns OpenSSL's callback stream into a :class:`policy.ChainResult`, calls the
verify hooks, and fails closed when anything inside a callback raises.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from tlsmta.errors import TlsmtaError
from tlsmta.network import StreamTransport
from tlsmta.smtp import DomainNameError, normalize_domain
from tlsmta.tls import _openssl_private as openssl_private
from tlsmta.tls import _policy as policy
from tlsmta.tls._certificate_facts import certificate_sha256, spki_sha256
from tlsmta.tls._policy import ChainError, ChainResult, PresentedNames, VerifyMode

log = Logger(namespace="tlsmta.tls")


class KeyPairError(TlsmtaError, ValueError):
    """A certificate or key that cannot be used; ``key`` names the config key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def load_keypair(cert_path: str, key_path: str) -> None:
    """Check that a PEM certificate chain and its key load and match."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    try:
        ctx.use_certificate_chain_file(cert_path)
    except (SSL.Error, OSError) as e:
        raise KeyPairError("tls_certificate", f"cannot load certificate {cert_path!r}: {ssl_error_text(e)}") from None
    try:
        with open(key_path, "rb") as f:
            serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise KeyPairError("tls_key", f"cannot read key {key_path!r}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise KeyPairError("tls_key", f"cannot load key {key_path!r}: {e}") from None
    try:
        ctx.use_privatekey_file(key_path)
        ctx.check_privatekey()
    except SSL.Error:
        raise KeyPairError("tls_key", f"key {key_path!r} does not match certificate {cert_path!r}") from None


def ssl_error_text(error: BaseException) -> str:
    """OpenSSL's error queue as one line (for logs and 4.7.5 reasons)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        return ", ".join(str(item[-1]) for item in error.args[0])
    return str(error) or type(error).__name__


def verify_error_text(errno: int) -> str:
    """OpenSSL's text for an X509_V_ERR code."""
    try:
        return openssl_private.verify_error_string(errno)
    except Exception:
        return f"X.509 verify error {errno}"


# -- contexts ------------------------------------------------------------------

_VERSION_CONSTANTS = {
    "TLSv1.0": (SSL.TLS1_VERSION, SSL.OP_NO_TLSv1),
    "TLSv1.1": (SSL.TLS1_1_VERSION, SSL.OP_NO_TLSv1_1),
    "TLSv1.2": (SSL.TLS1_2_VERSION, SSL.OP_NO_TLSv1_2),
    "TLSv1.3": (SSL.TLS1_3_VERSION, SSL.OP_NO_TLSv1_3),
}
_VERSION_ORDER = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def apply_protocols(ctx: SSL.Context, allowed: frozenset[str]) -> None:
    """Restrict ``ctx`` to exactly the ``allowed`` TLS versions."""
    present = [v for v in _VERSION_ORDER if v in allowed]
    ctx.set_min_proto_version(_VERSION_CONSTANTS[present[0]][0])
    ctx.set_max_proto_version(_VERSION_CONSTANTS[present[-1]][0])
    # The security level is never lowered here: OpenSSL's default level keeps
    # TLS 1.0/1.1, anonymous suites and weak keys out even when the version
    # range allows them.  An operator who really needs them lowers it through
    # tls_ciphers (e.g. "DEFAULT:@SECLEVEL=0"), knowingly.
    for version in _VERSION_ORDER:
        if present[0] < version < present[-1] and version not in allowed:
            ctx.set_options(_VERSION_CONSTANTS[version][1])


# The built-in defaults in both directions are Mozilla's "intermediate" profile
# (https://ssl-config.mozilla.org/, 5.7): for TLS 1.2 only ECDHE with AEAD ciphers
# (OpenSSL's own default adds CBC suites, which the profile rejects), and the
# groups X25519, P-256 and P-384 (OpenSSL's default adds X448 and P-521), with the
# hybrid post-quantum X25519MLKEM768 first where the linked OpenSSL has it
# (3.5 and later).  OpenSSL's TLS 1.3 suites are the profile's already.
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
PREFERRED_GROUPS = ("X25519MLKEM768", "X25519", "secp256r1", "secp384r1")


# SSL_get0_group_name gives some groups in lower case (x25519); logs use the names configured.
_GROUP_SPELLING = {name.lower(): name for name in (*PREFERRED_GROUPS, "X448")}


def group_name(name: str | None) -> str | None:
    """A negotiated group's name as ``tls_groups`` spells it."""
    return _GROUP_SPELLING.get(name.lower(), name) if name else None


def openssl_version() -> str:
    """The OpenSSL that pyOpenSSL runs on (cryptography's, not the system's ``openssl``)."""
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")


def unsupported_groups(groups: Sequence[str]) -> tuple[str, ...]:
    """The names in ``groups`` this OpenSSL does not offer as key-exchange groups."""
    scratch = SSL.Context(SSL.TLS_METHOD)
    return tuple(name for name in groups if not openssl_private.set_groups(scratch, name))


@functools.cache
def default_groups() -> tuple[str, ...]:
    """:data:`PREFERRED_GROUPS` less those this OpenSSL lacks."""
    missing = unsupported_groups(PREFERRED_GROUPS)
    return tuple(name for name in PREFERRED_GROUPS if name not in missing)


@functools.cache
def default_group_list() -> str:
    """:func:`default_groups` as OpenSSL's list, with key shares for the hybrid and for X25519.

    A client sends a key share for the first group only, unless ``*`` marks
    others (OpenSSL 3.5, which is also what has the hybrid): a server without
    ML-KEM, most of them still, would otherwise answer with a HelloRetryRequest,
    a round trip more on every session.  Browsers send both shares too.
    """
    names = default_groups()
    if names[0] != "X25519MLKEM768":
        return ":".join(names)
    return ":".join([f"*{names[0]}", f"*{names[1]}", *names[2:]])


def predicted_key_share(groups: Sequence[str], chosen: str) -> str | None:
    """``groups`` as OpenSSL's list with one key share, for ``chosen``: the group this server chose last time.

    A ClientHello with :func:`default_group_list`'s two key shares costs 130 us of
    key generation and 1.2 KB more than one with an X25519 share alone (60 us);
    a server takes one of them and the other was wasted (bench/profile-issue13.md,
    eleventh round).  The groups offered, and their order, stay as they are: a
    server that now prefers another of them asks for it (a HelloRetryRequest) and
    the handshake settles on what it would have anyway.  None when ``chosen`` is not
    among ``groups`` (tls_groups changed since): the list as configured then.
    """
    names = [name.lstrip("*") for name in groups]
    if chosen not in names:
        return None
    return ":".join(f"*{name}" if name == chosen else name for name in names)


def apply_groups(ctx: SSL.Context, groups: Sequence[str] | None) -> None:
    """Offer exactly ``groups`` for key exchange, most preferred first (None: :func:`default_group_list`)."""
    text = default_group_list() if groups is None else ":".join(groups)
    if not openssl_private.set_groups(ctx, text):
        raise ValueError(f"OpenSSL ({openssl_version()}) refuses the groups {text!r}")


def _base_context(
    method: int, protocols: frozenset[str], ciphers: str | None, tls13: str | None, groups: Sequence[str] | None
) -> SSL.Context:
    ctx = SSL.Context(method)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    apply_protocols(ctx, protocols)
    ctx.set_cipher_list((ciphers or INTERMEDIATE_CIPHERS).encode("ascii"))
    if tls13:
        ctx.set_tls13_ciphersuites(tls13.encode("ascii"))
    apply_groups(ctx, groups)
    return ctx


def load_trust(ctx: SSL.Context, ca: str | None) -> None:
    """Trust anchors from a PEM file or a hashed directory; None: system store."""
    if ca is None:
        ctx.set_default_verify_paths()
    elif os.path.isdir(ca):
        ctx.load_verify_locations(None, ca)
    else:
        ctx.load_verify_locations(ca)


def use_chains(ctx: SSL.Context, chains: Sequence[tuple[str, str]]) -> None:
    """Load each (certificate chain, key) file pair into ``ctx``.  OpenSSL keeps one certificate
    per key type (RSA, ECDSA, ...), each with its own intermediates, and the handshake serves
    the one the client's signature algorithms allow (see :mod:`tlsmta.tls._certificates`)."""
    for cert, key in chains:
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()  # the key just loaded against the certificate of its own type


def server_context(
    cert_path: str,
    key_path: str,
    protocols: frozenset[str],
    ciphers: str | None = None,
    tls13: str | None = None,
    client_ca: str | None = None,
    session_id: bytes = b"tlsmta",
    resumption: bool = True,
    more_chains: Sequence[tuple[str, str]] = (),
    groups: Sequence[str] | None = None,
) -> SSL.Context:
    """An SSL.Context for a listener (STARTTLS or implicit TLS).

    ``more_chains``: (certificate, key) files of other key types served beside the first.

    ``resumption=False`` for listeners that check client certificates: a
    resumed session shows no certificate, so the check would fail (530) for
    every client that caches sessions.
    """
    ctx = _base_context(SSL.TLS_SERVER_METHOD, protocols, ciphers, tls13, groups)
    # Our order, not the client's: with tls_ciphers widened for old peers, the strongest
    # shared suite still wins (testssl.sh rates a server without an order HIGH).
    ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    use_chains(ctx, [(cert_path, key_path), *more_chains])
    ctx.set_session_id(session_id[:32])
    if not resumption:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # Without the server-side cache, TLS 1.3's stateful tickets (OP_NO_TICKET) cannot resume either.
        ctx.set_options(SSL.OP_NO_TICKET)
    if client_ca is not None:
        load_trust(ctx, client_ca)
        if os.path.isfile(client_ca):
            ctx.load_client_ca(client_ca.encode())  # the CA names sent in CertificateRequest
    return ctx


def client_context(
    protocols: frozenset[str],
    ciphers: str | None = None,
    tls13: str | None = None,
    ca: str | None = None,
    cert_path: str | Sequence[str] | None = None,
    key_path: str | Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> SSL.Context:
    """An SSL.Context for outbound STARTTLS with the resolved options.

    ``cert_path``/``key_path``: the client certificate, or one per key type (paired in order):
    OpenSSL presents the one the server's CertificateRequest signature algorithms allow."""
    # Anonymous and null suites have no certificate to verify: never offer them.
    ciphers = f"{ciphers}:!aNULL:!eNULL" if ciphers else None
    ctx = _base_context(SSL.TLS_CLIENT_METHOD, protocols, ciphers, tls13, groups)
    load_trust(ctx, ca)
    if cert_path and key_path:
        certs = [cert_path] if isinstance(cert_path, str) else cert_path
        keys = [key_path] if isinstance(key_path, str) else key_path
        use_chains(ctx, list(zip(certs, keys, strict=True)))
    return ctx


# -- certificate facts ---------------------------------------------------------


def presented_names(cert: x509.Certificate) -> PresentedNames:
    """The dNSNames, iPAddresses and subject CNs of a certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        addresses = san.get_values_for_type(x509.IPAddress)
        ips = tuple(str(ip) for ip in addresses if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)))
    except x509.ExtensionNotFound:
        dns_names, ips = (), ()
    cns = tuple(
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    return PresentedNames(dns_names=dns_names, common_names=cns, ip_addresses=ips)


def describe_sans(names: PresentedNames) -> str:
    """``mx.example, IP:192.0.2.1``: the subjectAltNames a certificate lists."""
    return ", ".join((*names.dns_names, *(f"IP:{ip}" for ip in names.ip_addresses)))


# A relay sees the same few certificates over and over (every connection to one MX,
# its own served chain on every inbound session): their texts and hashes are worked
# out once. cryptography's Certificate hashes and compares by its DER encoding, so
# the objects of two handshakes with one certificate are one key.
@functools.lru_cache(maxsize=512)
def certificate_log_fields(cert: x509.Certificate) -> Mapping[str, Any]:
    """What a presented certificate was: subject, SANs, issuer and fingerprints, for the log."""
    return types.MappingProxyType({
        "subject": describe_name(cert.subject),
        "issuer": describe_name(cert.issuer),
        "sans": describe_sans(presented_names(cert)) or None,
        "spki_sha256": spki_sha256(cert),
        "cert_sha256": certificate_sha256(cert),
    })


@functools.lru_cache(maxsize=64)
def _served_description(cert: x509.Certificate) -> str:
    return f"{describe_name(cert.subject)} ({key_type(cert)})"


def key_type(certificate: x509.Certificate) -> str:
    """The public key's algorithm as logs and problems name it: rsa, ecdsa, ed25519, ed448, dsa."""
    key = certificate.public_key()
    for kind, name in ((rsa.RSAPublicKey, "rsa"), (ec.EllipticCurvePublicKey, "ecdsa"),
                       (ed25519.Ed25519PublicKey, "ed25519"), (ed448.Ed448PublicKey, "ed448"), (dsa.DSAPublicKey, "dsa")):
        if isinstance(key, kind):
            return name
    return type(key).__name__


def served_certificate(conn: SSL.Connection) -> str | None:
    """``CN=mx.example (ecdsa)``: the certificate this end presented (chosen by SNI and key type inbound)."""
    cert = conn.get_certificate(as_cryptography=True)
    return _served_description(cert) if cert is not None else None


def describe_name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except Exception:  # exotic attribute encodings: still log something useful
        return repr(name)


@attrs.frozen
class SessionFacts:
    """What a TLS session turned out to be, for logs and Received: headers."""

    protocol: str
    cipher: str
    peer_subject: str | None = None
    peer_issuer: str | None = None
    resumed: bool = False
    server_name: str | None = None  # SNI: what the client sent (inbound) or we sent (outbound)
    certificate: str | None = None  # the one we presented (chosen by SNI and key type inbound), "CN=... (ecdsa)"
    peer_certificate: x509.Certificate | None = attrs.field(default=None, eq=False, repr=False)
    group: str | None = None  # the key-exchange group (X25519MLKEM768, X25519, ...)

    @classmethod
    def from_connection(cls, conn: SSL.Connection) -> SessionFacts:
        cert = conn.get_peer_certificate(as_cryptography=True)
        subject = issuer = None
        if cert is not None:
            described = certificate_log_fields(cert)
            subject, issuer = described["subject"], described["issuer"]
        return cls(
            protocol=conn.get_protocol_version_name() or "unknown",
            cipher=conn.get_cipher_name() or "unknown",
            peer_subject=subject,
            peer_issuer=issuer,
            resumed=openssl_private.session_reused(conn),
            server_name=server_name(conn),
            certificate=served_certificate(conn),
            peer_certificate=cert,
            group=group_name(openssl_private.negotiated_group(conn)),
        )


def server_name(conn: SSL.Connection) -> str | None:
    """The SNI host name of the connection (None when none was sent)."""
    name = conn.get_servername()
    return name.decode("ascii", "replace") if name else None


def tls_connection(transport: StreamTransport) -> SSL.Connection:
    """The OpenSSL connection of a transport whose TLS handshake has begun."""
    handle = transport.getHandle()
    if not isinstance(handle, SSL.Connection):
        raise TypeError(f"no TLS on this transport (its handle is {type(handle).__name__})")
    return handle


def tls_log_fields(facts: SessionFacts | None, tls_verify: str, verified: str, reason: str,
                   certificate: x509.Certificate | None = None) -> dict[str, Any]:
    """The TLS facts every ``received`` and ``delivery`` event carries (None where no TLS ran).

    ``certificate``: the one the peer presented, when the handshake did not
    complete (verification aborted it) and ``facts`` cannot say.
    """
    if certificate is None and facts is not None:
        certificate = facts.peer_certificate
    return {
        "tls": "tls" if facts else "none",
        "protocol": facts.protocol if facts else None,
        "cipher": facts.cipher if facts else None,
        "group": facts.group if facts else None,
        "sni": facts.server_name if facts else None,
        "tls_verify": tls_verify,
        "verified": verified,
        "reason": reason,
        "subject": None,
        "issuer": None,
        "sans": None,
        "spki_sha256": None,
        "cert_sha256": None,
        **(certificate_log_fields(certificate) if certificate is not None else {}),
        "certificate": facts.certificate if facts else None,
    }


# -- verification of one session -----------------------------------------------

VerifyHook = Callable[..., Any]


@attrs.frozen
class HookContext:
    """What a verify hook is told about the session (the ``ctx`` argument)."""

    direction: str  # "inbound" or "outbound"
    domain: str | None = None
    mx_host: str | None = None
    binding: str | None = None
    message_id: str | None = None
    peer: str | None = None
    listener: str | None = None


class CertificateCheck:
    """Verification state of one TLS session, fed by OpenSSL's callback.

    ``enforce_in_handshake``: return 0 to OpenSSL when the verdict is fatal
    (outbound ``ca``/``host``).  Inbound keeps the handshake going and
    answers 530 at MAIL instead, which a client can report sensibly.

    ``wanted`` names are known before the handshake outbound (domain, MX);
    inbound they arrive later (EHLO name), so :meth:`verdict` takes them.
    """

    def __init__(
        self,
        mode: VerifyMode,
        wanted: Sequence[str] = (),
        hook: VerifyHook | None = None,
        hook_context: HookContext | None = None,
        enforce_in_handshake: bool = False,
        names_in_handshake: bool = True,
        record: bool = False,
    ):
        self.mode = mode
        # record: ask for the certificate and note every chain error even under
        # tls_verify = no, without failing anything (DANE judges the chain after
        # the handshake; MTA-STS testing evaluates the enforce checks for reports).
        self.record = record
        self.wanted = tuple(wanted)
        self.hook = hook
        self.hook_context = hook_context
        self.enforce_in_handshake = enforce_in_handshake
        self.names_in_handshake = names_in_handshake
        self.errors: list[ChainError] = []
        self.hook_answers: dict[int, bool] = {}
        self.hook_error: str | None = None
        self.leaf: x509.Certificate | None = None
        # The chain as the peer sent it, seen at the first callback: the leaf's facts are
        # logged even when verification aborts the handshake before depth 0.  (A client's
        # peer chain starts with the leaf; a server's leaves it out, and inbound never aborts.)
        self.peer_chain: list[x509.Certificate] = []
        self.internal_error: str | None = None
        self.seen_certificate = False  # the callback ran: a certificate was received
        # A resumed session shows no certificate; it carries the verdict of the
        # full handshake it came from (cached under the same policy and names).
        self.resumed_verdict: policy.Verdict | None = None
        # A verdict reached after the handshake by other means (DANE's TLSA match),
        # replacing the CA and name checks.
        self.external_verdict: policy.Verdict | None = None

    @property
    def wants_certificate(self) -> bool:
        """Whether to ask the peer for a certificate / check the one it sends."""
        return self.mode.checks_chain or self.hook is not None or self.record

    def install(self, conn: SSL.Connection) -> None:
        """Set this session's verify callback on ``conn``."""
        if self.wants_certificate:
            openssl_private.set_verify_with_reason(conn, SSL.VERIFY_PEER, self.callback, self.refusal_reason)
        else:
            conn.set_verify(SSL.VERIFY_NONE)

    def callback(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        """pyOpenSSL's verify callback; never raises (an exception fails closed)."""
        self.seen_certificate = True
        try:
            return self._callback(conn, cert, errno, depth, bool(ok))
        except Exception as e:
            self.internal_error = f"{type(e).__name__}: {e}"
            log.failure("verify callback failed; treating the certificate as bad")
            return False

    def _callback(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: bool) -> bool:
        if not self.peer_chain:
            self.peer_chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        if not ok:
            self.errors.append(ChainError(depth, errno, verify_error_text(errno)))
        presented = None
        if depth == 0:
            self.leaf = cert.to_cryptography()
            presented = presented_names(self.leaf)
        if self.hook is not None:
            shown = ok
            if self.names_in_handshake:
                shown = policy.depth_ok(self.mode, ok, depth, presented, self.wanted)
            self._call_hook(conn, cert, errno, depth, shown)
        if not self.enforce_in_handshake or not self.mode.enforcing:
            return True
        if depth > 0:
            return policy.chain_failure(self._chain_result()) is None
        return not self.verdict().fatal

    def refusal_reason(self) -> int:
        """The X509_V_ERR code for a certificate this check refused though OpenSSL's chain check passed.

        OpenSSL sends the alert of the verify error left in the store; with none
        left it would send internal_error(80).  A hook's refusal is "certificate
        rejected", a name check's "hostname mismatch" (both bad_certificate(42));
        a chain error keeps its own code (unknown_ca(48), certificate_expired(45)).
        An exception inside the callback stays internal_error: that one is ours.
        """
        if self.internal_error is not None:
            return 0
        if self.hook_error is not None or not all(self.hook_answers.values()):
            return openssl_private.CERT_REJECTED
        return openssl_private.HOSTNAME_MISMATCH

    def _call_hook(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: bool) -> None:
        assert self.hook is not None
        try:
            answer = bool(self.hook(conn, cert, errno, depth, ok, self.hook_context))
        except Exception as e:
            self.hook_error = f"{type(e).__name__}: {e}"
            log.failure("TLS verify hook raised; counting it as a verification failure")
            return
        self.hook_answers[depth] = self.hook_answers.get(depth, True) and answer

    def _chain_result(self) -> ChainResult:
        hook_error = self.hook_error or self.internal_error
        return ChainResult(tuple(self.errors), dict(self.hook_answers), hook_error, hook_saw_names=self.names_in_handshake)

    def chain_result(self) -> ChainResult:
        """What the callback recorded, for verdicts under another mode (reports)."""
        return self._chain_result()

    @property
    def presented_certificate(self) -> x509.Certificate | None:
        """The peer's certificate as far as the callback saw it (for the log)."""
        return self.leaf or (self.peer_chain[0] if self.peer_chain else None)

    @property
    def presented(self) -> PresentedNames | None:
        return presented_names(self.leaf) if self.leaf is not None else None

    def verdict(self, wanted: Sequence[str] | None = None) -> policy.Verdict:
        """The policy verdict with what has been seen so far."""
        if self.resumed_verdict is not None:
            return self.resumed_verdict
        if self.external_verdict is not None:
            return self.external_verdict
        names = self.wanted if wanted is None else tuple(wanted)
        return policy.decide(self.mode, self._chain_result(), self.presented, names)


@implementer(IOpenSSLServerConnectionCreator)
@attrs.define
class ServerTLS:
    """Creates server-side SSL connections for one listener.

    The context is replaced on reload; connections already made keep theirs.
    The protocol wrapped by TLS provides ``certificate_check``, its session's
    :class:`CertificateCheck`.
    """

    context: SSL.Context
    check: CertificateCheck | None = None

    def bound_to(self, check: CertificateCheck | None) -> ServerTLS:
        """A creator for one STARTTLS session, verifying with its ``check``."""
        return ServerTLS(self.context, check)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(tlsProtocol)
        check = self.check
        if check is None:  # implicit TLS: the session is the wrapped protocol
            check = getattr(tlsProtocol.wrappedProtocol, "certificate_check", None)
        if check is not None:
            check.install(conn)
        return conn


@implementer(IOpenSSLClientConnectionCreator)
@attrs.define
class ClientTLS:
    """Creates the client-side SSL connection of one outbound session."""

    context: SSL.Context
    server_name: str | None
    check: CertificateCheck
    session: SSL.Session | None = None  # offered for resumption
    # The context's groups (None: default_groups()) and the one to send a key share for.
    groups: Sequence[str] | None = None
    key_share: str | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(tlsProtocol)
        if self.session is not None:
            conn.set_session(self.session)
        # RFC 6066 3: SNI carries host names only, never an IP literal (an smtp:127.0.0.1 route).
        if self.server_name and policy.ip_literal(self.server_name) is None:
            try:
                sni = normalize_domain(self.server_name, host=True)
            except DomainNameError:  # no host name: nothing to ask for
                pass
            else:
                conn.set_tlsext_host_name(sni.encode("ascii"))
        if self.key_share is not None:
            shares = predicted_key_share(self.groups or default_groups(), self.key_share)
            # An OpenSSL before 3.5 knows no "*" (and sends one share anyway): the context's list stays.
            if shares is not None:
                openssl_private.set_connection_groups(conn, shares)
        self.check.install(conn)
        conn.set_connect_state()
        return conn
