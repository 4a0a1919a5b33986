"""The page's Checks tab (web/checks.js) in a real headless browser (Debian's chromium)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from browser import Chromium
from e2e import in_thread
from test_webui import send, web_relay, welcome
from test_webui_checks import newsletter, target  # noqa: F401  (target is a fixture)


@pytest_twisted.ensureDeferred
async def test_checks_tab_shows_problems_and_checks_links_on_click(tmp_path: Any, target: Any) -> None:  # noqa: F811
    """chromium: a message's Checks tab lists its header problems and the HTML features clients drop;
    "Check links" fills in the statuses; another message shows its own checks."""
    relay = await web_relay(tmp_path, link_check_hosts=["127.0.0.1"])
    try:
        await in_thread(send, relay.port, newsletter(target.port))
        await in_thread(send, relay.port, welcome("bob@example.org", "Welcome, Bob"))

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with Chromium() as browser:
                browser.open(f"http://127.0.0.1:{relay.http_port}/")
                browser.wait_for_text("#messages", "Newsletter")
                click = ("[...document.querySelectorAll('#messages li')]"
                         ".find(li => li.textContent.includes({!r})).click(), true")
                browser.evaluate(click.format("Newsletter"))
                browser.wait_for_text("#v-subject", "Newsletter")
                browser.evaluate("document.querySelector('#tabs button[data-tab=checks]').click(), true")
                seen["checks"] = browser.wait_for_text("#tab-checks", "display:flex")
                seen["active"] = browser.evaluate("document.querySelector('#tab-checks').classList.contains('active')")
                browser.evaluate("document.querySelector('#check-links').click(), true")
                seen["links"] = browser.wait_for_text("#tab-checks", "404")
                browser.evaluate(click.format("Welcome, Bob"))
                seen["other"] = browser.wait_for_text("#tab-checks", "invoice.pdf")  # its MIME tree, tab still open
            return seen

        seen = await in_thread(browse)
    finally:
        await relay.stop()
    assert "missing Date" not in seen["checks"] and "no Date: header" in seen["checks"]
    assert "Not supported:" in seen["checks"] and "Outlook (Windows)" in seen["checks"]
    assert "<video> element" in seen["checks"]
    assert seen["active"] is True
    assert "200" in seen["links"] and "301 → /ok" in seen["links"]
    assert "not checked: host not in [http] link_check_hosts" in seen["links"]
    assert "display:flex" not in seen["other"]
