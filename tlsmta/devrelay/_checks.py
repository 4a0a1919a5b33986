"""One captured message's checks, as ``GET /api/messages/ID/checks`` answers them (sans I/O).

The parts: :mod:`._checks_mime` (size, MIME tree, header problems),
:mod:`._checks_html` (clients' HTML/CSS support, links) and, per link,
whether ``[http] link_check_hosts`` lets :mod:`._linkcheck` request it.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from tlsmta.devrelay._checks_html import Link, html_problems, links_of
from tlsmta.devrelay._checks_mime import mime_report
from tlsmta.devrelay._mailview import local_envelope, parse_message


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body((subtype,))
    if part is None:
        return None
    try:
        return str(part.get_content())
    except (LookupError, ValueError):  # an unknown charset: read as UTF-8, as the page shows it
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None


def bodies(stored: bytes) -> tuple[str | None, str | None]:
    """(text, html) bodies of a captured message, as a mail client would pick them."""
    message = parse_message(stored[local_envelope(stored).end :])
    return _body(message, "plain"), _body(message, "html")


def not_checkable(url: str, allowed_hosts: Iterable[str]) -> str | None:
    """Why the link check will not request ``url`` (None: it will)."""
    # Twisted's Agent parses URLs its own way (no userinfo, and the link is sent as ASCII): a URL
    # that urlsplit and Agent could read as two different hosts is never requested.
    if not url.isascii() or not url.isprintable() or " " in url:
        return "not a plain ASCII URL (write an IDN host in its xn-- form)"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError for a port that is no number
    except ValueError:
        return "not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not host:
        return "not an http(s) URL"
    if "@" in parts.netloc:
        return "has a user name in it"
    if host.lower().rstrip(".") not in {h.lower().rstrip(".") for h in allowed_hosts}:
        return "host not in [http] link_check_hosts"
    return None


MAX_CHECKED_LINKS = 100  # requested at once per click: a mail with thousands of links must not fan out


def link_entries(links: Iterable[Link], allowed_hosts: Iterable[str]) -> list[dict[str, Any]]:
    allowed = tuple(allowed_hosts)
    entries, checked = [], 0
    for link in links:
        skipped = not_checkable(link.url, allowed)
        if skipped is None:
            checked += 1
            if checked > MAX_CHECKED_LINKS:
                skipped = f"only the first {MAX_CHECKED_LINKS} checkable links are requested"
        entries.append({"url": link.url, "kind": link.kind, "skipped": skipped})
    return entries


def message_checks(stored: bytes, allowed_hosts: Iterable[str] = ()) -> dict[str, Any]:
    """Size, MIME structure, problems, HTML support problems (None: no HTML body) and links."""
    text, html = bodies(stored)
    report = mime_report(stored)
    report["html"] = html_problems(html) if html is not None else None
    report["links"] = link_entries(links_of(html, text), allowed_hosts)
    return report
