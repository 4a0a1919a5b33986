"""Whether full TLS handshakes run in parallel in threads of one Python process.

    .venv/bin/python bench/handshake_threads.py [HANDSHAKES]

pyOpenSSL releases the GIL around its C calls, so handshakes in two threads
could use two CPUs.  Client and server are tlsmta's ``client_context`` and
``server_context`` (TLS 1.3, the built-in groups, an ECDSA P-256 certificate
from trustme, no resumption), handshaken over memory BIOs: no sockets, so
the rate is CPU-bound.  Prints handshakes (both ends) per second with one
thread and with two, twice each.  bench/profile-issue13.md, seventh round,
has what came of it: the parallelism is real, moving tlsmta's handshakes
into threads did not pay.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from memory_tls import connect, write_pki  # noqa: E402
from OpenSSL import SSL  # noqa: E402

from tlsmta.tls import _contexts as contexts  # noqa: E402

TLS13 = frozenset({"TLSv1.3"})


def rate(client: SSL.Context, server: SSL.Context, count: int, threads: int) -> float:
    """Handshakes per second, ``count`` of them shared among ``threads`` threads."""
    workers = [threading.Thread(target=lambda: [connect(client, server) for _ in range(count // threads)])
               for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return count / (time.perf_counter() - start)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca_pem = write_pki(tmp, "mx.bench.test")
        server = contexts.server_context(cert, key, TLS13, resumption=False)
        client = contexts.client_context(TLS13, ca=ca_pem)
        client.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        connect(client, server)
        print(f"{contexts.openssl_version()}, {count} full TLS 1.3 handshakes per run")
        for threads in (1, 2, 1, 2):
            print(f"{threads} thread(s): {rate(client, server, count, threads):7.0f} handshakes/s")


if __name__ == "__main__":
    main()
