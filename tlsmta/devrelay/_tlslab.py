"""The TLS lab: a listener that is a good or a deliberately bad TLS peer.

An application's developers point their mail client at the dev relay to
prove it refuses what it must.  Per listener (``tls_lab``), per run
(``twistd tlsmta --tls-lab MODE``) or at run time (``PUT /api/tls-lab``),
a STARTTLS listener serves:

- ``good``: the dev certificate, which verifies against the dev CA;
- ``expired``, ``wrong-name``, ``untrusted``, ``self-signed``: a
  certificate broken in exactly that way (see :func:`devcert.lab_certificate`);
- ``handshake-fail``: STARTTLS is advertised and answered 220, then the
  handshake fails with a fatal ``handshake_failure`` alert (no shared cipher);
- ``no-starttls``: STARTTLS is not advertised (and refused with 502).
"""

from __future__ import annotations

import attrs
from OpenSSL import SSL
from twisted.logger import Logger

from tlsmta.config import Config, ListenerConfig, ListenerTLS
from tlsmta.devrelay._devcert import (
    CERTIFICATE_LAB_MODES,
    LAB_MODES,
    dev_ca_path,
    ensure_dev_certificate,
    lab_certificate,
)
from tlsmta.errors import TlsmtaError
from tlsmta.tls import ServerTLS, server_context

log = Logger(namespace="tlsmta.tlslab")

# Only a NULL cipher (no client offers one) and no TLS 1.3 (whose suites are
# all real): OpenSSL itself answers the ClientHello with handshake_failure.
_NO_SHARED_CIPHER = b"NULL-SHA256:@SECLEVEL=0"


def dev_names(hostname: str) -> list[str]:
    """The names the dev (and good lab) certificate is issued for."""
    return list(dict.fromkeys([hostname, "localhost", "127.0.0.1", "::1"]))


def log_dev_ca(state_dir: str) -> None:
    """Print the dev CA's PEM in the log: what a client trusts to verify the relay."""
    path = dev_ca_path(state_dir)
    try:
        with open(path, encoding="ascii") as f:
            pem = f.read().strip()
    except OSError:
        return
    log.info("dev CA {path} (trust it in your client; also `tlsmta dev-ca`, and /api/dev-ca.pem on the web page):\n{pem}",
             path=path, pem=pem)


def failing_context() -> SSL.Context:
    """A server context whose every handshake fails with a handshake_failure alert."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(_NO_SHARED_CIPHER)
    return ctx


def lab_server_tls(listener: ListenerConfig, config: Config, hostname: str) -> ServerTLS:
    """The server TLS creator for a listener in lab mode ``listener.tls_lab``."""
    mode = listener.tls_lab
    assert mode in LAB_MODES
    if mode == "handshake-fail":
        ensure_dev_certificate(config.state_dir, dev_names(hostname))  # the CA is still offered for download
        context = failing_context()
        what = "advertises STARTTLS, then fails every handshake"
    else:
        cert_mode = mode if mode in CERTIFICATE_LAB_MODES else "good"
        paths = lab_certificate(config.state_dir, cert_mode, dev_names(hostname))
        context = server_context(
            paths.cert_path,
            paths.key_path,
            listener.tls_protocols,
            listener.tls_ciphers,
            listener.tlsv13_ciphersuites,
            listener.tls_client_ca,
            session_id=f"tlsmta-{listener.name}-{mode}".encode(),
            resumption=False,  # a resumed session would skip the certificate being tested
            groups=listener.tls_groups,
        )
        what = "does not offer STARTTLS" if mode == "no-starttls" else f"serves {paths.cert_path} ({mode})"
    log_dev_ca(config.state_dir)
    log.info("TLS lab: listener {name} {what}; clients should trust only {ca}", name=listener.name, what=what,
             ca=dev_ca_path(config.state_dir))
    return ServerTLS(context)


def with_tls_lab(config: Config, mode: str) -> Config:
    """``config`` with lab ``mode`` on every listener it applies to (``--tls-lab``)."""
    changed = []
    for item in config.listeners:
        if lab_applies(item.tls, mode):
            item = attrs.evolve(item, tls_lab=mode, tls_certificate="auto")
        changed.append(item)
    return attrs.evolve(config, listeners=tuple(changed))


def lab_applies(tls_setting: ListenerTLS, mode: str | None) -> bool:
    """Whether ``mode`` makes sense on a listener with ``tls = tls_setting``
    (a TLS listener; no-starttls only with STARTTLS)."""
    if tls_setting == ListenerTLS.NO:
        return False
    return mode != "no-starttls" or tls_setting == ListenerTLS.STARTTLS


@attrs.frozen
class LabListener:
    """A running listener as the TLS lab menu shows it."""

    name: str
    tls: ListenerTLS
    tls_lab: str | None
    port: int | None


class LabError(TlsmtaError):
    """A run-time lab switch that cannot be made (the message says why)."""


def lab_listener(configured: ListenerConfig, mode: str | None) -> ListenerConfig:
    """``configured`` (the listener as its file says) switched to lab ``mode`` (None: off).

    Starting from the configured listener means "off" restores its own certificate.
    """
    if mode is not None and mode not in LAB_MODES:
        raise LabError(f"unknown TLS lab mode {mode!r} (one of {', '.join(LAB_MODES)})")
    if not lab_applies(configured.tls, mode):
        raise LabError(f"listener {configured.name!r} has tls = {configured.tls!r}: lab mode {mode!r} does not apply")
    return attrs.evolve(configured, tls_lab=mode, tls_certificate="auto" if mode else configured.tls_certificate)
