"""What each key-exchange group costs a full TLS handshake, with tlsmta's own contexts.

    .venv/bin/python bench/tls_groups.py [HANDSHAKES]

Client and server are tlsmta's ``client_context`` and ``server_context``
(TLS 1.3, the built-in ciphers, an ECDSA P-256 certificate from trustme, no
resumption), handshaken over memory BIOs in this one process: no sockets,
so the number is CPU per handshake, both ends together.  For each of the
groups ``tls_groups`` may name, and for the built-in default list (which
sends two key shares, X25519MLKEM768 and X25519), prints handshakes per
second and microseconds per handshake.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from memory_tls import connect, write_pki  # noqa: E402
from OpenSSL import SSL  # noqa: E402

from tlsmta.tls import _contexts as contexts  # noqa: E402

TLS13 = frozenset({"TLSv1.3"})


def contexts_for(groups: list[str] | None, cert: str, key: str, ca: str) -> tuple[SSL.Context, SSL.Context]:
    server = contexts.server_context(cert, key, TLS13, resumption=False, groups=groups)
    client = contexts.client_context(TLS13, ca=ca, groups=groups)
    client.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return client, server


def rate(client: SSL.Context, server: SSL.Context, count: int) -> tuple[str | None, float]:
    """The group agreed and the seconds per handshake over ``count`` full handshakes."""
    first, _ = connect(client, server)
    group = contexts.SessionFacts.from_connection(first).group
    start = time.perf_counter()
    for _ in range(count):
        connect(client, server)
    return group, (time.perf_counter() - start) / count


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca_pem = write_pki(tmp, "mx.bench.test")
        print(f"{contexts.openssl_version()}, {count} full TLS 1.3 handshakes each")
        choices: list[list[str] | None] = [None, *([name] for name in contexts.default_groups())]
        for groups in choices:
            group, seconds = rate(*contexts_for(groups, cert, key, ca_pem), count)
            label = "default " + contexts.default_group_list() if groups is None else groups[0]
            print(f"{label:<58} agreed {group:<15} {1 / seconds:8.0f}/s {seconds * 1e6:8.0f} us")


if __name__ == "__main__":
    main()
