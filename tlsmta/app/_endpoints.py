"""Server endpoint strings: whether Twisted can parse one, and why listening on one failed.

Parsing is Twisted's own (``serverFromString`` on a reactor that never
listens), so check-config accepts exactly what start-up will; ``systemd:``
is read here instead, because Twisted's parser looks up the inherited
socket, which exists only when systemd starts the process.  A failure to
listen becomes :class:`CannotListen`: one line naming the file, the table
and the key, which ``twistd tlsmta`` prints before exiting 78.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor

from tlsmta.errors import TlsmtaError


def _systemd_problem(text: str, arguments: str) -> str | None:
    named = dict(item.partition("=")[::2] for item in arguments.split(":") if item)
    unknown = set(named) - {"domain", "index", "name"}
    if unknown:
        return f"{text!r}: unknown systemd: argument {sorted(unknown)[0]!r} (domain, index, name)"
    if not hasattr(socket, "AF_" + named.get("domain", "")):
        return f"{text!r}: systemd: needs domain=INET, INET6 or UNIX"
    if ("index" in named) == ("name" in named):
        return f"{text!r}: systemd: needs exactly one of index=N or name=NAME"
    if "index" in named and not named["index"].isdigit():
        return f"{text!r}: systemd: index must be a number (got {named['index']!r})"
    return None


def endpoint_problem(text: str) -> str | None:
    """Why tlsmta could not listen with endpoint string ``text``, or None."""
    kind, _, arguments = text.removeprefix("haproxy:").partition(":")
    if kind == "systemd":
        return _systemd_problem(text, arguments)
    try:
        serverFromString(MemoryReactor(), text)
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            return f"{text!r}: unknown endpoint type {kind!r} (tcp, tcp6, unix, systemd, reuseport, haproxy:...)"
        return f"{text!r} does not parse: {e}"
    except (TypeError, OSError) as e:  # an unknown argument; a file an ssl: endpoint names
        return f"{text!r} does not parse: {e}"
    return None


class CannotListen(TlsmtaError):
    """An endpoint could not listen at start or reload: ``str()`` is the operator's one line."""

    def __init__(self, path: str, table: str, key: str, endpoint: str, why: str):
        self.table, self.key, self.endpoint, self.why = table, key, endpoint, why
        super().__init__(f"{path}: [{table}] {key}: cannot listen on {endpoint!r}: {why}")


def _why(error: BaseException) -> str:
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        return error.socketError.strerror or str(error.socketError)
    if isinstance(error, KeyError):  # systemd:name=... that systemd did not pass
        passed = os.environ.get("LISTEN_FDNAMES")
        return f"systemd passed no socket named {error.args[0]!r} (LISTEN_FDNAMES={passed or 'unset'})"
    if isinstance(error, IndexError):  # systemd:index=N beyond what systemd passed
        return f"systemd passed no socket at that index (LISTEN_FDS={os.environ.get('LISTEN_FDS') or 'unset'})"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


@contextmanager
def naming(path: str, table: str, key: str, endpoint: str) -> Iterator[None]:
    """Around one ``listen``: its failure raised again as :class:`CannotListen`."""
    try:
        yield
    except (CannotListenError, OSError, KeyError, IndexError, ValueError) as e:
        raise CannotListen(path, table, key, endpoint, _why(e)) from e
