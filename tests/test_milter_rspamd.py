"""Real rspamd through its milter interface: reject (GTUBE), add header, DKIM signing."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from e2e import maildir_messages
from milter_lab import through_milter
from opendkim_lab import generate_key, verifier
from rspamd_lab import Rspamd
from test_milter_opendkim import raw_message

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_ADD_HEADER = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(body: str) -> str:
    return (
        "From: Alice <alice@example.test>\r\nTo: bob@example.com\r\nSubject: via rspamd\r\n"
        "Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <rspamd-test@example.test>\r\n\r\n"
        f"{body}\r\n"
    )


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: Any) -> Iterator[tuple[Rspamd, str]]:
    """One rspamd for the module (it takes seconds to start), signing with a fresh key; and the
    public key's TXT record, for the verifier."""
    directory = str(tmp_path_factory.mktemp("rspamd"))
    key, record = generate_key(directory, "example.test", "rsel")
    server = Rspamd(directory, key, "rsel").start()
    yield server, record
    server.stop()


async def send_through(tmp_path: Any, server: Rspamd, body: str) -> Any:
    [result] = await through_milter(tmp_path, server.address, message(body))
    return result


@pytest_twisted.ensureDeferred
async def test_rspamd_rejects_gtube_with_its_reply(tmp_path: Any, rspamd: tuple[Rspamd, str]) -> None:
    """The GTUBE pattern: rspamd's reject (its SMFIR_REPLYCODE) is the client's 554 5.7.1 at the end
    of DATA with rspamd's words, and nothing is stored."""
    result = await send_through(tmp_path, rspamd[0], GTUBE)
    assert isinstance(result, smtplib.SMTPDataError), result
    assert result.smtp_code == 554 and result.smtp_error.startswith(b"5.7.1")
    assert b"Gtube pattern" in result.smtp_error
    assert maildir_messages(str(tmp_path / "maildir")) == []


@pytest_twisted.ensureDeferred
async def test_rspamd_add_header_action_marks_the_stored_message(tmp_path: Any, rspamd: tuple[Rspamd, str]) -> None:
    """rspamd's add-header test pattern: the message is accepted and stored with X-Spam: Yes."""
    assert await send_through(tmp_path, rspamd[0], GTUBE_ADD_HEADER) == {}
    [stored] = maildir_messages(str(tmp_path / "maildir"))
    assert stored["X-Spam"] == "Yes", stored.as_string()[:2000]


@pytest_twisted.ensureDeferred
async def test_rspamd_dkim_signature_verifies_with_opendkim(tmp_path: Any, rspamd: tuple[Rspamd, str]) -> None:
    """rspamd's dkim_signing adds a DKIM-Signature through the milter; OpenDKIM, an independent
    verifier given the public key, says dkim=pass for the message as tlsmta stored it."""
    server, record = rspamd
    assert await send_through(tmp_path / "submission", server, "An ordinary message.") == {}
    signed = raw_message(str(tmp_path / "submission" / "maildir"))
    assert b"DKIM-Signature:" in signed and b"s=rsel" in signed, signed[:2000]
    checker = verifier(str(tmp_path), "rsel", "example.test", record).start()
    try:
        assert await through_milter(tmp_path / "mx", checker.address, signed.decode()) == [{}]
    finally:
        checker.stop()
    [verified] = maildir_messages(str(tmp_path / "mx" / "maildir"))
    assert "dkim=pass" in " ".join(verified["Authentication-Results"].split()), checker.log()
