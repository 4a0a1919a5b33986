"""Debian's chromium, headless, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe``: chromium reads commands on fd 3 and writes
answers and events on fd 4, each a JSON object ending in NUL.  No
websocket client and no webdriver needed.  Blocking: run it in a thread.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


class BrowserError(Exception):
    """A DevTools command failed, or the page's script threw."""


class Chromium:
    """One headless browser with one page; ``evaluate`` JavaScript in it."""

    def __init__(self, width: int = 1200, height: int = 800, timeout: float = 30):
        self.profile = tempfile.mkdtemp(prefix="tlsmta-chromium-")
        self.timeout = timeout
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # The child must see them as fds 3 and 4: move them above 4 first, so
        # the dup2 calls in the child cannot overwrite one another.
        high_r, high_w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4, high_r, high_w),
            preexec_fn=lambda: (os.dup2(high_r, 3), os.dup2(high_w, 4)),
        )
        os.close(high_r)
        os.close(high_w)
        self._buffer = b""
        self._next_id = 0
        target = self.command("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.command("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.command("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                     deviceScaleFactor=1, mobile=False)
        self.command("Page.enable", session=True)

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chrome, 65536)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def command(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and wait for its answer (events meanwhile are skipped)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read_message()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))

    def open(self, url: str) -> None:
        """Navigate and wait until the page's load event."""
        self.command("Page.navigate", session=True, url=url)
        self.evaluate(
            "new Promise(r => document.readyState === 'complete' ? r(true) : addEventListener('load', () => r(true)))"
        )

    def evaluate(self, expression: str) -> Any:
        """Run ``expression`` (a Promise is awaited, within ``timeout``) and return its JSON value."""
        wrapped = (
            f"Promise.race([Promise.resolve({expression}), "
            f"new Promise((_, no) => setTimeout(() => no(new Error('timed out')), {int(self.timeout * 1000)}))])"
        )
        result = self.command("Runtime.evaluate", session=True, expression=wrapped, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(str(result["exceptionDetails"].get("exception", {}).get("description")))
        return result["result"].get("value")

    def wait_for_text(self, selector: str, text: str) -> str:
        """Wait (on DOM mutations, not a poll) until ``selector``'s text contains ``text``; return that text."""
        return str(self.evaluate(
            "new Promise(resolve => {"
            f" const sel = {json.dumps(selector)}, want = {json.dumps(text)};"
            " const check = () => { const n = document.querySelector(sel);"
            "   if (n && n.textContent.includes(want)) { observer.disconnect(); resolve(n.textContent); } };"
            " const observer = new MutationObserver(check);"
            " observer.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});"
            " check(); })"
        ))

    def screenshot(self, path: str) -> None:
        data = self.command("Page.captureScreenshot", session=True, format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.command("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
