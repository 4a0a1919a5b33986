"""One message into the running dev relay (make run) over verified STARTTLS; find it in ./maildir and the API."""

import json
import mailbox
import smtplib
import ssl
import sys
import time
import urllib.request
import uuid

subject = f"check-dev-relay {uuid.uuid4()}"
context = ssl.create_default_context(cafile=".tlsmta/dev-ca.pem")
with smtplib.SMTP("127.0.0.1", 2525, local_hostname="ci.test", timeout=30) as smtp:
    smtp.starttls(context=context)  # verifies the relay's certificate for 127.0.0.1
    smtp.sendmail("ci@example.test", ["dev@example.com"], f"Subject: {subject}\r\n\r\nhello\r\n")

if not any(message["Subject"] == subject for message in mailbox.Maildir("maildir", create=False)):
    sys.exit(f"send-to-dev-relay: {subject!r} not in ./maildir")
deadline = time.monotonic() + 30
while True:
    with urllib.request.urlopen("http://127.0.0.1:8025/api/messages?subject=" + subject.split()[-1], timeout=30) as r:
        found = json.load(r)["messages"]
    if found:
        break
    if time.monotonic() > deadline:
        sys.exit(f"send-to-dev-relay: {subject!r} not on /api/messages")
    time.sleep(0.1)
tls = found[0]["receipt"]["tls"]
if not tls.get("used"):
    sys.exit(f"send-to-dev-relay: the API says the message came without TLS: {tls}")
print(f"send-to-dev-relay: {subject!r} in ./maildir and on /api/messages, {tls['protocol']}")
