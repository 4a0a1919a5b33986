"""Real OpenDKIM as a milter: signing on a submission listener, verification on an MX listener."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from e2e import maildir_messages
from milter_lab import through_milter
from opendkim_lab import OpenDKIM, generate_key, verifier

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
    signer = OpenDKIM(str(tmp_path), "signer", {
        "Mode": "s", "Domain": "example.test", "Selector": "sel1", "KeyFile": key,
        "Canonicalization": "relaxed/simple", "InternalHosts": "127.0.0.1",
    }).start()
    checker = verifier(str(tmp_path), "sel1", "example.test", record).start()
    try:
        assert await through_milter(tmp_path / "submission", signer.address, MESSAGE) == [{}]
        signed = raw_message(str(tmp_path / "submission" / "maildir"))
        assert b"DKIM-Signature:" in signed and b"d=example.test" in signed and b"s=sel1" in signed

        tampered_copy = signed.replace(b"this body is signed", b"this body was CHANGED")
        assert await through_milter(tmp_path / "mx", checker.address, signed.decode(), tampered_copy.decode()) == [{}, {}]
    finally:
        signer.stop()
        checker.stop()
    good, tampered = sorted(maildir_messages(str(tmp_path / "mx" / "maildir")), key=lambda m: "CHANGED" in m.get_payload())
    assert "dkim=pass" in " ".join(good["Authentication-Results"].split()), checker.log()
    assert "dkim=fail" in " ".join(tampered["Authentication-Results"].split()), checker.log()
