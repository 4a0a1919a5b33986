"""The OpenSSL facts and settings tlsmta needs that pyOpenSSL does not offer publicly.

pyOpenSSL has no public call for OpenSSL's text of an ``X509_V_ERR_*`` code
(``crypto.X509StoreContextError`` carries that text only for errors found by
its own ``X509StoreContext.verify_certificate``, not for the code a verify
callback is given), for whether a handshake resumed a session, for the list
of key-exchange groups (``SSL_CTX_set1_groups_list``) or the group a
handshake negotiated (``SSL_get0_group_name``); neither has cryptography or the
standard library's ``ssl`` for a pyOpenSSL connection.  All are reached here
through pyOpenSSL's cffi binding, and nowhere else
(``tests/test_private_apis.py`` checks these claims).

Private names used:

- ``OpenSSL._util.ffi`` and ``OpenSSL._util.lib``: the cffi objects of the
  cryptography binding pyOpenSSL itself uses;
- ``lib.X509_verify_cert_error_string``, ``lib.SSL_session_reused``,
  ``lib.SSL_CTX_set1_curves_list`` (the older name of the groups list call),
  and ``lib.SSL_get0_group_name``;
- ``OpenSSL.SSL.Connection._ssl``: the connection's ``SSL *``;
- ``OpenSSL.SSL.Context._context``: the context's ``SSL_CTX *``.

Checked against pyOpenSSL 26.4.0 and cryptography 50.0.2 (OpenSSL 3 and 4).
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import ffi, lib


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


def negotiated_group(conn: SSL.Connection) -> str | None:
    """The key-exchange group of ``conn``'s handshake (``SSL_get0_group_name``), None when there is none."""
    if conn.get_session() is None:
        return None  # no handshake yet: SSL_get0_group_name would read the missing session (a crash)
    name = lib.SSL_get0_group_name(conn._ssl)
    if name == ffi.NULL:
        return None
    text: bytes = ffi.string(name)
    return text.decode("ascii", "replace")

