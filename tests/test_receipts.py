"""The receipt file beside a captured message: written like the message, gone when discarded."""

from __future__ import annotations

import os
from typing import Any

from tlsmta.storage._maildir import ensure_maildir
from tlsmta.storage._receipts import ReceiptFile, read_receipt, receipt_path

RECORD = {"queue_id": "Q1", "helo": "app.test", "tls": {"tls": "none"}}


def test_finish_puts_the_record_in_place_and_leaves_nothing_in_tmp(tmp_path: Any) -> None:
    maildir = str(tmp_path / "maildir")
    ensure_maildir(maildir)
    receipt = ReceiptFile(maildir, "1.M2P3Q4.host", RECORD)
    receipt.append(b"Subject: the message's bytes are not the receipt's\r\n")
    assert read_receipt(maildir, "1.M2P3Q4.host") is None  # nothing visible before finish
    receipt.finish()
    assert read_receipt(maildir, "1.M2P3Q4.host:2,S") == RECORD  # a message moved to cur/ keeps it
    assert os.listdir(os.path.join(maildir, "tmp")) == []
    receipt.discard()  # a failed commit after finish takes the receipt back
    assert not os.path.exists(receipt_path(maildir, "1.M2P3Q4.host"))


def test_an_unreadable_receipt_is_no_receipt(tmp_path: Any) -> None:
    maildir = str(tmp_path / "maildir")
    os.makedirs(os.path.dirname(receipt_path(maildir, "m")))
    for junk in (b"{not json", b"[1, 2]"):
        with open(receipt_path(maildir, "m"), "wb") as f:
            f.write(junk)
        assert read_receipt(maildir, "m") is None
