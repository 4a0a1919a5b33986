"""A message's size, MIME structure and header problems (tlsmta.devrelay._checks_mime), no reactor."""

from __future__ import annotations

from email.message import EmailMessage

from tlsmta.devrelay._checks_mime import MAX_LINE, mime_report


def _good() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "app@example.org"
    message["To"] = "bob@example.org"
    message["Subject"] = "Welcome"
    message["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    message["Message-ID"] = "<1@example.org>"
    message.set_content("Hello Bob")
    message.add_alternative("<p>Hello <b>Bob</b></p>", subtype="html")
    return message


def _codes(data: bytes) -> list[str]:
    return [p["code"] for p in mime_report(data)["problems"]]


def test_a_well_formed_message_has_no_problems_and_its_structure() -> None:
    """multipart/alternative with text and HTML: no problems; the tree numbers parts like the API's parts/N."""
    data = b"Return-Path: <app@example.org>\nDelivered-To: bob@example.org\n" + _good().as_bytes()
    report = mime_report(data)
    assert report["problems"] == []
    assert report["size"] == len(_good().as_bytes())  # the message as received, not the Maildir's lines
    tree = report["structure"]
    assert tree["content_type"] == "multipart/alternative" and tree["index"] == 0
    assert [(p["index"], p["content_type"], p["charset"]) for p in tree["parts"]] == [
        (1, "text/plain", "utf-8"), (2, "text/html", "utf-8")]
    assert tree["parts"][0]["size"] == len(b"Hello Bob\n")


def test_missing_date_message_id_from_and_subject() -> None:
    """Date and From are required (errors), Message-ID and Subject advised (warnings)."""
    report = mime_report(b"To: bob@example.org\n\nhi\n")
    found = {p["code"]: p["severity"] for p in report["problems"]}
    assert found == {"missing-date": "error", "missing-from": "error", "missing-message-id": "warning",
                     "missing-subject": "warning"}
    assert [p["severity"] for p in report["problems"]] == ["error", "error", "warning", "warning"]


def test_bad_date_and_duplicate_headers() -> None:
    """An unparseable Date and two From: headers."""
    message = _good()
    message.replace_header("Date", "yesterday")
    data = message.as_bytes().replace(b"From: app@example.org\n", b"From: app@example.org\nFrom: other@example.org\n")
    codes = _codes(data)
    assert "bad-date" in codes and "duplicate-header" in codes
    assert "header-defect" not in codes  # the Date is reported once, in our words


def test_lines_over_998_octets() -> None:
    """A body line of 999 octets is an error naming the count and the first line; 998 is fine."""
    ok = _good().as_bytes().replace(b"Hello Bob", b"x" * MAX_LINE)
    assert "line-too-long" not in _codes(ok)
    long = ok.replace(b"x" * MAX_LINE, b"x" * (MAX_LINE + 1))
    [problem] = [p for p in mime_report(long)["problems"] if p["code"] == "line-too-long"]
    assert problem["message"].startswith("1 line(s) longer than 998 octets")


def test_eight_bit_bytes_where_seven_bit_was_declared() -> None:
    """Raw UTF-8 in a part without Content-Transfer-Encoding (7bit by default) and in a header."""
    data = ("From: a@example.org\nTo: b@example.org\nSubject: Grüße\nDate: Thu, 03 Dec 2026 10:00:00 +0000\n"
            "Message-ID: <2@example.org>\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n").encode()
    codes = _codes(data)
    assert "8bit-in-7bit" in codes and "8bit-header" in codes
    assert "8bit-in-7bit" not in _codes(data.replace(b"charset=utf-8\n", b"charset=utf-8\nContent-Transfer-Encoding: 8bit\n"))


def test_charsets_unknown_and_wrong() -> None:
    """An unknown charset, and bytes that are not the declared charset."""
    head = b"From: a@example.org\nSubject: s\nDate: Thu, 03 Dec 2026 10:00:00 +0000\nMessage-ID: <3@x>\n" \
           b"Content-Transfer-Encoding: 8bit\n"
    assert "unknown-charset" in _codes(head + b"Content-Type: text/plain; charset=x-klingon\n\nhi\n")
    assert "bad-charset" in _codes(head + b"Content-Type: text/plain; charset=utf-8\n\n\xff\xfe\n")
    assert "missing-charset" in _codes(head + b"Content-Type: text/plain\n\n\xc3\xa9\n")


def test_unknown_encoding_broken_multipart_and_html_only() -> None:
    """A made-up Content-Transfer-Encoding, a multipart whose boundary never appears, an HTML-only message."""
    head = b"From: a@example.org\nSubject: s\nDate: Thu, 03 Dec 2026 10:00:00 +0000\nMessage-ID: <4@x>\n"
    assert "unknown-encoding" in _codes(head + b"Content-Transfer-Encoding: x-uuencode\n\nbegin\n")
    broken = head + b'Content-Type: multipart/mixed; boundary="B"\n\nno parts here\n'
    assert "mime-defect" in _codes(broken)
    html_only = head + b"Content-Type: text/html; charset=utf-8\n\n<p>hi</p>\n"
    assert "html-only" in _codes(html_only)


def test_send_api_messages_are_well_formed() -> None:
    """The send API's message (HTML only, or text with HTML and an inline cid: image and an attachment)
    has Date and Message-ID and no problems; Bcc stays out of the headers."""
    import base64

    from tlsmta.devrelay._send import build_message

    html_only = build_message({"from": "a@example.org", "to": "b@example.org", "subject": "s", "html": "<p>x</p>"},
                              "relay.test")
    assert {p["code"] for p in mime_report(html_only.data)["problems"]} == {"html-only"}
    full = build_message({
        "from": "App <a@example.org>", "to": ["b@example.org"], "bcc": ["c@example.org"], "subject": "Grüße",
        "text": "Grüße", "html": '<img src="cid:logo">',
        "attachments": [{"filename": "logo.png", "content_type": "image/png", "inline": True, "content_id": "logo",
                         "content": base64.b64encode(b"PNG").decode()},
                        {"filename": "a.pdf", "content_type": "application/pdf", "content": "JVBERg=="}],
    }, "relay.test")
    assert full.sender == "a@example.org" and full.recipients == ("b@example.org", "c@example.org")
    report = mime_report(full.data)
    assert report["problems"] == []
    assert b"Bcc" not in full.data and b"@relay.test>" in full.data
    related = report["structure"]["parts"][0]["parts"][1]
    assert related["content_type"] == "multipart/related"
    assert [p["content_type"] for p in related["parts"]] == ["text/html", "image/png"]
