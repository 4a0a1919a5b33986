"""The OpenSSL facts and settings tlsmta needs that pyOpenSSL does not offer publicly.

pyOpenSSL has no public call for OpenSSL's text of an ``X509_V_ERR_*`` code
(``crypto.X509StoreContextError`` carries that text only for errors found by
its own ``X509StoreContext.verify_certificate``, not for the code a verify
callback is given), for whether a handshake resumed a session, for the list
of key-exchange groups (``SSL_CTX_set1_groups_list``, and ``SSL_set1_groups_list``
for one connection) or the group a
handshake negotiated (``SSL_get0_group_name``), nor a way for a verify
callback to say why it refused a certificate (so OpenSSL sends the matching
alert instead of ``internal_error``); neither has cryptography or the
standard library's ``ssl`` for a pyOpenSSL connection.  All are reached here
through pyOpenSSL's cffi binding, and nowhere else
(``tests/test_private_apis.py`` checks these claims).

Private names used:

- ``OpenSSL._util.ffi`` and ``OpenSSL._util.lib``: the cffi objects of the
  cryptography binding pyOpenSSL itself uses;
- ``lib.X509_verify_cert_error_string``, ``lib.SSL_session_reused``,
  ``lib.SSL_CTX_set1_curves_list`` and ``lib.SSL_set1_curves_list`` (the older names of
  the groups list calls),
  ``lib.SSL_get0_group_name``, ``lib.SSL_set_verify``,
  ``lib.X509_STORE_CTX_get_error`` and ``lib.X509_STORE_CTX_set_error``;
- ``OpenSSL.SSL.Connection._ssl``: the connection's ``SSL *``;
- ``OpenSSL.SSL.Context._context``: the context's ``SSL_CTX *``;
- ``OpenSSL.SSL.Connection._verify_callback``: the cffi callback
  ``Connection.set_verify`` made around the Python one (kept alive there).

Checked against pyOpenSSL 26.4.0 and cryptography 50.0.2 (OpenSSL 3 and 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

# X509_V_ERR codes a refusal is reported with; OpenSSL turns each into an alert
# (ssl_x509err2alert): both become bad_certificate(42).
HOSTNAME_MISMATCH: int = lib.X509_V_ERR_HOSTNAME_MISMATCH
CERT_REJECTED: int = lib.X509_V_ERR_CERT_REJECTED


def verify_error_string(errno: int) -> str:
    """OpenSSL's text for an X509_V_ERR code (``X509_verify_cert_error_string``)."""
    text: bytes = ffi.string(lib.X509_verify_cert_error_string(errno))
    return text.decode("ascii", "replace")


def session_reused(conn: SSL.Connection) -> bool:
    """Whether ``conn``'s handshake resumed a session (``SSL_session_reused``)."""
    return bool(lib.SSL_session_reused(conn._ssl))


def set_groups(ctx: SSL.Context, groups: str) -> bool:
    """Set the key-exchange groups (colon-separated OpenSSL names); False when OpenSSL refuses the list."""
    return bool(lib.SSL_CTX_set1_curves_list(ctx._context, groups.encode("ascii")) == 1)


def set_connection_groups(conn: SSL.Connection, groups: str) -> bool:
    """Set one connection's key-exchange groups, as :func:`set_groups` does a context's; False when refused."""
    return bool(lib.SSL_set1_curves_list(conn._ssl, groups.encode("ascii")) == 1)


def negotiated_group(conn: SSL.Connection) -> str | None:
    """The key-exchange group of ``conn``'s handshake (``SSL_get0_group_name``), None when there is none."""
    if conn.get_session() is None:
        return None  # no handshake yet: SSL_get0_group_name would read the missing session (a crash)
    name = lib.SSL_get0_group_name(conn._ssl)
    if name == ffi.NULL:
        return None
    text: bytes = ffi.string(name)
    return text.decode("ascii", "replace")


def set_verify_with_reason(
    conn: SSL.Connection, mode: int, callback: Callable[..., bool], refusal: Callable[[], int]
) -> None:
    """``conn.set_verify(mode, callback)``, and when ``callback`` refuses a certificate that
    OpenSSL itself found no fault with, the X509_V_ERR code ``refusal()`` gives is put in
    the verify context, so the alert sent names the certificate, not ``internal_error``.
    """
    conn.set_verify(mode, callback)
    inner: Any = conn._verify_callback

    def reporting(ok: int, store: Any) -> int:
        result: int = inner(ok, store)
        if not result and lib.X509_STORE_CTX_get_error(store) == lib.X509_V_OK:
            lib.X509_STORE_CTX_set_error(store, refusal())  # 0 (X509_V_OK) leaves internal_error
        return result

    callback = ffi.callback("int (*)(int, X509_STORE_CTX *)", reporting)
    conn._verify_callback = callback  # what keeps the cffi callback alive as long as conn
    lib.SSL_set_verify(conn._ssl, mode, callback)
