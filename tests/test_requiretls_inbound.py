"""REQUIRETLS received (RFC 8689 sections 2 and 4.1): offered and accepted only inside TLS,
recorded in the spool with any ``TLS-Required: No`` header field.

Protocol tests drive one session over the fake transport (STARTTLS is recorded,
not performed); the end-to-end test sends with smtplib over real STARTTLS and
reads the spooled metadata back.
"""

from __future__ import annotations

import glob
import json
import os
import smtplib
from typing import Any

import pytest_twisted
from e2e import CLIENT_TIMEOUT, client_context, in_thread, start_relay
from inbound_harness import Session, runtime

from tlsmta.storage._spool import read_record
from tlsmta.testing import dev_listener


def starttls_session(pki: Any) -> Session:
    s = Session(runtime(listener={"tls": "starttls"}, tls_pair=pki.good))
    s.new_replies()
    return s


def after_starttls(pki: Any) -> Session:
    s = starttls_session(pki)
    s.ehlo()
    assert s.send("STARTTLS\r\n") == ["220 2.0.0 Ready to start TLS"]
    return s


def keywords(ehlo_lines: list[str]) -> list[str]:
    return [line[4:] for line in ehlo_lines[1:]]


def test_requiretls_offered_only_inside_tls(pki: Any) -> None:
    """EHLO before STARTTLS does not list REQUIRETLS; EHLO after it does (RFC 8689 2)."""
    s = starttls_session(pki)
    assert "REQUIRETLS" not in keywords(s.ehlo())
    s.send("STARTTLS\r\n")
    assert "REQUIRETLS" in keywords(s.ehlo())


def test_requiretls_offered_on_implicit_tls(pki: Any) -> None:
    """On an implicit-TLS listener the first EHLO already lists REQUIRETLS."""
    s = Session(runtime(listener={"tls": "implicit"}, tls_pair=pki.good))
    s.new_replies()
    assert "REQUIRETLS" in keywords(s.ehlo())


def test_requiretls_without_tls_is_530(pki: Any) -> None:
    """MAIL FROM ... REQUIRETLS outside TLS is 530 5.7.10, and the transaction does not start."""
    s = starttls_session(pki)
    s.ehlo()
    [reply] = s.send("MAIL FROM:<a@client.test> REQUIRETLS\r\n")
    assert reply.startswith("530 5.7.10 ")
    assert s.codes("RCPT TO:<b@example.com>\r\n") == [503]  # no MAIL was accepted
    assert s.codes("MAIL FROM:<a@client.test>\r\n") == [250]


def test_requiretls_without_tls_config_is_530() -> None:
    """A listener with no TLS at all refuses REQUIRETLS the same way."""
    s = Session(runtime())
    s.new_replies()
    s.ehlo()
    assert s.codes("MAIL FROM:<a@client.test> REQUIRETLS\r\n") == [530]


def test_requiretls_with_a_value_is_501(pki: Any) -> None:
    """REQUIRETLS takes no value (RFC 8689 2)."""
    s = after_starttls(pki)
    s.ehlo()
    assert s.codes("MAIL FROM:<a@client.test> REQUIRETLS=YES\r\n") == [501]


def test_requiretls_inside_tls_marks_the_message(pki: Any) -> None:
    """Inside TLS, MAIL FROM ... REQUIRETLS is accepted and the stored envelope carries it;
    the next transaction on the session (without it) does not."""
    s = after_starttls(pki)
    s.ehlo()
    assert s.codes(
        "MAIL FROM:<a@client.test> REQUIRETLS\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
    ) == [250, 250, 354, 250]
    assert s.codes(
        "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: y\r\n\r\nhi\r\n.\r\n"
    ) == [250, 250, 354, 250]
    first, second = s.sink.stored
    assert first.envelope.tls.get("requiretls") is True
    assert "requiretls" not in second.envelope.tls


def test_rset_forgets_requiretls(pki: Any) -> None:
    """RSET ends the transaction: a later MAIL without the parameter is not REQUIRETLS."""
    s = after_starttls(pki)
    s.ehlo()
    assert s.codes("MAIL FROM:<a@client.test> REQUIRETLS\r\nRSET\r\n") == [250, 250]
    s.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n")
    [stored] = s.sink.stored
    assert "requiretls" not in stored.envelope.tls


def test_requiretls_and_other_parameters(pki: Any) -> None:
    """REQUIRETLS combines with SIZE, BODY and SMTPUTF8, in any order and case."""
    s = after_starttls(pki)
    s.ehlo()
    assert s.codes("MAIL FROM:<a@client.test> SIZE=10 requiretls BODY=8BITMIME SMTPUTF8\r\n") == [250]
    assert s.proto.mail_params.requiretls and s.proto.mail_params.smtputf8


# -- end to end ----------------------------------------------------------------------------------


def send(port: int, ca: str, body: bytes, options: list[str]) -> list[str]:
    """One message over STARTTLS with the given MAIL options; returns the EHLO keywords after STARTTLS."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as client:
        client.starttls(context=client_context(ca))
        client.ehlo()
        features = sorted(client.esmtp_features)
        client.mail("app@client.test", options)
        client.rcpt("someone@example.com")
        client.data(body)
        return features


def spooled(tmp_path: Any) -> list[dict[str, Any]]:
    records = []
    for path in sorted(glob.glob(os.path.join(tmp_path, "spool", "q", "*.msg"))):
        records.append(json.loads(read_record(path).to_json()))
    return records


@pytest_twisted.ensureDeferred
async def test_smtplib_requiretls_reaches_the_spool(tmp_path: Any, pki: Any, dead_port: int) -> None:
    """Over real STARTTLS, smtplib sees REQUIRETLS offered, sends MAIL FROM ... REQUIRETLS, and the
    spooled record says requiretls; a message with 'TLS-Required: No' (and no REQUIRETLS) is
    recorded as tls_required_no; both together are both recorded."""
    listener = dev_listener(tls="starttls", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    # A pinned (so DNSSEC-secure) MX that refuses connections (dead_port): each delivery attempt is
    # deferred, never bounced, and the records stay in the spool to be read.
    dns = {"mx": {"example.com": ["mx1.example.com"]}, "hosts": {"mx1.example.com": ["127.0.0.1"]}}
    relay = await start_relay(tmp_path, [listener], dns=dns, route="mx", smtp_port=dead_port)
    try:
        features = await in_thread(send, relay.port, pki.ca_pem, b"Subject: one\r\n\r\nsecret\r\n", ["REQUIRETLS"])
        assert "requiretls" in features
        await in_thread(send, relay.port, pki.ca_pem, b"Subject: two\r\nTLS-Required: No\r\n\r\nopen\r\n", [])
        await in_thread(send, relay.port, pki.ca_pem, b"TLS-Required: no\r\nSubject: three\r\n\r\nboth\r\n",
                        ["REQUIRETLS"])
        records = {r["sender"] + ":" + str(r["size"]): r for r in spooled(tmp_path)}
        assert len(records) == 3
        flags = sorted((r["requiretls"], r["tls_required_no"]) for r in records.values())
        assert flags == [(False, True), (True, False), (True, True)]
        assert all("requiretls" not in r["tls"] for r in records.values())
        assert all(r["tls"]["tls"] == "tls" for r in records.values())
    finally:
        await relay.stop()
