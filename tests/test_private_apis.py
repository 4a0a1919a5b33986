"""The private library APIs tlsmta leans on: still there, still shaped as assumed, used in one place each.

When pyOpenSSL or Twisted moves one of these names, a test here fails and says which module
to mend (tlsmta/tls/_openssl_private.py, tlsmta/inbound/_haproxy_private.py), instead of a
delivery or a PROXY listener failing at run time.
"""

from __future__ import annotations

import ast
import ipaddress
import pathlib
import struct
from typing import Any

import pytest
from memory_tls import handshake
from OpenSSL import SSL

import tlsmta
from tlsmta.inbound import _haproxy_private as haproxy_private
from tlsmta.tls import _contexts as contexts
from tlsmta.tls import _openssl_private as openssl_private

OPENSSL_MOVED = "pyOpenSSL's private binding changed: mend tlsmta/tls/_openssl_private.py"
TWISTED_MOVED = "Twisted's private haproxy parsers changed: mend tlsmta/inbound/_haproxy_private.py"

# The only modules allowed to import a library's private (underscore) module.
PRIVATE_API_MODULES = {"tlsmta/tls/_openssl_private.py", "tlsmta/inbound/_haproxy_private.py"}
TLS12 = frozenset({"TLSv1.2"})


# -- OpenSSL -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "X509_verify_cert_error_string", "SSL_session_reused", "SSL_CTX_set1_curves_list", "SSL_set1_curves_list",
    "SSL_get0_group_name",
    "SSL_set_verify", "X509_STORE_CTX_get_error", "X509_STORE_CTX_set_error", "X509_V_ERR_HOSTNAME_MISMATCH",
    "X509_V_ERR_CERT_REJECTED",
])
def test_openssl_binding_has_the_functions_used(name: str) -> None:
    from OpenSSL._util import lib

    assert hasattr(lib, name), f"OpenSSL._util.lib.{name} is gone. {OPENSSL_MOVED}"


def test_verify_error_string_is_openssls_text() -> None:
    expired = 10  # X509_V_ERR_CERT_HAS_EXPIRED
    assert openssl_private.verify_error_string(expired) == "certificate has expired", OPENSSL_MOVED
    assert contexts.verify_error_text(expired) == "certificate has expired"


def _handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Both ends' TLS 1.2 handshakes over memory BIOs."""
    handshake(client, server)
    assert client.get_protocol_version_name() == "TLSv1.2" and server.get_protocol_version_name() == "TLSv1.2"


def test_session_reused_tells_a_resumed_handshake_from_a_full_one(pki: Any) -> None:
    server_ctx = contexts.server_context(pki.good.cert, pki.good.key, TLS12)
    client_ctx = contexts.client_context(TLS12, ca=pki.ca_pem)
    first_client, first_server = SSL.Connection(client_ctx, None), SSL.Connection(server_ctx, None)
    assert hasattr(first_client, "_ssl"), f"SSL.Connection._ssl is gone. {OPENSSL_MOVED}"
    _handshake(first_client, first_server)
    assert openssl_private.session_reused(first_client) is False, OPENSSL_MOVED

    second_client, second_server = SSL.Connection(client_ctx, None), SSL.Connection(server_ctx, None)
    second_client.set_session(first_client.get_session())
    _handshake(second_client, second_server)
    assert openssl_private.session_reused(second_client) is True, OPENSSL_MOVED
    assert openssl_private.session_reused(second_server) is True, OPENSSL_MOVED


def test_groups_are_set_on_the_context_and_read_from_the_connection(pki: Any) -> None:
    """SSL_CTX_set1_curves_list takes a group list (and refuses an unknown name); SSL_get0_group_name names the one agreed."""
    server_ctx = contexts.server_context(pki.good.cert, pki.good.key, TLS12)
    client_ctx = contexts.client_context(TLS12, ca=pki.ca_pem)
    assert hasattr(server_ctx, "_context"), f"SSL.Context._context is gone. {OPENSSL_MOVED}"
    assert openssl_private.set_groups(server_ctx, "secp384r1") is True, OPENSSL_MOVED
    assert openssl_private.set_groups(server_ctx, "secp384r1:no-such-group") is False, OPENSSL_MOVED
    client, server = SSL.Connection(client_ctx, None), SSL.Connection(server_ctx, None)
    assert openssl_private.negotiated_group(client) is None  # before any handshake
    _handshake(client, server)
    assert openssl_private.negotiated_group(client) == openssl_private.negotiated_group(server) == "secp384r1", OPENSSL_MOVED


def test_set_verify_keeps_its_cffi_callback_where_it_is_replaced() -> None:
    """Connection.set_verify keeps the cffi callback it made in ``_verify_callback`` (set_verify_with_reason wraps it)."""
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    conn.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    assert callable(getattr(conn, "_verify_callback", None)), f"SSL.Connection._verify_callback is gone. {OPENSSL_MOVED}"


# -- Twisted's PROXY header parsers --------------------------------------------------------------


def _v2(command: int, body: bytes) -> bytes:
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(body)) + body


V2_PROXY = _v2(1, ipaddress.ip_address("198.51.100.9").packed + ipaddress.ip_address("127.0.0.1").packed
               + struct.pack("!HH", 40000, 25))


def _parse(header: bytes) -> tuple[Any, bytes | None]:
    parser = haproxy_private.parser_for(header)
    assert parser not in (None, False), f"no parser for {header!r}"
    assert isinstance(parser, haproxy_private.HeaderParser)
    return parser.feed(header)


@pytest.mark.parametrize("header", [b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\n", V2_PROXY], ids=["v1", "v2"])
def test_parsers_give_source_destination_and_the_rest(header: bytes) -> None:
    info, rest = _parse(header + b"EHLO c.test\r\n")
    assert isinstance(info, haproxy_private.ProxyInfo), TWISTED_MOVED
    assert (info.source.host, info.source.port) == ("198.51.100.9", 40000), TWISTED_MOVED
    assert (info.destination.host, info.destination.port) == ("127.0.0.1", 25), TWISTED_MOVED
    assert rest == b"EHLO c.test\r\n", TWISTED_MOVED


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN 127.0.0.9 127.0.0.1 1 25\r\n", _v2(0, b"")], ids=["v1-unknown", "v2-local"])
def test_headers_naming_no_client_have_no_source(header: bytes) -> None:
    info, _ = _parse(header)
    assert info is not None and info.source is None, TWISTED_MOVED


def test_an_unfinished_header_waits_for_more() -> None:
    parser = haproxy_private.parser_for(b"PROXY TCP4 198.51.100.9")
    assert isinstance(parser, haproxy_private.HeaderParser)
    assert parser.feed(b"PROXY TCP4 198.51.100.9") == (None, None), TWISTED_MOVED
    assert haproxy_private.parser_for(V2_PROXY[:14]) is None  # the v2 length field not there yet


@pytest.mark.parametrize("header", [b"PROXY TCP9 a b c d\r\n", b"PROXY TCP4 198.51.100.9\r\n"])
def test_a_bad_header_raises_invalid_proxy_header(header: bytes) -> None:
    with pytest.raises(haproxy_private.InvalidProxyHeader):
        _parse(header)


def test_bytes_that_are_no_header_are_refused() -> None:
    assert haproxy_private.parser_for(b"EHLO c.test\r\n") is False
    assert haproxy_private.parser_for(b"\r\n\r\n\x00\r\nQUIT\n\x11") is False  # v2 signature, version 1


# -- one place each --------------------------------------------------------------------------


def _private_imports(source: str) -> list[str]:
    """Library modules imported by ``source`` with a private (``_name``) part below the top package
    (tlsmta's own modules are private by name: each part is entered through its ``__init__``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [name for name in names
                  if name.split(".")[0] != "tlsmta" and any(part.startswith("_") for part in name.split(".")[1:])]
    return found


def test_private_imports_are_found() -> None:
    assert _private_imports("from OpenSSL._util import lib\nimport os.path\ndef f():\n import a._b\n") == [
        "OpenSSL._util", "a._b"]


def test_only_the_private_api_modules_import_private_names() -> None:
    root = pathlib.Path(tlsmta.__file__).parent.parent
    offenders = {}
    for path in sorted((root / "tlsmta").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative not in PRIVATE_API_MODULES and (imports := _private_imports(path.read_text())):
            offenders[relative] = imports
    assert offenders == {}, "private library modules imported outside " + ", ".join(sorted(PRIVATE_API_MODULES))
