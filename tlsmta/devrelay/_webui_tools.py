"""The page's message tools: the checks, the link check and the send API (routes of :mod:`._webui`).

``GET /api/messages/ID/checks``: size, MIME structure, header problems, the
HTML compatibility report and the links (:mod:`._checks`).
``POST /api/messages/ID/linkcheck``: those links with their HTTP status, for
hosts in ``[http] link_check_hosts`` only (:mod:`._linkcheck`).
``POST /api/send``: a message as JSON (:mod:`._send`), queued into the
captured Maildir like mail received over SMTP, or to ``smarthost``; the
answer is ``202 {"queued_as": ID, "to": [...], "route": ...}`` once it is in
the spool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred

from tlsmta.config import Route, parse_route
from tlsmta.devrelay._capture import CapturedMail
from tlsmta.devrelay._checks import bodies, link_entries, message_checks
from tlsmta.devrelay._checks_html import links_of
from tlsmta.devrelay._linkcheck import check_links
from tlsmta.devrelay._release import release_message, smarthost_route
from tlsmta.devrelay._send import Outgoing, build_message
from tlsmta.network import IServiceReactor
from tlsmta.smtp import says_tls_required_no
from tlsmta.storage import QueuedMessage

SEND_MAX_BODY = 25 * 1024 * 1024  # a JSON message with base64 attachments
LINKCHECK_MAX_BODY = 1024  # "{}"

Answer = tuple[Any, int]  # a JSON value and the HTTP status to send it with


class MessageTools:
    """The routes above.  Bad requests raise :class:`._send.SendError` or
    :class:`._release.ReleaseError` (400); a missing message ``MessageNotFound`` (404)."""

    def __init__(self, reactor: IServiceReactor, mail: CapturedMail, run_blocking: Callable[..., Deferred[Any]],
                 release: Callable[[QueuedMessage, bytes], Deferred[None]] | None,
                 link_check_hosts: Iterable[str], hostname: str):
        self.reactor = reactor
        self.mail = mail
        self.run_blocking = run_blocking
        self.release = release  # the relay's queue (None: no send API)
        self.link_check_hosts = tuple(link_check_hosts)
        self.hostname = hostname

    def route(self, method: str, api: list[str], json_body: Callable[[int], Any]) -> Deferred[Answer] | None:
        """The answer for one of these routes; None: not one of them."""
        if api == ["send"] and method == "POST" and self.release is not None:
            return self._send(json_body(SEND_MAX_BODY))
        if len(api) == 3 and api[0] == "messages" and api[2] == "checks" and method == "GET":
            return self.run_blocking(self._checks, api[1])
        if len(api) == 3 and api[0] == "messages" and api[2] == "linkcheck" and method == "POST":
            json_body(LINKCHECK_MAX_BODY)  # no fields, but a JSON POST: no cross-site form can start it
            return self.run_blocking(self._links, api[1]).addCallback(self._checked)
        return None

    def _checks(self, message_id: str) -> Answer:
        return message_checks(self.mail.raw(message_id)[0], self.link_check_hosts), 200

    def _links(self, message_id: str) -> list[dict[str, Any]]:
        text, html = bodies(self.mail.raw(message_id)[0])
        return link_entries(links_of(html, text), self.link_check_hosts)

    def _checked(self, entries: list[dict[str, Any]]) -> Deferred[Answer]:
        return check_links(self.reactor, entries).addCallback(lambda links: ({"links": links}, 200))

    def _send(self, body: Any) -> Deferred[Answer]:
        assert self.release is not None
        outgoing = build_message(body, self.hostname)
        route = smarthost_route(outgoing.smarthost) if outgoing.smarthost else parse_route(f"maildir:{self.mail.path}")
        message = _queued(outgoing, route)
        answer = {"queued_as": message.id, "to": list(outgoing.recipients), "route": str(route)}
        return self.release(message, outgoing.data).addCallback(lambda _: (answer, 202))


def _queued(outgoing: Outgoing, route: Route) -> QueuedMessage:
    """The spool entry, flagged as the SMTP session would have (8BITMIME, SMTPUTF8, TLS-Required: No)."""
    message = release_message(outgoing.sender, list(outgoing.recipients), route)
    message.listener = "api"
    message.tls_required_no = says_tls_required_no(outgoing.data)
    message.smtputf8 = not all(a.isascii() for a in [outgoing.sender, *outgoing.recipients])
    message.body_type = "8BITMIME" if any(byte > 0x7F for byte in outgoing.data) else message.body_type
    return message
