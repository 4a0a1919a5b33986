"""Unit tests for :mod:`tlsmta.delivery._dsn`: RFC 3464 bounces, read back with the email package.

The DSN bytes are parsed with ``email.policy.default`` the way a mail
client would read them, so the tests check what a reader sees rather than
the exact text build_dsn writes.
"""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timezone

import pytest

from tlsmta.config._routes import parse_route
from tlsmta.delivery import _dsn as dsn
from tlsmta.delivery._dsn import MAX_RETURNED_HEADERS, build_dsn, original_headers
from tlsmta.smtp._reply import Reply
from tlsmta.storage._spool import BOUNCED, RecipientState

ARRIVAL = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
NOW = datetime(2025, 3, 6, 12, 0, tzinfo=timezone.utc)
HEADERS = (
    b"Received: from client.example.org by mx.example.net\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <orig-1@example.org>\r\n"
)
BODY = HEADERS + b"\r\nDear Bob,\r\nthe numbers.\r\n"


def rcpt(address: str, last: str) -> RecipientState:
    return RecipientState(address, parse_route("mx"), status=BOUNCED, last=last)


def make(failed, expired=False, sender="alice@example.org", reporting_mta="mx.example.net", headers=HEADERS) -> bytes:
    return build_dsn(
        reporting_mta=reporting_mta,
        message_id="0123456789abc0000a0001.node",
        sender=sender,
        arrival=ARRIVAL,
        failed=failed,
        headers=headers,
        now=NOW,
        expired=expired,
    )


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def status_part(message):
    """(per-message fields, [per-recipient field blocks]) of the message/delivery-status part."""
    part = message.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    return blocks[0], blocks[1:]


# -- structure -----------------------------------------------------------------------------


def test_dsn_is_multipart_report_with_three_parts():
    """The DSN is multipart/report; report-type=delivery-status with the human text,
    the machine-readable status and the original headers, in that order."""
    message = parse(make([rcpt("bob@example.com", "550 5.1.1 no such user")]))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["MIME-Version"] == "1.0"
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not message.defects
    assert all(not p.defects for p in parts)


def test_dsn_addressed_to_original_sender_from_mailer_daemon():
    """To: is the envelope sender of the failed message; From: is the reporting MTA's MAILER-DAEMON."""
    message = parse(make([rcpt("bob@example.com", "550 5.1.1 no such user")]))
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.net"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"]
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith("@mx.example.net>")


def test_per_message_fields():
    """The status part names the reporting MTA (dns; host) and the arrival date."""
    per_message, _ = status_part(parse(make([rcpt("bob@example.com", "550 5.1.1 no such user")])))
    assert per_message["Reporting-MTA"] == "dns; mx.example.net"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL


def test_one_status_block_per_failed_recipient():
    """Each failed recipient gets Final-Recipient, Action: failed, its own Status and Diagnostic-Code."""
    failed = [
        rcpt("bob@example.com", "550 5.1.1 no such user"),
        rcpt("carol@example.net", "554 5.7.1 relay denied (from mx.example.net)"),
    ]
    message = parse(make(failed))
    _, blocks = status_part(message)
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bob@example.com", "rfc822; carol@example.net"]
    assert [b["Action"] for b in blocks] == ["failed", "failed"]
    assert [b["Status"] for b in blocks] == ["5.1.1", "5.7.1"]
    assert [b["Diagnostic-Code"] for b in blocks] == [
        "smtp; 550 5.1.1 no such user",
        "smtp; 554 5.7.1 relay denied (from mx.example.net)",
    ]
    human = message.get_payload()[0].get_content()
    assert "bob@example.com" in human and "carol@example.net" in human
    assert "no such user" in human


@pytest.mark.parametrize(
    "last, expired, status",
    [
        ("550 5.1.1 no such user", False, "5.1.1"),
        ("552 5.3.4 message too big", False, "5.3.4"),
        ("550 no enhanced code here", False, "5.0.0"),
        ("451 4.4.1 connection timed out", True, "4.4.1"),
        ("451 4.7.5 certificate name does not match mx.example.com", True, "4.7.5"),
        ("421 service not available", True, "4.4.7"),
        ("", True, "4.4.7"),
        ("", False, "5.0.0"),
    ],
)
def test_status_taken_from_stored_result(last, expired, status):
    """Status is the enhanced code of the stored last result; without one it is 5.0.0
    for a rejection and 4.4.7 for an expiry."""
    _, [block] = status_part(parse(make([rcpt("bob@example.com", last)], expired=expired)))
    assert block["Status"] == status
    assert block["Action"] == "failed"
    if last:
        assert block["Diagnostic-Code"] == f"smtp; {last}"
    else:
        assert block["Diagnostic-Code"] is None


def test_expiry_is_explained():
    """An expiry DSN says the message stayed in the queue too long; a rejection does not."""
    expired = parse(make([rcpt("bob@example.com", "451 4.4.1 timeout")], expired=True))
    rejected = parse(make([rcpt("bob@example.com", "550 5.1.1 no such user")]))
    assert "too long" in expired.get_payload()[0].get_content()
    assert "too long" not in rejected.get_payload()[0].get_content()


def test_original_headers_part():
    """The text/rfc822-headers part holds the original header section, unchanged."""
    part = parse(make([rcpt("bob@example.com", "550 5.1.1 x")])).get_payload()[2]
    assert part.get_payload(decode=True) == HEADERS


def test_all_lines_end_in_crlf():
    """Every line of the DSN ends with CRLF: no bare CR or LF anywhere."""
    data = make([rcpt("bob@example.com", "550 5.1.1 no such user"), rcpt("c@example.net", "")], expired=True)
    assert data.endswith(b"\r\n")
    stripped = data.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped


def test_boundary_is_valid_and_not_in_content():
    """The MIME boundary is at most 70 characters (RFC 2046 5.1.1), even with a long host name,
    and does not occur in the returned headers."""
    long_host = "outbound-relay-01.mail-cluster-eu-west.examplecorporation.example.com"
    data = make([rcpt("bob@example.com", "550 5.1.1 x")], reporting_mta=long_host)
    message = parse(data)
    boundary = message.get_boundary()
    assert 1 <= len(boundary) <= 70
    assert not boundary.endswith(" ")
    assert boundary.encode() not in HEADERS
    assert len(message.get_payload()) == 3


def test_two_dsns_have_different_boundaries_and_ids():
    """Boundary and Message-ID are unique per DSN, even for the same failed message."""
    one = parse(make([rcpt("bob@example.com", "550 5.1.1 x")]))
    two = parse(make([rcpt("bob@example.com", "550 5.1.1 x")]))
    assert one.get_boundary() != two.get_boundary()
    assert one["Message-ID"] != two["Message-ID"]


def test_original_headers_not_ending_in_crlf_are_terminated():
    """Header bytes cut mid-line still give a well-formed part ending in CRLF."""
    data = make([rcpt("bob@example.com", "550 5.1.1 x")], headers=b"Subject: cut he")
    part = parse(data).get_payload()[2]
    assert part.get_payload(decode=True) == b"Subject: cut he\r\n"


# -- original_headers ---------------------------------------------------------------------------


def test_original_headers_stop_at_blank_line():
    """Only the header section is returned, with its final CRLF, not the body."""
    assert original_headers(BODY) == HEADERS


def test_original_headers_without_body():
    """A message with no blank line is all headers."""
    assert original_headers(HEADERS) == HEADERS


def test_original_headers_cut_at_limit():
    """A huge header section is cut to MAX_RETURNED_HEADERS octets."""
    huge = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"y" * 60) for i in range(MAX_RETURNED_HEADERS // 60 + 10))
    out = original_headers(huge + b"\r\nbody\r\n")
    assert len(huge) > MAX_RETURNED_HEADERS
    assert out == huge[:MAX_RETURNED_HEADERS]


def test_original_headers_limit_constant_is_used(monkeypatch):
    """The cut follows the module's MAX_RETURNED_HEADERS (a named limit, not a magic number)."""
    monkeypatch.setattr(dsn, "MAX_RETURNED_HEADERS", 10)
    assert original_headers(BODY) == HEADERS[:10]


# -- the reply as a value, long and non-ASCII replies ---------------------------------------------


def settled(address: str, reply: Reply, remote: str = "") -> RecipientState:
    state = RecipientState(address, parse_route("mx"))
    state.record(BOUNCED, reply, remote)
    return state


def unfold(value: str) -> str:
    return value.replace("\r\n", "")


def test_status_remote_and_diagnostic_come_from_the_reply():
    """Status is the Reply's enhanced code, Remote-MTA the host that gave it, and the
    Diagnostic-Code the reply itself (naming that host, as the queue shows it)."""
    failed = [settled("bob@example.com", Reply.of(554, "5.7.1", ["relay denied", "see policy"]), "mx.example.net"),
              settled("carol@example.com", Reply.of(550, None, "mailbox unavailable"))]
    _, [bob, carol] = status_part(parse(make(failed)))
    assert bob["Status"] == "5.7.1"
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert bob["Diagnostic-Code"] == "smtp; 554 5.7.1 relay denied 5.7.1 see policy (from mx.example.net)"
    assert carol["Status"] == "5.0.0" and carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"] == "smtp; 550 mailbox unavailable"


@pytest.mark.parametrize("text", [
    " ".join(f"word{i:04d}" for i in range(456))[:4096],  # a long reply of ordinary words
    "z" * 4096,  # one word no folding can break
])
def test_a_4096_character_reply_makes_no_line_over_998_octets(text):
    """RFC 5322 2.1.1: a remote reply of 4,096 characters still gives lines of at most 998
    octets; the status field is folded and the human text carries the reply whole."""
    assert len(text) == 4096
    data = make([settled("bob@example.com", Reply.of(550, "5.7.1", text), "mx.example.com")])
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = parse(data)
    assert not message.defects and all(not p.defects for p in message.get_payload())
    _, [block] = status_part(message)
    assert block["Status"] == "5.7.1"
    if " " in text:  # folded at spaces only: unfolding gives the reply back exactly
        assert unfold(block["Diagnostic-Code"]) == f"smtp; 550 5.7.1 {text} (from mx.example.com)"
    assert text in message.get_payload()[0].get_content()


def test_non_ascii_reply_text_survives():
    """A UTF-8 reply reads back exactly in the human part (quoted-printable UTF-8), and as
    RFC 6533 escapes in the US-ASCII status part: the DSN itself is 7-bit."""
    text = "Postfach voll – 受信者のメールボックスは満杯です ✉"
    data = make([settled("bob@example.com", Reply.of(552, "5.2.2", text))])
    assert data.isascii()
    message = parse(data)
    human = message.get_payload()[0]
    assert human["Content-Transfer-Encoding"] == "quoted-printable"
    assert f"<bob@example.com>: 552 5.2.2 {text}" in human.get_content()
    _, [block] = status_part(message)
    assert unfold(block["Diagnostic-Code"]) == "smtp; 552 5.2.2 " + dsn.ascii_text(text)
    assert "\\x{2013}" in unfold(block["Diagnostic-Code"])


def test_utf8_recipient_and_sender():
    """An SMTPUTF8 recipient is a utf-8 Final-Recipient (RFC 6533); an SMTPUTF8 sender is
    still the DSN's To: address."""
    data = make([settled("jörg@exämple.de", Reply.of(550, "5.1.1", "unknown"))], sender="zoë@example.org")
    message = email.message_from_string(data.decode("utf-8"), policy=email.policy.default)  # RFC 6532 headers
    assert message["To"].addresses[0].addr_spec == "zoë@example.org"
    _, [block] = status_part(message)
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@ex\\x{E4}mple.de"
    assert "jörg@exämple.de" in message.get_payload()[0].get_content()


def test_utf8_original_headers_return_exactly():
    """Original headers that are not ASCII (an SMTPUTF8 message) go back quoted-printable, byte for byte."""
    headers = "From: Zoë <zoë@example.org>\r\nSubject: Grüße\r\n".encode()
    part = parse(make([rcpt("bob@example.com", "550 5.1.1 x")], headers=headers)).get_payload()[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_payload(decode=True) == headers


@pytest.mark.parametrize("value", [
    "smtp; 550 5.1.1 no such user",
    "smtp; " + " ".join(["alpha", "beta", "gamma"] * 40),
    "smtp; 550 " + "q" * 3000 + " tail",
])
def test_fold_field_keeps_lines_short_and_breaks_only_at_spaces(value):
    """Lines of 78 where the words allow, never over 998; a field that fits stays one line,
    and one folded at spaces unfolds to the value."""
    folded = dsn.fold_field("Diagnostic-Code", value)
    lines = folded.split("\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert all(len(line) <= 78 for line in lines if len(line.split()) > 1 and "q" * 100 not in line)
    if len(value) + len("Diagnostic-Code: ") <= 78:
        assert folded == f"Diagnostic-Code: {value}"
    if "q" * 100 not in value:
        assert unfold(folded) == f"Diagnostic-Code: {value}"


def ours(address: str, reply: Reply, remote: str = "") -> RecipientState:
    state = RecipientState(address, parse_route("mx"))
    state.record(BOUNCED, reply, remote, ours=True)
    return state


def test_tlsmta_verdicts_are_x_tlsmta_and_name_no_remote_mta():
    """What tlsmta decided (no MX; a TLS policy failure at a host) is typed X-tlsmta with the
    reason; Remote-MTA only ever names a host whose reply is reported."""
    failed = [ours("bob@example.com", Reply.of(550, "5.1.2", "no MX for example.com")),
              ours("carol@example.com", Reply.of(451, "4.7.5", "certificate expired"), "mx.example.com")]
    _, [bob, carol] = status_part(parse(make(failed, expired=True)))
    assert bob["Diagnostic-Code"] == "X-tlsmta; 5.1.2 no MX for example.com" and bob["Remote-MTA"] is None
    assert carol["Diagnostic-Code"] == "X-tlsmta; 4.7.5 certificate expired (at mx.example.com)"
    assert carol["Remote-MTA"] is None and carol["Status"] == "4.7.5"


def test_last_attempt_date_and_a_delay_warning():
    """Last-Attempt-Date is the given time; a delay warning says delayed, with a temporary
    status even for a 5xx kept by soft_bounce, and Will-Retry-Until."""
    from email.utils import parsedate_to_datetime

    kept = settled("bob@example.com", Reply.of(550, "5.1.1", "no such user"), "mx.example.com")
    data = build_dsn(reporting_mta="mx.example.net", message_id="q1", sender="alice@example.org", arrival=ARRIVAL,
                     failed=[kept], headers=HEADERS, now=NOW, last_attempt=NOW, delayed=True, retry_until=NOW)
    message = parse(data)
    _, [block] = status_part(message)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert (block["Action"], block["Status"]) == ("delayed", "4.1.1")
    assert parsedate_to_datetime(block["Last-Attempt-Date"]) == NOW
    assert parsedate_to_datetime(block["Will-Retry-Until"]) == NOW
    assert not message.defects
