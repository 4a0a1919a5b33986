"""Refuse, in a test process, any packet off loopback and any DNS query.

Tests talk to peers they started on loopback (ports they bound or hold) and
pin or serve every DNS answer themselves.  This guard makes that a checked
rule instead of a hope: a connect or datagram to a non-loopback address, to
port 53 anywhere (the system resolver's port; resolvers a test starts bind
port 0), or a name lookup of anything but an IP literal, ``localhost`` or
this machine's own name (answered from /etc/hosts) is refused with
ENETUNREACH / EAI_NONAME and recorded.

The pytest process installs it from conftest.py and fails the test that
made a violation; Python processes the tests start get it through
``sitecustomize`` (PYTHONPATH).  Every refusal is printed to stderr and
appended to the file named by :data:`LOG_VARIABLE`, which conftest.py reads
after each test, so a child process's violation fails the test too.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import Any

MARKER = "loopback-only guard refused"
LOG_VARIABLE = "TLSMTA_TEST_GUARD_LOG"

_own_names = {socket.gethostname().lower()}
_installed = False


def _refuse(what: str) -> str:
    message = f"{MARKER}: {what} in {' '.join(sys.argv)[:200]}"
    print(message, file=sys.stderr, flush=True)
    path = os.environ.get(LOG_VARIABLE)
    if path:
        with open(path, "a") as log:
            log.write(message + "\n")
    return message


def _local_name(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    name = str(host).lower().rstrip(".")
    if name in ("", "localhost") or name.endswith(".localhost") or name in _own_names:
        return True
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return _loopback(ip)


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _check_address(family: int, address: Any) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    host, port = address[0], address[1]
    if not _local_name(host):
        raise OSError(errno.ENETUNREACH, _refuse(f"traffic to {host}:{port} (off loopback)"))
    if port == 53:
        raise OSError(errno.ENETUNREACH, _refuse(f"DNS query to {host}:53 (a resolver the test did not start)"))


def install() -> None:
    """Patch the socket module for this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    cls = socket.socket
    connect, connect_ex, sendto, sendmsg = cls.connect, cls.connect_ex, cls.sendto, cls.sendmsg

    def guarded_connect(self: socket.socket, address: Any) -> None:
        _check_address(self.family, address)
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self.family, address)
        return connect_ex(self, address)

    def guarded_sendto(self: socket.socket, data: Any, *rest: Any) -> int:
        _check_address(self.family, rest[-1])
        return sendto(self, data, *rest)

    def guarded_sendmsg(self: socket.socket, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        if address is not None:
            _check_address(self.family, address)
            return sendmsg(self, buffers, ancdata, flags, address)
        return sendmsg(self, buffers, ancdata, flags)

    cls.connect, cls.connect_ex, cls.sendto, cls.sendmsg = (  # type: ignore[method-assign]
        guarded_connect, guarded_connect_ex, guarded_sendto, guarded_sendmsg)

    getaddrinfo, gethostbyname, gethostbyname_ex, gethostbyaddr = (
        socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex, socket.gethostbyaddr)

    def lookup(original: Any) -> Any:
        def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _local_name(host):
                raise socket.gaierror(socket.EAI_NONAME, _refuse(f"name lookup of {host!r} (system resolver)"))
            return original(host, *args, **kwargs)
        return guarded

    socket.getaddrinfo = lookup(getaddrinfo)
    socket.gethostbyname = lookup(gethostbyname)
    socket.gethostbyname_ex = lookup(gethostbyname_ex)
    socket.gethostbyaddr = lookup(gethostbyaddr)
