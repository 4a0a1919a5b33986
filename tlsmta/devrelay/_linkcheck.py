"""The link check: each allowed link's HTTP status, asked only when the user asks
(``POST /api/messages/ID/linkcheck``).

Only hosts named in ``[http] link_check_hosts`` are requested (default none:
a captured mail's links can be one-time tokens or tracking URLs, and the dev
relay must not click them on its own).  One ``HEAD`` per link (``GET`` when
the server refuses HEAD, its body not read), no redirects followed (the
status and ``Location`` are the answer), each bounded by ``LINK_TIMEOUT``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tlsmta.network import IServiceReactor

LINK_TIMEOUT = 10.0  # seconds per request, connect included
USER_AGENT = b"tlsmta-dev-relay-linkcheck"


class _Discard(Protocol):
    """A response body nobody reads: stop it at once (the connection is closed)."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()  # type: ignore[attr-defined]  # a response body's transport is its producer


def discard_body(response: IResponse) -> None:
    """Drop a response's body unread (a HEAD's is empty)."""
    if response.length:
        response.deliverBody(_Discard())


def _request(agent: Agent, reactor: IServiceReactor, method: bytes, url: str) -> Deferred[IResponse]:
    d = agent.request(method, url.encode("ascii", "replace"), Headers({b"user-agent": [USER_AGENT]}))
    d.addTimeout(LINK_TIMEOUT, reactor)
    return d


def _answer(response: IResponse) -> dict[str, Any]:
    discard_body(response)
    location = response.headers.getRawHeaders(b"location")
    return {"status": response.code, "location": location[0].decode("latin-1") if location else None, "error": None}


def _failed(failure: Failure) -> dict[str, Any]:
    return {"status": None, "location": None, "error": failure.getErrorMessage() or failure.type.__name__}


def check_link(agent: Agent, reactor: IServiceReactor, url: str) -> Deferred[dict[str, Any]]:
    """The status of one URL (HEAD, then GET if HEAD is refused); never fails."""

    def head_refused(response: IResponse) -> Any:
        if response.code in (405, 501):
            discard_body(response)
            return _request(agent, reactor, b"GET", url)
        return response

    d = _request(agent, reactor, b"HEAD", url).addCallback(head_refused)
    return d.addCallbacks(_answer, _failed)


def check_links(reactor: IServiceReactor, entries: Iterable[dict[str, Any]]) -> Deferred[list[dict[str, Any]]]:
    """``entries`` (``_checks.link_entries``) with ``status``, ``location`` and ``error`` for those
    not ``skipped``; requested in parallel."""
    agent = Agent(reactor, connectTimeout=LINK_TIMEOUT)
    entries = list(entries)

    def one(entry: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if entry["skipped"]:
            return succeed({**entry, "status": None, "location": None, "error": None})
        return check_link(agent, reactor, entry["url"]).addCallback(lambda result: {**entry, **result})

    done = DeferredList([one(entry) for entry in entries], consumeErrors=True)
    return done.addCallback(lambda results: [value for _, value in results])
