"""The dev relay's capture store and list API: ids, bytes as received, paging, filters, read/unread,
tags and pruning, over real SMTP and HTTP on loopback."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest
import pytest_twisted
from e2e import CLIENT_TIMEOUT, in_thread
from test_webui import get_json, web, web_relay

from tlsmta.config import ConfigError
from tlsmta.devrelay import CapturedMail
from tlsmta.testing import build_config


def send_raw(port: int, sender: str, recipients: list[str], data: bytes) -> str:
    """Send ``data`` as it is; the queue id of the ``250 ... queued as ID`` reply."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo()
        client.mail(sender)
        for recipient in recipients:
            client.rcpt(recipient)
        code, reply = client.data(data)
        client.quit()
    finally:
        client.close()
    assert code == 250, reply
    return reply.decode().rpartition("queued as ")[2]


LATIN1 = (b"From: J\xf6rg <joerg@example.com>\r\nTo: bob@example.org\r\nSubject: Gr\xfc\xdfe\r\n"
          b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
          b"Content-Transfer-Encoding: 8bit\r\n\r\nSch\xf6ne Gr\xfc\xdfe\r\n..dot-stuffed line\r\n")


@pytest_twisted.async_yield_fixture
async def relay(tmp_path: Any) -> Any:
    running = await web_relay(tmp_path, keep_messages=3, tag_rules=["invoice=subject:invoice"])
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_api_id_is_the_queue_id_the_smtp_reply_gave(relay: Any) -> None:
    """`250 ... queued as X` then GET /api/messages/X is that message, also with two recipients."""
    queue_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org", "carol@example.org"],
                               b"Subject: two\r\n\r\nbody\r\n")
    assert ";" not in queue_id
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    assert entry["id"] == queue_id == entry["receipt"]["queue_id"]
    one = await in_thread(get_json, relay.http_port, f"/api/messages/{queue_id}")
    assert one["subject"] == "two" and one["envelope"]["to"] == ["bob@example.org", "carol@example.org"]


@pytest_twisted.ensureDeferred
async def test_raw_is_the_bytes_as_received_and_the_source_view_decodes_its_charset(relay: Any) -> None:
    """/raw is the message as the client sent it (CRLF, no Return-Path/Delivered-To/Received added),
    a message/rfc822 download; /source is that text decoded with the message's charset."""
    queue_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"], LATIN1)
    status, headers, raw = await in_thread(web, relay.http_port, "GET", f"/api/messages/{queue_id}/raw")
    assert status == 200 and headers["content-type"] == "message/rfc822"
    assert headers["content-disposition"] == f"attachment; filename*=UTF-8''{queue_id}.eml"
    assert raw == LATIN1  # smtplib stuffed the leading dot once more, the relay took it off
    status, headers, text = await in_thread(web, relay.http_port, "GET", f"/api/messages/{queue_id}/source")
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    assert "Subject: Grüße" in text.decode("utf-8") and "Schöne Grüße" in text.decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_pages_filters_and_body_search(relay: Any) -> None:
    """limit/start page the list (newest first, count is every match); q searches the body;
    tag, unread and since/until filter; bad values are 400."""
    ids = [await in_thread(send_raw, relay.port, "app@example.com", [f"user{n}@example.org"],
                           f"Subject: n{n}\r\n\r\nbody word{n}\r\n".encode()) for n in range(3)]
    first = await in_thread(get_json, relay.http_port, "/api/messages?limit=2")
    assert first["count"] == 3 and [m["id"] for m in first["messages"]] == ids[::-1][:2]
    rest = await in_thread(get_json, relay.http_port, "/api/messages?limit=2&start=2")
    assert rest["start"] == 2 and [m["id"] for m in rest["messages"]] == [ids[0]]
    found = await in_thread(get_json, relay.http_port, "/api/messages?q=WORD1")
    assert [m["id"] for m in found["messages"]] == [ids[1]]
    day = first["messages"][0]["received_at"][:10]
    assert (await in_thread(get_json, relay.http_port, f"/api/messages?since={day}&until={day}"))["count"] == 3
    assert (await in_thread(get_json, relay.http_port, "/api/messages?until=2000-01-01"))["count"] == 0
    assert (await in_thread(get_json, relay.http_port, "/api/messages?unread=true"))["count"] == 3
    for bad in ("limit=0", "limit=x", "start=-1", "since=yesterday", "unread=maybe"):
        status, _, body = await in_thread(web, relay.http_port, "GET", f"/api/messages?{bad}")
        assert status == 400 and bad.partition("=")[0] in json.loads(body)["error"]


def patch(port: int, message_id: str, body: Any) -> tuple[int, Any]:
    status, _, answer = web(port, "PATCH", f"/api/messages/{message_id}", json.dumps(body).encode(),
                            {"Content-Type": "application/json"})
    return status, json.loads(answer)


@pytest_twisted.ensureDeferred
async def test_read_unread_and_tags(relay: Any, tmp_path: Any) -> None:
    """PATCH read sets the Maildir S flag (a mail client sees it); tags are manual, by plus-address
    and by [http] tag_rules; the list filters by them."""
    queue_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob+signup@example.org"],
                               b"Subject: Your invoice\r\n\r\nbody\r\n")
    [entry] = (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]
    assert entry["read"] is False and entry["tags"] == ["invoice", "signup"]
    status, entry = await in_thread(patch, relay.http_port, queue_id, {"read": True, "tags": ["Urgent"]})
    assert status == 200 and entry["read"] is True and entry["tags"] == ["invoice", "signup", "urgent"]
    [stored] = (tmp_path / "maildir" / "cur").iterdir()
    assert stored.name.endswith(":2,S") and not list((tmp_path / "maildir" / "new").iterdir())
    assert (await in_thread(get_json, relay.http_port, "/api/messages?tag=urgent"))["count"] == 1
    assert (await in_thread(get_json, relay.http_port, "/api/messages?unread=true"))["count"] == 0
    assert CapturedMail(str(tmp_path / "maildir")).summary(queue_id)["tags"] == ["signup", "urgent"]  # kept on disk
    status, entry = await in_thread(patch, relay.http_port, queue_id, {"read": False, "tags": []})
    assert entry["read"] is False and entry["tags"] == ["invoice", "signup"]
    for bad in ({"read": "yes"}, {"tags": ["a b"]}, {"tags": "x"}, {"other": 1}, {}):
        status, answer = await in_thread(patch, relay.http_port, queue_id, bad)
        assert status == 400, bad


@pytest_twisted.ensureDeferred
async def test_pruning_keeps_the_newest(relay: Any) -> None:
    """[http] keep_messages = 3: the fourth arrival deletes the oldest."""
    ids = [await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"],
                           f"Subject: n{n}\r\n\r\nbody\r\n".encode()) for n in range(4)]
    listed = [m["id"] for m in (await in_thread(get_json, relay.http_port, "/api/messages"))["messages"]]
    assert listed == ids[::-1][:3]


def test_keep_messages_and_tag_rules_are_checked_by_the_loader() -> None:
    """A bad [http] keep_messages or tag rule names file, table and key."""
    with pytest.raises(ConfigError) as caught:
        build_config({"http": {"keep_messages": -1, "tag_rules": ["no rule"]}}, "dev.toml")
    assert "dev.toml: [http] keep_messages: must be at least 0" in str(caught.value)
    assert "dev.toml: [http] tag_rules: each rule must be \"TAG=FIELD:TEXT\"" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_html_view_inlines_cid_images_and_opens_links_in_a_new_tab(relay: Any) -> None:
    """cid: references become data: URLs (the frame's CSP allows only those), the inline part is
    not an attachment, and links get a new tab (<base target=_blank>) instead of replacing the mail."""
    message = EmailMessage()
    message["Subject"] = "logo"
    message.set_content("text")
    message.add_alternative('<a href="http://127.0.0.1/">home</a><img src="cid:logo@shop">', subtype="html")
    message.get_payload()[1].add_related(b"GIF89a-logo", maintype="image", subtype="gif", cid="<logo@shop>")
    queue_id = await in_thread(send_raw, relay.port, "app@example.com", ["bob@example.org"], message.as_bytes(policy=SMTP))
    status, _, html = await in_thread(web, relay.http_port, "GET", f"/api/messages/{queue_id}/html")
    assert status == 200 and html.startswith(b'<base target="_blank">')
    assert b'<img src="data:image/gif;base64,R0lGODlhLWxvZ28=">' in html and b"cid:" not in html
    one = await in_thread(get_json, relay.http_port, f"/api/messages/{queue_id}")
    [gif] = [p for p in one["parts"] if p["content_type"] == "image/gif"]
    assert gif["content_id"] == "logo@shop" and gif["attachment"] is False


def test_a_message_moved_to_cur_meanwhile_is_still_read(tmp_path: Any) -> None:
    """A flag change (a mail client, or the page's PATCH read in another disk thread) renames the file
    from new/ to cur/ after the index saw it: reading it finds it where it went, not a 404."""
    maildir = tmp_path / "maildir"
    mail = CapturedMail(str(maildir))
    mail.ensure()
    (maildir / "new" / "1700000000.M1P1Q1.host").write_bytes(b"Delivered-To: bob@example.org\nSubject: moved\n\nbody\n")
    [entry] = mail.summaries()
    (maildir / "new" / "1700000000.M1P1Q1.host").rename(maildir / "cur" / "1700000000.M1P1Q1.host:2,S")
    assert mail.raw(entry["id"])[0].endswith(b"Subject: moved\n\nbody\n")
    assert mail.summary(entry["id"])["read"] is True
