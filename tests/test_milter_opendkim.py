"""Real OpenDKIM as a milter: signing on a submission listener, verification on an MX listener."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from e2e import in_thread, maildir_messages, send_smtplib, start_relay
from opendkim_lab import OpenDKIM, generate_key

from tlsmta.testing import dev_listener

MESSAGE = (
    "From: Alice <alice@example.test>\r\nTo: bob@example.com\r\nSubject: signed by OpenDKIM\r\n"
    "Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <dkim-test@example.test>\r\n\r\n"
    "Hello, this body is signed.\r\n"
)


def raw_message(path: str) -> bytes:
    """The one stored message, as bytes, without the Return-Path and Delivered-To lines delivery added."""
    directory = os.path.join(path, "new")
    [name] = os.listdir(directory)
    with open(os.path.join(directory, name), "rb") as f:
        lines = f.read().split(b"\n")
    kept = [line for line in lines if not line.startswith((b"Return-Path:", b"Delivered-To:"))]
    return b"\n".join(kept).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest_twisted.ensureDeferred
async def test_opendkim_signs_on_submission_and_verifies_on_the_mx(tmp_path: Any) -> None:
    """Submission with OpenDKIM (Mode s) stores a DKIM-Signature made with the test key; the MX with
    OpenDKIM (Mode v, the public key from TestPublicKeys) records dkim=pass for that message and
    dkim=fail for a copy whose body was changed after signing."""
    key, record = generate_key(str(tmp_path), "example.test", "sel1")
    keys = tmp_path / "public-keys"
    keys.write_text(f"sel1._domainkey.example.test {record}\n")
    signer = OpenDKIM(str(tmp_path), "signer", {
        "Mode": "s", "Domain": "example.test", "Selector": "sel1", "KeyFile": key,
        "Canonicalization": "relaxed/simple", "InternalHosts": "127.0.0.1",
    }).start()
    verifier = OpenDKIM(str(tmp_path), "verifier", {
        "Mode": "v", "TestPublicKeys": str(keys), "InternalHosts": "192.0.2.1", "AuthservID": "mx.example.test",
    }).start()
    try:
        submission = await start_relay(tmp_path / "submission", [dev_listener(milters=[signer.address])])
        try:
            assert await in_thread(send_smtplib, submission.port, sender="alice@example.test",
                                   rcpts=("bob@example.com",), body=MESSAGE) == {}
        finally:
            await submission.stop()
        signed = raw_message(str(tmp_path / "submission" / "maildir"))
        assert b"DKIM-Signature:" in signed and b"d=example.test" in signed and b"s=sel1" in signed

        mx = await start_relay(tmp_path / "mx", [dev_listener(milters=[verifier.address])])
        try:
            for body in (signed, signed.replace(b"this body is signed", b"this body was CHANGED")):
                assert await in_thread(send_smtplib, mx.port, sender="alice@example.test", rcpts=("bob@example.com",),
                                       body=body.decode()) == {}
        finally:
            await mx.stop()
    finally:
        signer.stop()
        verifier.stop()
    good, tampered = sorted(maildir_messages(str(tmp_path / "mx" / "maildir")), key=lambda m: "CHANGED" in m.get_payload())
    assert "dkim=pass" in " ".join(good["Authentication-Results"].split()), verifier.log()
    assert "dkim=fail" in " ".join(tampered["Authentication-Results"].split()), verifier.log()
