"""The dev relay's page in a real headless browser (Debian's chromium, over DevTools).

The page must list a message sent over SMTP just before, show a new one
without a reload (Server-Sent Events), open a message with its TLS panel,
and render its HTML in a sandbox where the mail's script cannot run.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest_twisted
from browser import Chromium
from e2e import in_thread
from test_webui import send, web_relay, welcome


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest_twisted.ensureDeferred
async def test_page_lists_shows_and_updates_live(tmp_path: Any) -> None:
    """chromium: the list shows the message sent before; a second one appears live; the message view
    shows its TLS facts; the mail's HTML runs in <iframe sandbox> and its script does not run."""
    relay = await web_relay(tmp_path)
    shot = str(tmp_path / "page.png")
    try:
        ca = str(tmp_path / "state" / "dev-ca.pem")
        await in_thread(send, relay.port, welcome("bob@example.org", "Welcome, Bob"), "app@example.com", ca)

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with Chromium() as browser:
                browser.open(f"http://127.0.0.1:{relay.http_port}/")
                seen["list"] = browser.wait_for_text("#messages", "Welcome, Bob")
                seen["live"] = browser.wait_for_text("#live", "live")  # the event stream is open
                send(relay.port, welcome("alice@example.net", "Your invoice"), "billing@example.com")
                seen["updated"] = browser.wait_for_text("#messages", "Your invoice")
                browser.evaluate("[...document.querySelectorAll('#messages li')]"
                                 ".find(li => li.textContent.includes('Welcome, Bob')).click(), true")
                seen["tls"] = browser.wait_for_text("#v-tls", "TLSv1.3")
                seen["sandbox"] = browser.evaluate("document.querySelector('#v-html').getAttribute('sandbox')")
                seen["frame_src"] = browser.evaluate("document.querySelector('#v-html').src")
                browser.evaluate(
                    "new Promise(r => { const f = document.querySelector('#v-html');"
                    " const wait = () => { try { if (f.contentDocument === null) return r(true); } catch (e) { return r(true); }"
                    " setTimeout(wait, 20); }; f.addEventListener('load', () => r(true)); wait(); })"
                )
                seen["frame_isolated"] = browser.evaluate("document.querySelector('#v-html').contentDocument === null")
                seen["title"] = browser.evaluate("document.title")
                # select() fills the attachment list only after a further request (the raw view), so
                # the TLS panel can be complete while the list is still empty: wait for it.
                seen["attachments"] = browser.wait_for_text("#v-attachments", "invoice.pdf")
                browser.screenshot(shot)
            return seen

        seen = await in_thread(browse)
    finally:
        await relay.stop()
    assert "app@example.com → bob@example.org" in seen["list"] and "TLSv1.3" in seen["list"]
    assert "Your invoice" in seen["updated"] and "Welcome, Bob" in seen["updated"]
    assert "TLS_" in seen["tls"] and "not requested" in seen["tls"]
    assert seen["sandbox"] == ""  # sandboxed, with no allow-* tokens
    assert seen["frame_src"].endswith("/html")
    assert seen["frame_isolated"] is True  # opaque origin: the page cannot reach into it, nor it out
    assert seen["title"] == "tlsmta dev relay"  # the mail's script (parent.document.title = ...) did not run
    assert "invoice.pdf" in seen["attachments"]
    assert png_size(shot) == (1200, 800) and os.path.getsize(shot) > 10_000


@pytest_twisted.ensureDeferred
async def test_break_menu_holds_the_tls_lab_and_adds_an_smtp_failure(tmp_path: Any) -> None:
    """chromium: the "Break…" menu holds the TLS lab select and a form whose rule (RCPT 452, once)
    the next smtplib send meets; a bad code is shown as the API's complaint; "Stop all" clears the rules."""
    import smtplib

    relay = await web_relay(tmp_path)
    try:
        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with Chromium() as browser:
                browser.open(f"http://127.0.0.1:{relay.http_port}/")
                browser.wait_for_text("#chaos-stage", "END-OF-DATA")  # the stages came from /api/chaos
                seen["lab_inside"] = browser.evaluate("document.querySelector('#break .break-panel #lab') !== null")
                browser.evaluate("document.querySelector('#break').open = true, true")
                browser.evaluate("(() => { const v = (id, x) => { document.querySelector(id).value = x; };"
                                 " v('#chaos-stage', 'RCPT'); v('#chaos-code', '452'); v('#chaos-status', '4.2.2');"
                                 " v('#chaos-text', 'mailbox full'); v('#chaos-times', '1');"
                                 " document.querySelector('#chaos-add').click(); return true; })()")
                seen["rules"] = browser.wait_for_text("#chaos-rules", "RCPT: 452 4.2.2 mailbox full (1 more)")
                try:
                    send(relay.port, welcome())
                except smtplib.SMTPRecipientsRefused as e:
                    seen["refused"] = e.recipients
                browser.evaluate("document.querySelector('#chaos-code').value = '470',"
                                 " document.querySelector('#chaos-add').click(), true")
                seen["problem"] = browser.wait_for_text("#chaos-problem", "code must be")
                browser.evaluate("document.querySelector('#chaos-code').value = '451',"
                                 " document.querySelector('#chaos-times').value = '',"
                                 " document.querySelector('#chaos-add').click(), true")
                browser.wait_for_text("#chaos-rules", "RCPT: 451")
                browser.evaluate("document.querySelector('#chaos-clear').click(), true")
                seen["cleared"] = browser.evaluate(
                    "new Promise(r => { const list = document.querySelector('#chaos-rules');"
                    " const done = () => list.children.length === 0 && r(true);"
                    " new MutationObserver(done).observe(list, {childList: true}); done(); })")
            return seen

        seen = await in_thread(browse)
        assert relay.service.chaos is not None and relay.service.chaos.listing() == []
    finally:
        await relay.stop()
    assert seen["lab_inside"] is True
    assert "RCPT: 452 4.2.2 mailbox full (1 more)" in seen["rules"]
    assert seen["refused"] == {"bob@example.org": (452, b"4.2.2 mailbox full")}
    assert "code must be an SMTP failure code" in seen["problem"]
    assert seen["cleared"] is True


@pytest_twisted.ensureDeferred
async def test_message_view_shows_the_auth_user(tmp_path: Any) -> None:
    """chromium: a message sent after AUTH (any password, dev mode) shows who authenticated."""
    from test_dev_auth import auth_relay, login

    relay = await auth_relay(tmp_path)
    try:
        await in_thread(login, relay.port, "shop-app", "whatever", "LOGIN")

        def browse() -> str:
            with Chromium() as browser:
                browser.open(f"http://127.0.0.1:{relay.http_port}/")
                browser.wait_for_text("#messages", "via LOGIN")
                browser.evaluate("document.querySelector('#messages li').click(), true")
                return browser.wait_for_text("#v-summary", "AUTH user")

        summary = await in_thread(browse)
    finally:
        await relay.stop()
    assert "AUTH usershop-app" in summary
