"""Unit tests for :mod:`tlsmta.inbound._received`: the ``Received:`` trace header."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmta.inbound._received import TraceFacts, protocol_keyword, received_header

WHEN = datetime(2025, 11, 25, 18, 7, 3, tzinfo=timezone(timedelta(hours=1)))
BASE = TraceFacts(
    helo="client.example.org",
    peer_ip="192.0.2.7",
    by_host="mx.example.net",
    message_id="1764090423.abc123.mx",
    when=WHEN,
)
TLS = attrs.evolve(BASE, tls_protocol="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384", client_cert="none")
BODY = b"Subject: test\r\nFrom: a@example.org\r\n\r\nbody line\r\n"


def text(facts: TraceFacts) -> str:
    return received_header(facts).decode("utf-8")


def unfold(header: str) -> str:
    return re.sub(r"\r\n[ \t]", " ", header)


def parse(header: bytes):
    return BytesParser(policy=policy.compat32).parsebytes(header + BODY)


def assert_well_formed(header: bytes) -> None:
    """One header field: CRLF only as folding (followed by TAB) or at the very end, no bare CR/LF."""
    assert header.endswith(b"\r\n")
    inner = header[:-2]
    assert b"\r" not in inner.replace(b"\r\n", b"")
    assert b"\n" not in inner.replace(b"\r\n", b"")
    for continuation in inner.split(b"\r\n")[1:]:
        assert continuation.startswith(b"\t")
    message = parse(header)
    assert len(message.get_all("Received")) == 1
    assert message.keys() == ["Received", "Subject", "From"]
    assert message.get_payload() == "body line\r\n"


# -- shape --------------------------------------------------------------------------------


def test_shape_plain():
    """Starts with 'Received: from HELO ([ip])', folds with TAB, ends '; <RFC 5322 date>' CRLF."""
    header = received_header(BASE)
    assert header.startswith(b"Received: from client.example.org ([192.0.2.7])\r\n\t")
    assert header.endswith(b"\r\n")
    assert_well_formed(header)
    flat = unfold(text(BASE))
    assert "by mx.example.net (tlsmta) with ESMTP id 1764090423.abc123.mx" in flat
    date = flat.rstrip("\r\n").rpartition("; ")[2]
    assert parsedate_to_datetime(date) == WHEN
    assert date == "Tue, 25 Nov 2025 18:07:03 +0100"


def test_shape_tls():
    """Under TLS the header records the protocol, the cipher and the client-certificate result."""
    facts = attrs.evolve(TLS, client_cert='verified (CN=client.example)')
    header = received_header(facts)
    assert_well_formed(header)
    flat = unfold(text(facts))
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384;" in flat
    assert "client certificate: verified ?CN=client.example?)" in flat
    assert "with ESMTPS id" in flat
    date = flat.rstrip("\r\n").rpartition("; ")[2]
    assert parsedate_to_datetime(date) == WHEN


def test_no_tls_no_tls_words():
    """Without TLS there is no protocol, cipher or certificate clause."""
    flat = unfold(text(BASE))
    assert "using" not in flat and "cipher" not in flat and "certificate" not in flat


def test_tls_without_cipher_name():
    """A TLS session whose cipher is unknown still says so rather than dropping the clause."""
    flat = unfold(text(attrs.evolve(TLS, tls_cipher=None)))
    assert "with cipher unknown" in flat


def test_client_cert_none_default():
    """Under TLS without a client-certificate description the header says 'none'."""
    flat = unfold(text(attrs.evolve(TLS, client_cert=None)))
    assert "client certificate: none)" in flat


@pytest.mark.parametrize(
    "esmtp, tls, auth, word",
    [
        (False, None, False, "SMTP"),
        (True, None, False, "ESMTP"),
        (True, "TLSv1.3", False, "ESMTPS"),
        (True, None, True, "ESMTPA"),
        (True, "TLSv1.2", True, "ESMTPSA"),
    ],
)
def test_with_keyword(esmtp, tls, auth, word):
    """The WITH keyword follows RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    facts = attrs.evolve(BASE, esmtp=esmtp, tls_protocol=tls, tls_cipher="X" if tls else None, authenticated=auth)
    assert protocol_keyword(facts) == word
    assert f" with {word} id " in unfold(text(facts))


@pytest.mark.parametrize("tls, auth, word", [(None, False, "UTF8SMTP"), ("TLSv1.3", False, "UTF8SMTPS"), ("TLSv1.3", True, "UTF8SMTPSA")])
def test_with_keyword_smtputf8(tls, auth, word):
    """With SMTPUTF8 the WITH keyword is RFC 6531's UTF8SMTP family."""
    facts = attrs.evolve(BASE, tls_protocol=tls, tls_cipher="X" if tls else None, authenticated=auth, smtputf8=True)
    assert protocol_keyword(facts) == word


def test_for_clause_with_one_recipient():
    """'for <rcpt>' appears when the transaction had one recipient, before the date."""
    facts = attrs.evolve(BASE, recipient="user@example.com")
    header = received_header(facts)
    assert_well_formed(header)
    assert re.search(r"\tfor <user@example\.com>; \w{3}, ", text(facts))


def test_no_for_clause_without_recipient():
    """Without a single recipient (several, so None) there is no 'for' clause."""
    assert " for " not in unfold(text(BASE)) and "\tfor" not in text(BASE)


def test_header_is_ascii_for_ascii_input():
    """With ASCII facts the header is pure ASCII (7-bit safe)."""
    received_header(TLS).decode("ascii")


# -- injection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "helo",
    [
        "evil\r\nX-Injected: yes",
        "evil\nX-Injected: yes",
        "evil\rX-Injected: yes",
        "evil\r\n\r\nbody",
        "has spaces in it",
        "tab\there",
        "",
        "x" * 2000,
        "\x00\x7f\x1b",
    ],
)
def test_helo_cannot_break_out(helo):
    """A HELO with CR, LF, spaces, controls or great length cannot add headers or end the header block."""
    facts = attrs.evolve(TLS, helo=helo, recipient="user@example.com")
    header = received_header(facts)
    assert_well_formed(header)
    assert b"X-Injected:" not in header.replace(b"?X-Injected", b"")
    first = header.split(b"\r\n")[0]
    assert first.startswith(b"Received: from ")
    assert first.endswith(b" ([192.0.2.7])")
    helo_token = first[len(b"Received: from ") : -len(b" ([192.0.2.7])")]
    assert b" " not in helo_token and 0 < len(helo_token) <= 255


@pytest.mark.parametrize("helo", ["x(fake", "x)", "x([6.6.6.6])", "x\\", "a(b)c"])
def test_helo_cannot_open_or_close_a_comment(helo):
    """Parentheses or backslash in HELO are neutralised, so the HELO cannot swallow the '([ip])' comment."""
    first = received_header(attrs.evolve(BASE, helo=helo)).split(b"\r\n")[0]
    assert first.count(b"(") == 1 and first.count(b")") == 1
    assert b"\\" not in first
    assert first.endswith(b" ([192.0.2.7])")


@pytest.mark.parametrize(
    "rcpt",
    [
        "a)@example.com",
        '"x)\r\nBcc: victim@example.com"@example.com',
        '"a\\")(b"@example.com',
        "a\n@example.com",
        "ø@bücher.example",
    ],
)
def test_recipient_cannot_break_out(rcpt):
    """A recipient with ')', backslash or CR/LF cannot end the header, close a comment early, or add a header."""
    facts = attrs.evolve(TLS, recipient=rcpt)
    header = received_header(facts)
    assert_well_formed(header)
    for_line = [line for line in header.split(b"\r\n") if line.startswith(b"\tfor <")]
    assert len(for_line) == 1
    assert b")" not in for_line[0] and b"(" not in for_line[0] and b"\\" not in for_line[0]


def test_client_cert_text_cannot_break_out():
    """A certificate subject with CR/LF or parentheses cannot close the TLS comment or add headers."""
    facts = attrs.evolve(TLS, client_cert="verified (CN=a)\r\nX-Evil: 1 (")
    header = received_header(facts)
    assert_well_formed(header)
    cert_line = [line for line in header.split(b"\r\n") if line.startswith(b"\tclient certificate:")][0]
    assert cert_line.count(b"(") == 0 and cert_line.count(b")") == 1 and cert_line.endswith(b")")


def test_tls_facts_cleaned():
    """Odd TLS protocol/cipher text cannot add spaces, controls or lines either."""
    facts = attrs.evolve(TLS, tls_protocol="TLS 1.3\r\nX: y", tls_cipher="A B\nC")
    assert_well_formed(received_header(facts))


printable_or_not = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@given(helo=printable_or_not, rcpt=st.none() | printable_or_not, cert=st.none() | printable_or_not, ip=printable_or_not, tls=st.booleans())
@settings(max_examples=300)
def test_no_input_breaks_the_header(helo, rcpt, cert, ip, tls):
    """For any client-controlled text the result is exactly one well-formed Received header."""
    facts = attrs.evolve(
        BASE,
        helo=helo,
        peer_ip=ip,
        recipient=rcpt,
        client_cert=cert,
        tls_protocol="TLSv1.3" if tls else None,
        tls_cipher="X" if tls else None,
    )
    header = received_header(facts)
    assert_well_formed(header)
    first = header.split(b"\r\n")[0]
    assert first.startswith(b"Received: from ") and first.count(b"(") == 1
    # The date is always the last thing, after the last ";".
    date = unfold(header.decode("utf-8")).rstrip("\r\n").rpartition("; ")[2]
    assert parsedate_to_datetime(date) == WHEN
