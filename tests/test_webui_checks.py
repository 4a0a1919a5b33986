"""The dev relay's checks, link check, webhook and send API over real HTTP on loopback, after real SMTP.

The link targets and the webhook receiver are twisted.web servers the test
starts on loopback ports of its own; the relay's HTTP client reaches them
for real.
"""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread
from test_webui import get_json, send, web, web_relay
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

WAIT = 20.0  # seconds a test waits for an event before it fails


class Target(Resource):
    """Link targets: /ok 200, /gone 404, /moved 301, /no-head 405 to HEAD and 200 to GET; every request recorded.

    As a webhook receiver, POSTs are recorded with their bodies; the first ``refuse`` of them get 500."""

    isLeaf = True

    def __init__(self, refuse: int = 0):
        super().__init__()
        self.requests: list[tuple[str, str]] = []
        self.posts: list[dict[str, Any]] = []
        self.refuse = refuse
        self.waiting: list[tuple[int, Deferred[None]]] = []

    def render(self, request: Request) -> bytes:
        method, path = request.method.decode(), request.path.decode()
        self.requests.append((method, path))
        if method == "POST":
            self.posts.append(json.loads(request.content.read()))
            self._arrived()
            if len(self.posts) <= self.refuse:
                request.setResponseCode(500)
            return b"ok"
        if path == "/gone":
            request.setResponseCode(404)
        elif path == "/moved":
            request.setResponseCode(301)
            request.setHeader(b"location", b"/ok")
        elif path == "/no-head" and method == "HEAD":
            request.setResponseCode(405)
        return b"body " * 1000

    def _arrived(self) -> None:
        for count, d in list(self.waiting):
            if len(self.posts) >= count:
                self.waiting.remove((count, d))
                reactor.callLater(0, d.callback, None)  # after this response is written

    def posted(self, count: int) -> Deferred[None]:
        """Fires when ``count`` POSTs have arrived (times out after WAIT)."""
        d: Deferred[None] = Deferred()
        self.waiting.append((count, d))
        self._arrived()
        return d.addTimeout(WAIT, reactor)


@pytest_twisted.async_yield_fixture
async def target() -> Any:
    resource = Target()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.port = port.getHost().port
    yield resource
    await port.stopListening()


@pytest.fixture
def webhook_log() -> Any:
    """The webhook's log lines, as text, while the test runs."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "tlsmta.webhook":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def newsletter(target_port: int, subject: str = "Newsletter") -> EmailMessage:
    """An HTML mail with what some clients drop (<video>, display:flex, @media) and links to the target."""
    m = EmailMessage()
    m["From"] = "news@example.com"
    m["To"] = "bob@example.org"
    m["Subject"] = subject
    base = f"http://127.0.0.1:{target_port}"
    m.set_content(f"Read it online: {base}/moved\n")
    m.add_alternative(
        f'<style>@media (max-width: 600px) {{ .c {{ width: 100% }} }}</style>'
        f'<div style="display: flex"><a href="{base}/ok">ok</a> <a href="{base}/gone">gone</a>'
        f' <a href="{base}/no-head">no head</a> <a href="https://elsewhere.example/x">elsewhere</a>'
        f'<img src="cid:logo"><video src="{base}/v.mp4"></video></div>',
        subtype="html",
    )
    return m


async def first_id(relay: Any) -> str:
    listing = await in_thread(get_json, relay.http_port, "/api/messages")
    return str(listing["messages"][0]["id"])


def post_json(port: int, path: str, value: Any) -> tuple[int, Any]:
    status, _, body = web(port, "POST", path, json.dumps(value).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_checks_list_size_structure_problems_html_support_and_links(tmp_path: Any, target: Target) -> None:
    """GET .../checks: the MIME tree, the missing Date and Message-ID, the HTML features clients drop,
    and each link with why it is not checked; nothing is requested."""
    relay = await web_relay(tmp_path, link_check_hosts=["127.0.0.1"])
    try:
        await in_thread(send, relay.port, newsletter(target.port))
        message_id = await first_id(relay)
        checks = await in_thread(get_json, relay.http_port, f"/api/messages/{message_id}/checks")
    finally:
        await relay.stop()
    assert checks["structure"]["content_type"] == "multipart/alternative"
    assert [p["content_type"] for p in checks["structure"]["parts"]] == ["text/plain", "text/html"]
    codes = {p["code"] for p in checks["problems"]}
    assert {"missing-date", "missing-message-id"} <= codes  # smtplib adds neither
    features = {p["feature"]: p for p in checks["html"]}
    assert {"html-video", "css-display-flex", "css-at-media"} <= set(features)
    assert "Outlook (Windows)" in features["css-display-flex"]["unsupported"]
    base = f"http://127.0.0.1:{target.port}"
    links = {link["url"]: link for link in checks["links"]}
    assert links[f"{base}/ok"] == {"url": f"{base}/ok", "kind": "link", "skipped": None}
    assert links["https://elsewhere.example/x"]["skipped"] == "host not in [http] link_check_hosts"
    assert links["cid:logo"]["skipped"] == "not an http(s) URL"
    assert links[f"{base}/moved"]["kind"] == "text"
    assert target.requests == []  # the checks never click a link


async def link_check(tmp_path: Any, target: Target, **http: Any) -> tuple[int, Any]:
    """The newsletter sent over SMTP to a relay with these [http] options, then POST .../linkcheck."""
    relay = await web_relay(tmp_path, **http)
    try:
        await in_thread(send, relay.port, newsletter(target.port))
        message_id = await first_id(relay)
        status, answer = await in_thread(post_json, relay.http_port, f"/api/messages/{message_id}/linkcheck", {})
    finally:
        await relay.stop()
    return status, answer


@pytest_twisted.ensureDeferred
async def test_link_check_asks_allowed_hosts_only_when_asked(tmp_path: Any, target: Target) -> None:
    """POST .../linkcheck: each allowed link's status (HEAD; GET after a 405; redirects reported, not followed);
    other hosts are not requested."""
    status, answer = await link_check(tmp_path, target, link_check_hosts=["127.0.0.1"])
    assert status == 200
    base = f"http://127.0.0.1:{target.port}"
    found = {link["url"]: (link["status"], link["location"], link["error"]) for link in answer["links"]}
    assert found[f"{base}/ok"] == (200, None, None)
    assert found[f"{base}/gone"] == (404, None, None)
    assert found[f"{base}/moved"] == (301, "/ok", None)
    assert found[f"{base}/no-head"] == (200, None, None)
    assert found["https://elsewhere.example/x"] == (None, None, None)
    assert sorted(target.requests) == sorted([("HEAD", "/ok"), ("HEAD", "/gone"), ("HEAD", "/moved"),
                                              ("HEAD", "/no-head"), ("GET", "/no-head")])


@pytest_twisted.ensureDeferred
async def test_link_check_requests_nothing_by_default(tmp_path: Any, target: Target) -> None:
    """With no [http] link_check_hosts every link is skipped and the target sees no request."""
    status, answer = await link_check(tmp_path, target)
    assert status == 200 and answer["links"]
    assert all(link["skipped"] and link["status"] is None for link in answer["links"])
    assert target.requests == []


@pytest_twisted.ensureDeferred
async def test_checks_of_an_unknown_message_is_404(tmp_path: Any) -> None:
    """No such id: 404, for the checks and the link check."""
    relay = await web_relay(tmp_path)
    try:
        status, _, _ = await in_thread(web, relay.http_port, "GET", "/api/messages/nope/checks")
        posted, _ = await in_thread(post_json, relay.http_port, "/api/messages/nope/linkcheck", {})
    finally:
        await relay.stop()
    assert (status, posted) == (404, 404)


@pytest_twisted.ensureDeferred
async def test_webhook_posts_each_arrival_and_retries_a_refusal(tmp_path: Any, target: Target,
                                                                 webhook_log: list[str]) -> None:
    """Each message accepted over SMTP is POSTed once as its summary JSON; a 500 is logged and retried."""
    target.refuse = 1
    relay = await web_relay(tmp_path, webhook_url=f"http://127.0.0.1:{target.port}/hook")
    try:
        await in_thread(send, relay.port, newsletter(target.port))
        await target.posted(2)  # refused, then retried
        await in_thread(send, relay.port, newsletter(target.port, "Second"))
        await target.posted(3)
        listing = await in_thread(get_json, relay.http_port, "/api/messages")
    finally:
        await relay.stop()
    assert [post["subject"] for post in target.posts] == ["Newsletter", "Newsletter", "Second"], (webhook_log, target.requests)
    assert {post["id"] for post in target.posts} == {entry["id"] for entry in listing["messages"]}
    assert target.posts[0] == next(e for e in listing["messages"] if e["subject"] == "Newsletter")
    assert any("failed (HTTP 500); retrying in 1.0s" in line for line in webhook_log), webhook_log


@pytest_twisted.ensureDeferred
async def test_webhook_receiver_down_never_delays_smtp(tmp_path: Any, webhook_log: list[str]) -> None:
    """With nothing listening at the webhook URL, mail is still accepted at once and the failure is logged."""
    placeholder = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    closed = placeholder.getHost().port
    await placeholder.stopListening()  # a port nobody listens on
    relay = await web_relay(tmp_path, webhook_url=f"http://127.0.0.1:{closed}/hook")
    try:
        for _ in range(3):
            await in_thread(send, relay.port, newsletter(1))
        for _ in range(int(WAIT / 0.05)):
            if webhook_log:
                break
            await deferLater(reactor, 0.05, lambda: None)
        listing = await in_thread(get_json, relay.http_port, "/api/messages")
    finally:
        await relay.stop()
    assert listing["count"] == 3
    assert webhook_log and "connection refused" in webhook_log[0].lower(), webhook_log
    assert "retrying in 1.0s" in webhook_log[0]


@pytest.mark.parametrize(
    "body, error",
    [
        ({"to": ["bob@example.org"]}, '"from" is required'),
        ({"from": "app@example.com"}, "no recipients"),
        ({"from": "app@example.com", "to": ["bob@example.org"], "attachments": [{"content": "%%%"}]},
         "attachments[0].content is not base64"),
        ({"from": "app@example.com", "to": ["not an address"]}, "not a valid recipient address"),
        ({"from": "app@example.com", "to": ["bob@example.org"], "headers": {"From": "x@y"}}, "cannot be set there"),
        ({"from": "app@example.com", "to": ["bob@example.org"], "headers": {"X-A\r\nBcc": "x@y"}}, "cannot be set there"),
        ({"from": "app@example.com", "to": ["bob@example.org"], "headers": {"X A": "v"}}, "cannot be set there"),
        ({"from": "app@example.com", "to": ["bob@example.org"], "subject": "hi\r\nBcc: x@y"}, "linefeed or carriage return"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_send_api_refuses_bad_requests(tmp_path: Any, body: dict[str, Any], error: str) -> None:
    """A send request that cannot be made into a message is a 400 naming the field; nothing is stored."""
    relay = await web_relay(tmp_path)
    try:
        status, answer = await in_thread(post_json, relay.http_port, "/api/send", body)
        listing = await in_thread(get_json, relay.http_port, "/api/messages")
    finally:
        await relay.stop()
    assert status == 400 and error in answer["error"], answer
    assert listing["count"] == 0


def queue_done(relay: Any) -> Deferred[dict[str, Any]]:
    """Fires with the fields of the relay's next queue_done event (times out after WAIT)."""
    d: Deferred[dict[str, Any]] = Deferred()

    def sink(event: str, fields: dict[str, Any]) -> None:
        if event == "queue_done" and not d.called:
            relay.service.events.remove_sink(sink)
            reactor.callLater(0, d.callback, fields)

    relay.service.events.add_sink(sink)
    return d.addTimeout(WAIT, reactor)


@pytest_twisted.ensureDeferred
async def test_send_api_message_is_captured_like_smtp_mail(tmp_path: Any, target: Target) -> None:
    """POST /api/send: 202 once spooled; the queue delivers it into the captured Maildir, where the list,
    the detail (text, HTML, attachment, Bcc only in the envelope) and the webhook see it."""
    import base64

    relay = await web_relay(tmp_path, webhook_url=f"http://127.0.0.1:{target.port}/hook")
    try:
        delivered = queue_done(relay)
        status, answer = await in_thread(post_json, relay.http_port, "/api/send", {
            "from": "Shop <shop@example.com>", "to": ["bob@example.org"], "bcc": ["audit@example.org"],
            "subject": "Your invoice", "text": "Invoice attached.", "html": "<p>Invoice <b>attached</b>.</p>",
            "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf",
                             "content": base64.b64encode(b"%PDF-1.4 invoice").decode()}],
        })
        assert status == 202, answer
        assert answer["to"] == ["bob@example.org", "audit@example.org"]
        assert (await delivered)["delivered"] == 2
        await target.posted(1)
        [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
        detail = await in_thread(get_json, relay.http_port, f"/api/messages/{entry['id']}")
        checks = await in_thread(get_json, relay.http_port, f"/api/messages/{entry['id']}/checks")
    finally:
        await relay.stop()
    assert entry["id"] == answer["queued_as"]  # the list's ids are queue ids, the send API's too
    assert entry["envelope"] == {"from": "shop@example.com", "to": ["bob@example.org", "audit@example.org"]}
    assert entry["subject"] == "Your invoice" and entry["attachments"] == 1 and entry["has_html"]
    assert detail["text"] == "Invoice attached.\n"
    assert "audit@example.org" not in dict(detail["headers"]).get("To", "") and "Bcc" not in dict(detail["headers"])
    assert [p["filename"] for p in detail["parts"] if p["attachment"]] == ["invoice.pdf"]
    assert [post["subject"] for post in target.posts] == ["Your invoice"]
    assert checks["problems"] == []  # Date and Message-ID added, all declared 7bit/base64 correctly


@pytest.mark.parametrize(
    "http, expected",
    [
        ('endpoint = "tcp:0:interface=127.0.0.1"\nwebhook_url = "ftp://example.org/x"',
         "[http] webhook_url: must be an http:// or https:// URL with a host, in ASCII (got 'ftp://example.org/x')"),
        ('webhook_url = "http://127.0.0.1:9000/mail"',
         "[http] webhook_url: needs [http] endpoint: the webhook runs with the dev relay's web page"),
        ('endpoint = "tcp:0:interface=127.0.0.1"\nlink_check_hosts = "localhost"',
         "[http] link_check_hosts: must be a list of non-empty strings (got 'localhost')"),
    ],
)
def test_bad_check_options_name_file_table_and_key(tmp_path: Any, capsys: Any, http: str, expected: str) -> None:
    """tlsmta check-config: exit 78 and the problem with file, table and key."""
    from tlsmta.app.cli import main

    path = tmp_path / "dev.toml"
    path.write_text(f'[global]\nroute = "maildir:{tmp_path / "maildir"}"\n[http]\n{http}\n')
    assert main(["check-config", str(path)]) == 78
    assert f"{path}: {expected}" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_webhook_posts_only_what_arrives_after_start(tmp_path: Any, target: Target) -> None:
    """Mail already in the Maildir when the relay starts is not posted; the next arrival is, once."""
    first = await web_relay(tmp_path)
    try:
        await in_thread(send, first.port, newsletter(target.port))
    finally:
        await first.stop()
    relay = await web_relay(tmp_path, webhook_url=f"http://127.0.0.1:{target.port}/hook")
    try:
        await in_thread(send, relay.port, newsletter(target.port, "After start"))
        await target.posted(1)
        listing = await in_thread(get_json, relay.http_port, "/api/messages")
    finally:
        await relay.stop()
    assert listing["count"] == 2
    assert [post["subject"] for post in target.posts] == ["After start"]
