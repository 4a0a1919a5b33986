"""The two OpenSSL facts tlsmta needs that pyOpenSSL does not offer publicly.

pyOpenSSL has no public call for OpenSSL's text of an ``X509_V_ERR_*`` code
(``crypto.X509StoreContextError`` carries that text only for errors found by
its own ``X509StoreContext.verify_certificate``, not for the code a verify
callback is given), nor for whether a handshake resumed a session; neither
has cryptography or the standard library's ``ssl`` for a pyOpenSSL
connection.  Both are read here through pyOpenSSL's cffi binding, and
nowhere else (``tests/test_private_apis.py`` checks both claims).

Private names used:

- ``OpenSSL._util.ffi`` and ``OpenSSL._util.lib``: the cffi objects of the
  cryptography binding pyOpenSSL itself uses;
- ``lib.X509_verify_cert_error_string`` and ``lib.SSL_session_reused``;
- ``OpenSSL.SSL.Connection._ssl``: the connection's ``SSL *``.

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
