"""The dev relay's JSON API and page, over real HTTP on loopback, after real SMTP."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

import attrs
import pytest
import pytest_twisted
from e2e import CLIENT_TIMEOUT, in_thread, partial_request, start_relay

from tlsmta.devrelay import _mailview as mailview
from tlsmta.devrelay import _search as search
from tlsmta.devrelay._devcert import dev_ca_path
from tlsmta.devrelay._webui import host_allowed
from tlsmta.storage._interfaces import Envelope
from tlsmta.storage._receipts import RECEIPTS, receipt_path, receipt_record
from tlsmta.testing import RunningRelay, build_config, dev_listener

HTTP_ENDPOINT = "tcp:0:interface=127.0.0.1"


def web(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    status, headers, body = web(port, "GET", path)
    assert status == 200, body
    assert headers["content-type"] == "application/json; charset=utf-8"
    return json.loads(body)


def welcome(to: str = "bob@example.org", subject: str = "Welcome, Bob") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Shop <shop@example.com>"
    m["To"] = to
    m["Subject"] = subject
    m.set_content("Hello Bob,\nwelcome aboard.\n")
    m.add_alternative("<h1>Hello</h1><script>parent.document.title = 'pwned'</script>", subtype="html")
    m.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="invoice.pdf")
    return m


def store_in_maildir(maildir: Any, name: str, data: bytes) -> None:
    """A message put into ``maildir/new`` as Maildir delivery does it (written in tmp/, then renamed),
    so the running relay's index never reads it half written."""
    (maildir / "tmp" / name).write_bytes(data)
    (maildir / "tmp" / name).rename(maildir / "new" / name)


def send(port: int, message: EmailMessage, sender: str = "app@example.com", ca: str | None = None) -> None:
    client = smtplib.SMTP("localhost", port, timeout=CLIENT_TIMEOUT)
    try:
        if ca is not None:
            client.starttls(context=ssl.create_default_context(cafile=ca))
        client.send_message(message, from_addr=sender)
        client.quit()
    finally:
        client.close()


async def web_relay(tmp_path: Any, **http: Any) -> RunningRelay:
    """A STARTTLS dev relay storing into tmp_path/maildir, with the web page on a free port."""
    listener = dev_listener(name="dev", tls="starttls", tls_certificate="auto")
    raw = {
        "global": {"hostname": "localhost", "state_dir": str(tmp_path / "state"), "route": f"maildir:{tmp_path / 'maildir'}"},
        "listener": [listener],
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"endpoint": HTTP_ENDPOINT, **http},
    }
    return await RunningRelay(build_config(raw)).start()


@pytest_twisted.async_yield_fixture
async def relay(tmp_path: Any) -> Any:
    running = await web_relay(tmp_path)
    yield running
    await running.stop()


# -- pure pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1:8025", True), ("localhost:8025", True), ("LOCALHOST", True), ("app.localhost:8025", True),
        ("[::1]:8025", True), ("127.1.2.3", True), ("localhost.", True),
        ("evil.example:8025", False), ("192.0.2.1:8025", False), ("[2001:db8::1]:8025", False),
        ("localhost.evil.example", False), ("", False), (None, False),
    ],
)
def test_host_check_accepts_only_loopback_names(host: str | None, ok: bool) -> None:
    """The DNS-rebinding guard: only loopback names and addresses pass."""
    assert host_allowed(host) is ok


def test_host_check_accepts_configured_names() -> None:
    """[http] allowed_hosts adds names, case-insensitively."""
    assert host_allowed("DevBox.internal:8025", ["devbox.internal"])
    assert not host_allowed("other.internal:8025", ["devbox.internal"])


TLS_FACTS = {"tls": "tls", "protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "tls_verify": "optional",
             "verified": "yes", "reason": "", "subject": "CN=app", "issuer": "CN=ca"}


def test_receipt_is_the_record_stored_with_the_message() -> None:
    """The facts of receipt come back from the stored record as they were: envelope, TLS dict, time."""
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=datetime.timezone.utc)
    envelope = Envelope(message_id="Q1", sender="app@example.com", recipients=(), received_at=when, helo="app.test",
                        peer="127.0.0.1", authenticated=True, tls=dict(TLS_FACTS))
    receipt = mailview.receipt_of(json.loads(json.dumps(receipt_record(envelope))))
    assert (receipt.helo, receipt.peer, receipt.protocol, receipt.message_id) == ("app.test", "127.0.0.1", "ESMTPSA", "Q1")
    assert (receipt.tls, receipt.tls_protocol, receipt.tls_cipher) == (True, "TLSv1.3", "TLS_AES_128_GCM_SHA256")
    assert receipt.client_certificate == "yes (CN=app)" and receipt.when == when
    plain = mailview.receipt_of(receipt_record(attrs.evolve(envelope, esmtp=False, authenticated=False, tls={"tls": "none"})))
    assert plain.protocol == "SMTP" and plain.tls is False and (plain.tls_protocol, plain.client_certificate) == (None, None)


def test_no_stored_receipt_means_unknown_facts() -> None:
    """A message stored without a receipt has unknown facts: not 'plain text', and not guessed from its headers."""
    assert mailview.receipt_of(None) == mailview.Receipt()
    assert mailview.Receipt().as_json() == {"helo": None, "peer": None, "auth_user": None, "smtp": None, "queue_id": None,
                                            "tls": {"used": None, "protocol": None, "cipher": None, "client_certificate": None,
                                                    "lab": None, "client_accepted_bad_certificate": None}}


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"tls_verify": "no", "subject": None}, "not requested"),
        ({"tls_verify": "optional", "verified": "no", "subject": None}, "none"),
        ({"tls_verify": "host", "verified": "no", "subject": "CN=x", "reason": "name mismatch"}, "no (CN=x): name mismatch"),
        ({"tls_verify": "optional", "verified": "softfail", "subject": "CN=x", "reason": ""}, "softfail (CN=x)"),
    ],
)
def test_client_certificate_words_from_the_tls_fields(fields: dict[str, Any], words: str) -> None:
    """The client certificate line says what the received event's verdict fields say."""
    assert mailview.client_certificate_words(fields) == words


def test_search_terms_are_substrings_of_their_fields() -> None:
    """Search by recipient (envelope or header), sender, subject; every given term must match; the
    free text (q) looks through the body too, each word anywhere."""
    entry = {"envelope": {"from": "app@example.com", "to": ["bob@example.org"]}, "from": "Shop <shop@example.com>",
             "to": "Bob <bob@example.org>", "cc": "", "subject": "Your invoice", "received_ts": 100.0,
             "tags": ["billing"], "read": False}
    words = search.searchable(entry, "Total due: 42 EUR\nPay by Friday")
    assert search.matches(entry, words, to="BOB@") and search.matches(entry, words, sender="shop@")
    assert search.matches(entry, words, subject="invoice", to="example.org")
    assert not search.matches(entry, words, subject="invoice", to="alice")
    assert search.matches(entry, words, text="app@") and not search.matches(entry, words, text="nothing")
    assert search.matches(entry, words, text="friday  TOTAL") and not search.matches(entry, words, text="friday monday")
    assert search.matches(entry, words, tag="Billing") and not search.matches(entry, words, tag="news")
    assert search.matches(entry, words, since=100.0, until=101.0) and not search.matches(entry, words, since=100.5)
    assert search.matches(entry, words, unread=True) and not search.matches(entry, words, unread=False)


def test_word_index_gives_the_candidates_of_a_query() -> None:
    """A query's candidates: messages with a word containing each of its words; removal forgets."""
    index = search.WordIndex()
    index.add("a", "your invoice from shop@example.com")
    index.add("b", "welcome aboard, bob@example.org")
    assert index.candidates("VOICE") == {"a"} and index.candidates("example") == {"a", "b"}
    assert index.candidates("shop@ example") == {"a"} and index.candidates("voice welcome") == set()
    assert index.candidates("@") is None  # no word in it: every message may match
    index.remove("a", "your invoice from shop@example.com")
    assert index.candidates("example") == {"b"} and index.candidates("invoice") == set()


def test_automatic_tags_by_plus_address_and_rule() -> None:
    """bob+signup@ is tagged signup; a (tag, field, text) rule tags when the field contains the text."""
    entry = {"envelope": {"from": "billing@shop.example", "to": ["bob+Signup@example.org", "eve+bad tag@example.org"]},
             "from": "Shop <billing@shop.example>", "to": "", "cc": "", "subject": "Your Invoice #7"}
    words = search.searchable(entry, "see the attached PDF")
    rules = [("invoice", "subject", "invoice"), ("shop", "from", "BILLING@"), ("pdf", "body", "pdf"), ("x", "to", "carol")]
    assert search.auto_tags(entry, words, rules) == ("invoice", "pdf", "shop", "signup")


def test_dates_in_list_filters() -> None:
    """since/until take a day (until: through its end) or an ISO time, UTC unless said."""
    day = datetime.datetime(2026, 12, 3, tzinfo=datetime.timezone.utc).timestamp()
    assert search.parse_instant("2026-12-03") == day
    assert search.parse_instant("2026-12-03", end_of_day=True) == day + 86400
    assert search.parse_instant("2026-12-03T01:00:00+01:00") == day
    with pytest.raises(ValueError):
        search.parse_instant("yesterday")


# -- the API over HTTP ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_shows_envelope_headers_size_time_and_tls(relay: Any, tmp_path: Any) -> None:
    """A message sent with STARTTLS is listed with its envelope, headers, size, time and TLS facts."""
    await in_thread(send, relay.port, welcome(), "app@example.com", dev_ca_path(str(tmp_path / "state")))
    listing = await in_thread(get_json, relay.http_port, "/api/messages")
    assert listing["count"] == 1
    [entry] = listing["messages"]
    assert entry["envelope"] == {"from": "app@example.com", "to": ["bob@example.org"]}
    assert entry["subject"] == "Welcome, Bob" and entry["from"] == "Shop <shop@example.com>"
    [stored] = (tmp_path / "maildir" / "new").iterdir()
    assert entry["size"] == len(mailview.as_received(stored.read_bytes()))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", entry["received_at"])
    assert entry["receipt"]["tls"] == {"used": True, "protocol": "TLSv1.3", "cipher": entry["receipt"]["tls"]["cipher"],
                                       "client_certificate": "not requested", "lab": None,
                                       "client_accepted_bad_certificate": False}
    assert entry["receipt"]["tls"]["cipher"].startswith("TLS_")
    assert entry["has_html"] and entry["attachments"] == 1


@pytest_twisted.ensureDeferred
async def test_plain_text_receipt_says_no_tls(relay: Any) -> None:
    """Without STARTTLS the TLS facts say so."""
    await in_thread(send, relay.port, welcome())
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    assert entry["receipt"]["tls"]["used"] is False and entry["receipt"]["smtp"] == "ESMTP"


@pytest_twisted.ensureDeferred
async def test_message_stored_without_a_receipt_shows_unknown_facts(relay: Any, tmp_path: Any) -> None:
    """A message in the Maildir with no receipt (stored before receipts were kept) still lists, with its
    envelope and unknown facts of receipt, even though it carries a tlsmta Received: header."""
    old = (b"Return-Path: <app@example.com>\nDelivered-To: bob@example.org\n"
           b"Received: from app.test ([127.0.0.1])\n\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256;\n"
           b"\tclient certificate: not requested)\n\tby localhost (tlsmta) with ESMTPS id Q1; Wed, 25 Nov 2026 21:00:00 +0000\n"
           b"Subject: from before\n\nbody\n")
    store_in_maildir(tmp_path / "maildir", "1700000000.M1P1Q1.host", old)
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    assert entry["subject"] == "from before" and entry["envelope"] == {"from": "app@example.com", "to": ["bob@example.org"]}
    assert entry["receipt"] == mailview.Receipt().as_json()
    one = await in_thread(get_json, relay.http_port, f"/api/messages/{entry['id']}")
    assert one["receipt"]["tls"]["used"] is None


@pytest_twisted.ensureDeferred
async def test_only_the_captured_maildir_keeps_receipts(tmp_path: Any) -> None:
    """The Maildir the page shows gets each message's receipt, durable with it; a mailbox on a
    maildir: route of its own does not."""
    raw = {
        "global": {"hostname": "localhost", "state_dir": str(tmp_path / "state"), "route": f"maildir:{tmp_path / 'maildir'}"},
        "domain": {"mailbox.test": {"route": f"maildir:{tmp_path / 'mailbox'}"}},
        "listener": [dev_listener(name="dev")],
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"endpoint": HTTP_ENDPOINT},
    }
    relay = await RunningRelay(build_config(raw)).start()
    try:
        await in_thread(send, relay.port, welcome(to="bob@example.org, carol@mailbox.test"))  # one message, two Maildirs
        [captured] = os.listdir(tmp_path / "maildir" / "new")  # 250 came: message and receipt are in place
        with open(receipt_path(str(tmp_path / "maildir"), captured)) as f:
            record = json.load(f)
        [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    finally:
        await relay.stop()
    assert record["queue_id"] == entry["receipt"]["queue_id"] and record["tls"] == {"tls": "none"}
    assert (record["helo"], record["peer"], record["esmtp"]) == (entry["receipt"]["helo"], "127.0.0.1", True)
    assert len(os.listdir(tmp_path / "mailbox" / "new")) == 1 and not (tmp_path / "mailbox" / RECEIPTS).exists()
    assert not os.listdir(tmp_path / "maildir" / "tmp")  # no temporary receipt left behind


@pytest_twisted.ensureDeferred
async def test_a_maildir_route_without_the_page_keeps_no_receipts(tmp_path: Any) -> None:
    """An operator delivering to a global maildir: route (no [http]) gets the mail and nothing else:
    receipts are for the page and tlsmta.testing, and each would cost a file and an fsync."""
    relay = await start_relay(tmp_path)
    try:
        await in_thread(send, relay.port, welcome())
    finally:
        await relay.stop()
    assert len(os.listdir(tmp_path / "maildir" / "new")) == 1
    assert not (tmp_path / "maildir" / RECEIPTS).exists()


@pytest_twisted.ensureDeferred
async def test_one_message_raw_parsed_parts_and_attachment(relay: Any) -> None:
    """GET one message: headers, text, parts; raw source as text; the attachment as a download."""
    await in_thread(send, relay.port, welcome())
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    one = await in_thread(get_json, relay.http_port, f"/api/messages/{entry['id']}")
    assert ["Subject", "Welcome, Bob"] in one["headers"] and ["Delivered-To", "bob@example.org"] in one["headers"]
    assert one["text"] == "Hello Bob,\nwelcome aboard.\n"
    types = [(p["content_type"], p["filename"], p["attachment"]) for p in one["parts"]]
    assert types == [("text/plain", None, False), ("text/html", None, False), ("application/pdf", "invoice.pdf", True)]
    pdf = next(p for p in one["parts"] if p["attachment"])
    status, headers, data = await in_thread(web, relay.http_port, "GET", f"/api/messages/{entry['id']}/parts/{pdf['index']}")
    assert status == 200 and data == b"%PDF-1.4 invoice"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''invoice.pdf"


@pytest_twisted.ensureDeferred
async def test_html_part_is_served_sandboxed(relay: Any) -> None:
    """The HTML body comes with Content-Security-Policy: sandbox and no network sources."""
    await in_thread(send, relay.port, welcome())
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    status, headers, body = await in_thread(web, relay.http_port, "GET", f"/api/messages/{entry['id']}/html")
    assert status == 200 and b"<h1>Hello</h1>" in body
    assert headers["content-type"] == "text/html; charset=utf-8"
    policy = [d.strip() for d in headers["content-security-policy"].split(";")]
    assert policy[0] == "sandbox allow-popups allow-popups-to-escape-sandbox" and "default-src 'none'" in policy
    assert "allow-scripts" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


@pytest_twisted.ensureDeferred
async def test_page_uses_a_sandboxed_iframe_and_no_innerhtml(relay: Any) -> None:
    """The page: <iframe sandbox> with no allow-scripts/allow-same-origin (only popups, for links), a strict CSP, and its
    script never assigns innerHTML/outerHTML or calls insertAdjacentHTML/document.write."""
    status, headers, page = await in_thread(web, relay.http_port, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    [iframe] = re.findall(rb"<iframe[^>]*>", page)
    [tokens] = re.findall(rb'\ssandbox="([^"]*)"', iframe)
    assert tokens.split() == [b"allow-popups", b"allow-popups-to-escape-sandbox"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    status, headers, script = await in_thread(web, relay.http_port, "GET", "/static/app.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert not re.search(rb"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert b'setAttribute("sandbox", "allow-popups allow-popups-to-escape-sandbox")' in script


@pytest_twisted.ensureDeferred
async def test_search_by_recipient_sender_subject(relay: Any) -> None:
    """?to= ?from= ?subject= narrow the list; all given terms must match."""
    await in_thread(send, relay.port, welcome("bob@example.org", "Welcome, Bob"), "app@example.com")
    await in_thread(send, relay.port, welcome("alice@example.net", "Your invoice"), "billing@example.com")

    async def subjects(query: str) -> list[str]:
        found = await in_thread(get_json, relay.http_port, f"/api/messages?{query}")
        return sorted(m["subject"] for m in found["messages"])

    assert await subjects("to=alice") == ["Your invoice"]
    assert await subjects("from=app%40example.com") == ["Welcome, Bob"]
    assert await subjects("subject=welcome") == ["Welcome, Bob"]
    assert await subjects("to=example&subject=invoice") == ["Your invoice"]
    assert await subjects("q=example") == ["Welcome, Bob", "Your invoice"]
    assert await subjects("to=nobody") == []


@pytest_twisted.ensureDeferred
async def test_delete_one_and_all(relay: Any, tmp_path: Any) -> None:
    """DELETE one removes its file; DELETE all empties the Maildir; unknown ids are 404."""
    for n in range(3):
        await in_thread(send, relay.port, welcome(subject=f"n{n}"))
    first, *_ = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    [first_file] = [p for p in (tmp_path / "maildir" / "new").iterdir() if first["id"].encode() in p.read_bytes()]
    status, _, body = await in_thread(web, relay.http_port, "DELETE", f"/api/messages/{first['id']}")
    assert status == 200 and json.loads(body) == {"deleted": 1}
    assert not first_file.exists()
    assert not os.path.exists(receipt_path(str(tmp_path / "maildir"), first_file.name))  # its receipt went with it
    assert (await in_thread(get_json, relay.http_port, "/api/messages"))["count"] == 2
    status, _, body = await in_thread(web, relay.http_port, "GET", f"/api/messages/{first['id']}")
    assert status == 404 and json.loads(body) == {"error": "no such message"}
    status, _, body = await in_thread(web, relay.http_port, "DELETE", "/api/messages")
    assert status == 200 and json.loads(body) == {"deleted": 2}
    assert list((tmp_path / "maildir" / "new").iterdir()) == []
    assert list((tmp_path / "maildir" / RECEIPTS).iterdir()) == []
    status, _, _ = await in_thread(web, relay.http_port, "GET", "/api/messages/..%2F..%2Fstate%2Fdev-ca.key")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_foreign_host_header_is_refused(relay: Any) -> None:
    """DNS rebinding: a request naming another host gets 403 and no data, whatever the path."""
    await in_thread(send, relay.port, welcome())
    for path in ("/api/messages", "/", "/api/dev-ca.pem"):
        status, headers, body = await in_thread(web, relay.http_port, "GET", path, None, {"Host": "rebind.evil.example"})
        assert status == 403 and b"Welcome" not in body and b"CERTIFICATE" not in body
        assert headers["content-type"] == "application/json; charset=utf-8"
    status, _, _ = await in_thread(web, relay.http_port, "DELETE", "/api/messages", None, {"Host": "rebind.evil.example"})
    assert status == 403
    assert (await in_thread(get_json, relay.http_port, "/api/messages"))["count"] == 1
    status, _, _ = await in_thread(web, relay.http_port, "GET", "/api/messages", None, {"Host": "localhost:8025"})
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_a_page_of_another_origin_cannot_change_anything(relay: Any) -> None:
    """CSRF: a cross-site form POST (text/plain) cannot start the link check, and no request with a foreign
    Origin may change the relay, even one a browser would let through; the page's own origin may."""
    await in_thread(send, relay.port, welcome())
    message_id = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"][0]["id"]
    linkcheck = f"/api/messages/{message_id}/linkcheck"
    form = {"Content-Type": "text/plain"}
    status, _, _ = await in_thread(web, relay.http_port, "POST", linkcheck, b"x=1", form)
    assert status == 415
    host = f"127.0.0.1:{relay.http_port}"
    for origin in ("http://evil.example", "null", "http://localhost:3000", f"http://{host}.evil.example"):
        foreign = {"Content-Type": "application/json", "Origin": origin}
        status, _, _ = await in_thread(web, relay.http_port, "POST", linkcheck, b"{}", foreign)
        assert status == 403, origin
        status, _, _ = await in_thread(web, relay.http_port, "DELETE", "/api/messages", None, foreign)
        assert status == 403, origin
    assert (await in_thread(get_json, relay.http_port, "/api/messages"))["count"] == 1
    status, _, _ = await in_thread(web, relay.http_port, "GET", "/api/messages", None, {"Origin": "http://evil.example"})
    assert status == 200  # reading is the browser's to refuse (no CORS header is ever sent)
    own = {"Content-Type": "application/json", "Origin": f"http://{host}"}
    status, _, answer = await in_thread(web, relay.http_port, "POST", linkcheck, b"{}", own)
    assert status == 200 and "links" in json.loads(answer)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_a_bad_request(relay: Any) -> None:
    """A body of nested arrays gets 400 like any bad JSON, not a 500 with a traceback in the log."""
    status, _, answer = await in_thread(web, relay.http_port, "PUT", "/api/tls-lab", b"[" * 60_000,
                                        {"Content-Type": "application/json"})
    assert (status, json.loads(answer)) == (400, {"error": "body is not valid JSON"})


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_largest_a_route_takes_is_refused_as_it_arrives(relay: Any) -> None:
    """413 as soon as Content-Length says more than the send API takes, before the body is read."""
    head = (f"POST /api/send HTTP/1.1\r\nHost: 127.0.0.1:{relay.http_port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 40}\r\n\r\n").encode()
    answer = await in_thread(partial_request, relay.http_port, head, [b"{" * 1024])
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


@pytest_twisted.ensureDeferred
async def test_allowed_hosts_admits_a_configured_name(tmp_path: Any) -> None:
    """[http] allowed_hosts lets a named host through."""
    running = await web_relay(tmp_path, allowed_hosts=["devbox.internal"])
    try:
        status, _, _ = await in_thread(web, running.http_port, "GET", "/api/messages", None, {"Host": "devbox.internal:8025"})
        assert status == 200
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_dev_ca_download_is_the_dev_ca(relay: Any, tmp_path: Any) -> None:
    """/api/dev-ca.pem is the state_dir's dev CA, as a download."""
    status, headers, pem = await in_thread(web, relay.http_port, "GET", "/api/dev-ca.pem")
    assert status == 200 and pem == (tmp_path / "state" / "dev-ca.pem").read_bytes()
    assert headers["content-type"] == "application/x-pem-file"
    assert headers["content-disposition"] == 'attachment; filename="tlsmta-dev-ca.pem"'


@pytest_twisted.ensureDeferred
async def test_tls_lab_switch_over_the_api(relay: Any, tmp_path: Any) -> None:
    """PUT /api/tls-lab switches the STARTTLS listener; it needs a JSON body (no cross-site forms)."""
    ca = dev_ca_path(str(tmp_path / "state"))
    body = json.dumps({"mode": "expired"}).encode()
    status, _, answer = await in_thread(web, relay.http_port, "PUT", "/api/tls-lab", body, {"Content-Type": "text/plain"})
    assert status == 415
    status, _, answer = await in_thread(web, relay.http_port, "PUT", "/api/tls-lab", body, {"Content-Type": "application/json"})
    assert status == 200
    state = json.loads(answer)
    assert state["listeners"] == [{"name": "dev", "tls": "starttls", "tls_lab": "expired", "port": relay.port}]
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        await in_thread(send, relay.port, welcome(), "app@example.com", ca)
    bad = json.dumps({"mode": "nonsense"}).encode()
    status, _, answer = await in_thread(web, relay.http_port, "PUT", "/api/tls-lab", bad, {"Content-Type": "application/json"})
    assert status == 400 and b"mode must be one of" in answer
    off = json.dumps({"mode": None}).encode()
    status, _, _ = await in_thread(web, relay.http_port, "PUT", "/api/tls-lab", off, {"Content-Type": "application/json"})
    assert status == 200
    await in_thread(send, relay.port, welcome(), "app@example.com", ca)


@pytest_twisted.ensureDeferred
async def test_events_stream_announces_new_mail(relay: Any) -> None:
    """GET /api/events is a Server-Sent Events stream; a message received sends `event: changes` with
    its list entry, so the page need not refetch the list."""

    def listen_then_send() -> list[str]:
        conn = http.client.HTTPConnection("127.0.0.1", relay.http_port, timeout=CLIENT_TIMEOUT)
        try:
            conn.request("GET", "/api/events")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
            lines = []
            while (line := response.fp.readline().decode().strip()) != "event: hello":
                lines.append(line)
            send(relay.port, welcome())
            while (line := response.fp.readline().decode().strip()) != "event: changes":
                lines.append(line)
            lines.append(response.fp.readline().decode().strip())
            return lines
        finally:
            conn.close()

    lines = await in_thread(listen_then_send)
    assert lines[-1].startswith("data: ")
    changes = json.loads(lines[-1].removeprefix("data: "))
    [entry] = changes["added"]
    assert entry["subject"] == "Welcome, Bob" and entry["envelope"]["to"] == ["bob@example.org"]
    assert changes["removed"] == [] and entry == (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"][0]


@pytest_twisted.ensureDeferred
async def test_unknown_routes_and_methods(relay: Any) -> None:
    """Unknown paths are 404, wrong methods 405, both as JSON."""
    status, headers, _ = await in_thread(web, relay.http_port, "GET", "/api/nothing")
    assert status == 404 and headers["content-type"].startswith("application/json")
    status, _, _ = await in_thread(web, relay.http_port, "POST", "/api/messages", b"{}", {"Content-Type": "application/json"})
    assert status == 405


def test_http_endpoint_needs_a_maildir() -> None:
    """[http] endpoint with a route that is not maildir: and no [http] maildir is a config error."""
    from tlsmta.config import _loader as configuration

    with pytest.raises(configuration.ConfigError) as caught:
        build_config({"http": {"endpoint": HTTP_ENDPOINT}}, "web.toml")
    assert "web.toml: [http] maildir: is required when the global route is not maildir:PATH" in str(caught.value)


@pytest.mark.parametrize("headers", [
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\nFrom: =?iso-8859-1?q?J=F6rg?= <j@example.com>\nTo: a@example.org,\n b@example.org\n",
    b"Subject: Gr\xfc\xdfe raw 8-bit\nFrom: plain@example.com\nCc: c@example.org\n",
    b"Subject: multipart\nContent-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/html\n\n<p>hi</p>\n--b--\n",
])
def test_the_index_parse_lists_what_the_full_parse_shows(headers: bytes) -> None:
    """The index parses with compat32 for speed: its list entry and body text equal the full (policy.default) parse's."""
    data = b"Return-Path: <a@example.com>\nDelivered-To: b@example.org\n" + headers + b"\nbody text\n"
    fast, full = mailview.parse_for_index(data), mailview.parse_message(data)
    receipt = mailview.Receipt()
    assert mailview.summary_of("k", fast, data, 1.0, receipt) == mailview.summary_of("k", full, data, 1.0, receipt)
    assert mailview.body_text(fast) == mailview.body_text(full)
