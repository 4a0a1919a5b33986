"""Real TLS handshakes between two pyOpenSSL connections over memory BIOs (no sockets, no reactor),
and a trustme CA and leaf written as PEM files for them (`write_pki`, used by bench/ too)."""

from __future__ import annotations

import pathlib

import trustme
from OpenSSL import SSL

ROUNDS = 10  # a TLS 1.2 or 1.3 handshake, with a HelloRetryRequest, takes fewer flights


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run both ends' handshakes to the end; raises SSL.Error when they agree on nothing."""
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(ROUNDS):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        for src, dst in ((client, server), (server, client)):
            try:
                dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                pass
    assert client.get_cipher_name() is not None, "handshake did not finish"


def connect(client_ctx: SSL.Context, server_ctx: SSL.Context, server_name: bytes | None = None
            ) -> tuple[SSL.Connection, SSL.Connection]:
    """A client and a server connection of the two contexts, handshaken (SNI ``server_name`` if given)."""
    client, server = SSL.Connection(client_ctx, None), SSL.Connection(server_ctx, None)
    if server_name is not None:
        client.set_tlsext_host_name(server_name)
    handshake(client, server)
    return client, server


def write_pki(directory: str, name: str) -> tuple[str, str, str]:
    """A new trustme CA and a leaf for ``name`` in ``directory``: the chain, key and CA PEM files."""
    ca = trustme.CA()
    leaf = ca.issue_cert(name)
    cert, key, ca_pem = (pathlib.Path(directory) / file for file in ("cert.pem", "key.pem", "ca.pem"))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_pem))
    return str(cert), str(key), str(ca_pem)
