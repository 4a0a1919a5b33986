"""Make docs/dev-relay.png, the README's picture of the dev relay's page (run by hand).

    .venv/bin/python docs/screenshot.py

A Relay with the web page and a tag rule, four messages sent over SMTP
(three with STARTTLS, one of them by a client that accepted the TLS lab's
expired certificate), and headless chromium (tests/browser.py) showing one of
them: the list with tags, unread marks and TLS badges, the "Break…" menu and
the message view's tabs (Checks among them).
"""

from __future__ import annotations

import os
import smtplib
import ssl
import sys
import tempfile
from email.message import EmailMessage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from browser import Chromium  # noqa: E402
from tlsmta.testing import Relay, stop_reactor_thread  # noqa: E402

WELCOME_HTML = """<div style="font-family:Georgia,serif;max-width:520px;margin:24px auto;padding:28px;border:1px solid #ddd;border-radius:10px">
<h1 style="color:#b45309;margin-top:0">Welcome to Acme, Bob!</h1>
<p>Thanks for signing up. Your account is ready.</p>
<p><a href="https://acme.example/start" style="display:inline-block;background:#b45309;color:#fff;padding:10px 18px;border-radius:6px;text-decoration:none">Get started</a></p>
<p style="color:#888;font-size:12px">You received this because you signed up at acme.example.</p></div>"""


def message(to: str, subject: str, text: str, html: str | None = None, attachment: tuple[str, bytes] | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Acme Shop <shop@acme.example>", to, subject
    m.set_content(text)
    if html:
        m.add_alternative(html, subtype="html")
    if attachment:
        m.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return m


def main() -> None:
    with tempfile.TemporaryDirectory() as directory, \
            Relay(directory, http=True, tag_rules=["invoice=subject:Invoice"]) as relay:
        trusting = ssl.create_default_context(cafile=relay.ca_pem)
        careless = ssl.create_default_context()  # an application that does not verify
        careless.check_hostname = False
        careless.verify_mode = ssl.CERT_NONE

        def send(m: EmailMessage, tls: bool = True, sender: str = "noreply@acme.example",
                 context: ssl.SSLContext = trusting) -> None:
            with smtplib.SMTP("localhost", relay.port) as client:
                if tls:
                    client.starttls(context=context)
                client.send_message(m, from_addr=sender)

        send(message("carol@example.net", "Your order #1042 has shipped", "Your order is on its way."), tls=False)
        send(message("dave@example.org", "Invoice INV-2026-0117", "Your invoice is attached.",
                     attachment=("INV-2026-0117.pdf", b"%PDF-1.4 ...")), sender="billing@acme.example")
        relay.set_tls_lab("expired")
        send(message("alice@example.com", "Reset your password", "Reset it here: https://acme.example/reset/abc"),
             context=careless)
        relay.set_tls_lab(None)
        send(message("bob+signup@example.org", "Welcome to Acme, Bob!", "Hello Bob,\nthanks for signing up.",
                     html=WELCOME_HTML))
        with Chromium(1366, 768) as browser:
            browser.open(f"http://127.0.0.1:{relay.http_port}/")
            browser.wait_for_text("#messages", "Welcome to Acme")
            browser.wait_for_text("#live", "live")
            browser.evaluate("[...document.querySelectorAll('#messages li')]"
                             ".find(li => li.textContent.includes('Welcome to Acme')).click(), true")
            browser.wait_for_text("#v-tls", "TLSv1.3")
            browser.evaluate("new Promise(r => setTimeout(() => r(true), 500))")  # the iframe paints
            browser.screenshot(os.path.join(HERE, "dev-relay.png"))
    stop_reactor_thread()


if __name__ == "__main__":
    main()
