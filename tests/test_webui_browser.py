"""The dev relay's page in a real headless browser (Debian's chromium, over DevTools).

The page must list a message sent over SMTP just before, show a new one
without a reload (Server-Sent Events), open a message with its TLS panel,
and render its HTML in a sandbox where the mail's script cannot run.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest_twisted
from browser import Chromium
from e2e import in_thread
from test_capture_store import send_raw
from test_webui import get_json, send, store_in_maildir, web_relay, welcome

from tlsmta.testing import RunningRelay


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@contextlib.contextmanager
def relay_page(relay: RunningRelay) -> Iterator[Chromium]:
    """Headless chromium with the relay's page open."""
    with Chromium() as browser:
        browser.open(f"http://127.0.0.1:{relay.http_port}/")
        yield browser


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
            with relay_page(relay) as browser:
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
    assert seen["sandbox"] == "allow-popups allow-popups-to-escape-sandbox"  # no scripts, no same-origin
    assert seen["frame_src"].endswith("/html")
    assert seen["frame_isolated"] is True  # opaque origin: the page cannot reach into it, nor it out
    assert seen["title"] == "tlsmta dev relay"  # the mail's script (parent.document.title = ...) did not run
    assert "invoice.pdf" in seen["attachments"]
    assert png_size(shot) == (1200, 800) and os.path.getsize(shot) > 10_000


def click(browser: Chromium, subject: str) -> None:
    browser.evaluate("[...document.querySelectorAll('#messages li')]"
                     f".find(li => li.textContent.includes({json.dumps(subject)})).click(), true")


def finished(browser: Chromium, path_end: str) -> Any:
    """Wait until a request whose URL ends with path_end has had its whole answer (resource timing)."""
    return browser.evaluate(
        "new Promise(r => { const done = () => performance.getEntriesByType('resource')"
        f".some(e => e.name.endsWith({json.dumps(path_end)}) && e.responseEnd > 0);"
        " if (done()) return r(true);"
        " new PerformanceObserver((list, o) => { if (done()) { o.disconnect(); r(true); } }).observe({type: 'resource'}); })"
    )


def list_requests(browser: Chromium) -> int:
    return int(browser.evaluate(
        "performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '/api/messages').length"))


@pytest_twisted.ensureDeferred
async def test_the_message_shown_is_the_one_clicked_last_and_delete_acts_on_it(tmp_path: Any) -> None:
    """A slow 10 MB message clicked, then a small one at once: the small one's answer comes first,
    the big one's later; the page shows the small one, and Delete removes the small one."""
    relay = await web_relay(tmp_path)
    try:
        big = EmailMessage()
        big["Subject"] = "Big log"
        big.set_content("see attached")
        big.add_attachment(os.urandom(7_500_000), maintype="application", subtype="octet-stream", filename="log.bin")
        big_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"], big.as_bytes(policy=SMTP))
        small_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"],
                                   b"Subject: Small note\r\n\r\nhi\r\n")

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with relay_page(relay) as browser:
                browser.wait_for_text("#messages", "Small note")
                click(browser, "Big log")
                click(browser, "Small note")
                browser.wait_for_text("#v-subject", "Small note")
                finished(browser, f"/api/messages/{big_id}/source")  # the big one's answers are all in
                finished(browser, f"/api/messages/{big_id}")
                seen["subject"] = browser.evaluate(
                    "new Promise(r => requestAnimationFrame(() => r(document.querySelector('#v-subject').textContent)))")
                seen["hash"] = browser.evaluate("location.hash")
                browser.evaluate("document.querySelector('#delete').click(), true")
                browser.wait_for_text("#count", "1 message")  # the page counts after the DELETE's answer
                seen["left"] = [m["id"] for m in get_json(relay.http_port, "/api/messages")["messages"]]
            return seen

        seen = await in_thread(browse)
    finally:
        await relay.stop()
    assert seen["subject"] == "Small note"
    assert seen["hash"] == f"#/message/{small_id}"
    assert seen["left"] == [big_id]


def drop_event_streams(relay: RunningRelay) -> None:
    for request in list(relay.service.web.web.stream.requests):
        request.channel.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_live_updates_are_incremental_and_catch_up_after_a_reconnect(tmp_path: Any) -> None:
    """Twenty messages sent with the page open appear without one list request more; a message
    stored while the event stream is down appears once it reconnects."""
    relay = await web_relay(tmp_path)
    try:

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with relay_page(relay) as browser:
                browser.wait_for_text("#live", "live")
                browser.wait_for_text("#count", "0 messages")
                for n in range(20):
                    send_raw(relay.port, "app@example.com", ["bob@example.org"], f"Subject: burst {n}\r\n\r\nx\r\n".encode())
                seen["count"] = browser.wait_for_text("#count", "20 messages")
                seen["items"] = browser.evaluate("document.querySelectorAll('#messages li').length")
                seen["first"] = browser.evaluate("document.querySelector('#messages li .subject').textContent")
                seen["list_requests"] = list_requests(browser)
                # Stored with no event (as if it came while the stream was down), then the stream drops.
                store_in_maildir(tmp_path / "maildir", "1700000000.M1P1Q1.host",
                                 b"Return-Path: <app@example.com>\nDelivered-To: bob@example.org\nSubject: while away\n\nbody\n")
                browser.wait_for_text("#live", "live")
                relay.service.web.web.reactor.callFromThread(drop_event_streams, relay)
                seen["caught_up"] = browser.wait_for_text("#messages", "while away")
            return seen

        seen = await in_thread(browse)
    finally:
        await relay.stop()
    assert seen["items"] == 20 and seen["first"] == "burst 19"
    assert seen["list_requests"] == 1  # the first page, when the stream said hello
    assert "while away" in seen["caught_up"]


@pytest_twisted.ensureDeferred
async def test_message_view_keys_links_thumbnails_sizes_and_a_phone_sized_screen(tmp_path: Any) -> None:
    """j/k step through the list (the URL follows); the text view's URLs are links; an image
    attachment has a thumbnail, an inline cid: image is not listed; sizes read as kB; at 390 px
    the page is one column with nothing wider than the screen."""
    relay = await web_relay(tmp_path)
    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
           b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
    shot = str(tmp_path / "phone.png")
    try:
        message = EmailMessage()
        message["Subject"] = "Pictures"
        message.set_content("Look at https://example.com/gallery?id=7 now.\n" + "x" * 3000)
        message.add_alternative('<p><img src="cid:logo@shop"></p>', subtype="html")
        message.get_payload()[1].add_related(png, maintype="image", subtype="png", cid="<logo@shop>")
        message.add_attachment(png, maintype="image", subtype="png", filename="photo.png")
        await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"], b"Subject: Older\r\n\r\nx\r\n")
        await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"], message.as_bytes(policy=SMTP))

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with Chromium(width=390, height=844) as browser:
                browser.open(f"http://127.0.0.1:{relay.http_port}/")
                browser.wait_for_text("#messages", "Older")
                browser.evaluate("document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'j', bubbles: true})), true")
                seen["first"] = browser.wait_for_text("#v-subject", "Pictures")
                browser.evaluate("document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'j', bubbles: true})), true")
                seen["second"] = browser.wait_for_text("#v-subject", "Older")
                seen["hash"] = browser.evaluate("location.hash")
                browser.evaluate("document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'k', bubbles: true})), true")
                browser.wait_for_text("#v-subject", "Pictures")
                seen["attachments"] = browser.wait_for_text("#v-attachments", "photo.png")
                seen["thumbnail"] = browser.evaluate(
                    "new Promise(r => { const i = document.querySelector('#v-attachments img');"
                    " i.complete ? r(i.naturalWidth) : i.addEventListener('load', () => r(i.naturalWidth)); })")
                seen["link"] = browser.evaluate("document.querySelector('#v-text a').href")
                seen["summary"] = browser.evaluate("document.querySelector('#v-summary').textContent")
                seen["overflow"] = browser.evaluate("document.documentElement.scrollWidth")
                browser.evaluate("(() => { const s = document.querySelector('#search'); s.value = 'is:read gallery';"
                                 " s.dispatchEvent(new Event('input')); return true; })()")
                seen["searched"] = browser.wait_for_text("#count", "1 message")
                seen["search_request"] = browser.evaluate(
                    "performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('unread=')).pop()")
                browser.screenshot(shot)
            return seen

        seen = await in_thread(browse)
    finally:
        await relay.stop()
    assert "Pictures" in seen["first"] and "Older" in seen["second"] and seen["hash"].startswith("#/message/")
    assert "photo.png" in seen["attachments"] and "logo" not in seen["attachments"] and "(67 bytes)" in seen["attachments"]
    assert seen["thumbnail"] == 1
    assert seen["link"] == "https://example.com/gallery?id=7"
    assert "kB" in seen["summary"]
    assert seen["overflow"] <= 390
    assert "unread=false" in seen["search_request"] and "q=gallery" in seen["search_request"]  # read: shown by j/k
    assert png_size(shot) == (390, 844)


@pytest_twisted.ensureDeferred
async def test_a_link_in_the_html_view_opens_a_new_tab(tmp_path: Any) -> None:
    """A click on a link in the mail's HTML (here to the relay's own page) opens it in a new tab:
    it is followed, and the mail is not replaced in the frame."""
    relay = await web_relay(tmp_path)
    try:
        target = f"http://127.0.0.1:{relay.http_port}/?from-mail"
        message = EmailMessage()
        message["Subject"] = "Linked"
        message.set_content("see html")
        message.add_alternative(f'<a href="{target}" style="display:block;height:200px">follow me</a>', subtype="html")
        await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"], message.as_bytes(policy=SMTP))

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with relay_page(relay) as browser:
                browser.wait_for_text("#messages", "Linked")
                # The frame's document is opaque to the page: its load event (listened for before the
                # click), then two painted frames, say the link is on screen.
                browser.evaluate("(window.frameLoaded = new Promise(r => document.querySelector('#v-html')"
                                 ".addEventListener('load', r, {once: true})), true)")
                click(browser, "Linked")
                rect = browser.evaluate(
                    "window.frameLoaded.then(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => {"
                    " const b = document.querySelector('#v-html').getBoundingClientRect(); r({x: b.x + 30, y: b.y + 30}); }))))")
                # A real click (user activation, so the popup is allowed); the frame's content may take a
                # moment more to take clicks than to paint, so click again until the tab is there (bounded).
                deadline = time.monotonic() + 20
                pages: list[str] = []
                while target not in pages and time.monotonic() < deadline:
                    for kind in ("mousePressed", "mouseReleased"):
                        browser.command("Input.dispatchMouseEvent", session=True, type=kind, x=rect["x"], y=rect["y"],
                                        button="left", clickCount=1)
                    settle = time.monotonic() + 2  # a new tab, if the click took, shows up within this
                    while target not in pages and time.monotonic() < settle:
                        pages = [t["url"] for t in browser.command("Target.getTargets")["targetInfos"] if t["type"] == "page"]
                seen["pages"] = pages
                seen["subject"] = browser.evaluate("document.querySelector('#v-subject').textContent")
            return seen

        seen = await in_thread(browse)
    finally:
        await relay.stop()
    assert target in seen["pages"]  # a new tab with the link
    assert seen["subject"] == "Linked"


@pytest_twisted.ensureDeferred
async def test_the_page_shows_what_became_of_a_release(tmp_path: Any) -> None:
    """Released while shown: the message view lists the release, queued, then delivered (live)."""
    from outbound_lab import start_receiver
    from test_webui import web

    receiver = await start_receiver(tmp_path)
    relay = await web_relay(tmp_path)
    try:
        queue_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"],
                                   b"Subject: Release me\r\n\r\nbody\r\n")

        def browse() -> str:
            with Chromium() as browser:
                browser.open(f"http://127.0.0.1:{relay.http_port}/#/message/{queue_id}")
                browser.wait_for_text("#v-subject", "Release me")
                body = json.dumps({"smarthost": f"[127.0.0.1]:{receiver.port}"}).encode()
                status, _, _ = web(relay.http_port, "POST", f"/api/messages/{queue_id}/release", body,
                                   {"Content-Type": "application/json"})
                assert status == 202
                return browser.wait_for_text("#v-releases", ": delivered")

        shown = await in_thread(browse)
    finally:
        await relay.stop()
        await receiver.stop()
    assert f"to smtp:127.0.0.1:{receiver.port}: delivered (TLS: no)" in shown


@pytest_twisted.ensureDeferred
async def test_break_menu_holds_the_tls_lab_and_adds_an_smtp_failure(tmp_path: Any) -> None:
    """chromium: the "Break…" menu holds the TLS lab select and a form whose rule (RCPT 452, once)
    the next smtplib send meets; a bad code is shown as the API's complaint; "Stop all" clears the rules."""
    import smtplib

    relay = await web_relay(tmp_path)
    try:
        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with relay_page(relay) as browser:
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
            with relay_page(relay) as browser:
                browser.wait_for_text("#messages", "via LOGIN")
                browser.evaluate("document.querySelector('#messages li').click(), true")
                return browser.wait_for_text("#v-summary", "AUTH user")

        summary = await in_thread(browse)
    finally:
        await relay.stop()
    assert "AUTH usershop-app" in summary
