"""Where a fleet's Redis is: the ``[cluster] redis`` URL as one frozen value.

The URL forms redis-py and most Redis clients take (the IANA ``redis`` and
``rediss`` schemes, and ``unix:`` for a local socket):

- ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``: TCP, port 6379 by default;
- ``rediss://...``: the same over TLS (the server's certificate is checked
  against ``[cluster] redis_ca``, or the system store, for HOST);
- ``unix:/path/redis.sock`` or ``unix:///path/redis.sock``, with ``?db=N``.

Pure: no sockets, no Twisted.
"""

from __future__ import annotations

import enum
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

DEFAULT_PORT = 6379
MAX_DB = 15  # Redis's default "databases 16"


class RedisTransport(enum.Enum):
    """How the connection is made."""

    TCP = "tcp"
    TLS = "tls"
    UNIX = "unix"


@attrs.frozen
class RedisAddress:
    """A parsed ``[cluster] redis`` URL; ``password`` is never shown by :meth:`describe`."""

    transport: RedisTransport
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""  # the socket of a unix: URL
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def describe(self) -> str:
        """The address for logs and ``tlsmta cluster status``, without credentials."""
        if self.transport is RedisTransport.UNIX:
            return f"unix:{self.path}?db={self.db}"
        scheme = "rediss" if self.transport is RedisTransport.TLS else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_DB:
        raise ValueError(f"the database must be a number from 0 to {MAX_DB} (got {text!r})")
    return int(text)


def parse_redis_url(value: str) -> RedisAddress:
    """The address in ``value``; ValueError says what is wrong with it."""
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"a unix: Redis URL names an absolute socket path (got {value!r})")
        db = parse_qs(parts.query).get("db", ["0"])[-1]
        return RedisAddress(RedisTransport.UNIX, path=path, db=_db(db), password=_password(parts.password))
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"must be a redis://, rediss:// or unix: URL (got {value!r})")
    if not parts.hostname:
        raise ValueError(f"names no Redis host (got {value!r})")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"has a bad port (got {value!r})") from None
    db_text = parts.path.lstrip("/") or "0"
    return RedisAddress(
        RedisTransport.TLS if scheme == "rediss" else RedisTransport.TCP,
        host=parts.hostname,
        port=port,
        db=_db(db_text),
        username=unquote(parts.username) if parts.username else None,
        password=_password(parts.password),
    )


def _password(text: str | None) -> str | None:
    return unquote(text) if text else None
