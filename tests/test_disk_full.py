"""A full disk (issue 16): MAIL with a SIZE the spool's filesystem cannot take is 452 4.3.1, as
Postfix answers; so is MAIL when less than [spool] min_free is left, and a message that runs the disk
full during DATA. Each refusal is one log line (no traceback) and leaves nothing behind.

The real-process tests put the spool on conftest's 512 KiB tmpfs, so they need root (CI runs as
root); the harness tests use the real free space of tmp_path and a reserve no disk has, so they
run everywhere."""

from __future__ import annotations

import contextlib
import os
import smtplib
from collections.abc import Iterator
from typing import Any

from inbound_harness import Session, runtime
from processes import TlsmtaProcess

from tlsmta.smtp import server_session as server
from tlsmta.storage import space_refusal

KIB = 1024
NO_DISK_HAS_THIS = 2**60


# -- the decision, pure ------------------------------------------------------------------------


def test_the_declared_size_and_the_reserve_must_both_fit() -> None:
    assert space_refusal(100, free=1000, reserve=900) is None
    refusal = space_refusal(101, free=1000, reserve=900)
    assert refusal is not None and (refusal.reply.code, refusal.reply.enhanced) == (452, "4.3.1")


def test_without_size_only_the_reserve_counts() -> None:
    assert space_refusal(None, free=1000, reserve=1000) is None
    assert space_refusal(None, free=999, reserve=1000) is not None


def test_the_session_asks_with_the_declared_size_and_keeps_syntax_errors_after_the_answer() -> None:
    """MailAllowed carries SIZE=; a MAIL that does not parse asks with no size, and its syntax
    error is the answer once the shell accepted (the client-certificate policy speaks first)."""
    session = server.ServerSession(server.ServerSettings(hostname="mx.test"))
    session.receive_data(b"EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=12345\r\n")
    events = _drain(session)
    assert events[-1] == server.MailAllowed(12345, "a@b.test")
    session.accept()
    assert b"250" in _drain(session)[-1].data
    session.receive_data(b"RSET\r\nMAIL FROM:<a@b.test> SIZE=x\r\n")
    events = _drain(session)
    assert events[-1] == server.MailAllowed(None)
    session.accept()
    assert _drain(session)[-1].data.startswith(b"501 5.5.4 SIZE needs a number")


def _drain(session: server.ServerSession) -> list[Any]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
        if isinstance(event, server.MailAllowed):
            break
    return events


# -- the shell, over the real free space of tmp_path ---------------------------------------------


def test_mail_is_452_when_the_reserve_is_not_free(tmp_path: Any) -> None:
    s = Session(runtime(extra={"spool": {"path": str(tmp_path), "min_free": NO_DISK_HAS_THIS}}))
    s.send(b"EHLO client.test\r\n")
    assert s.send(b"MAIL FROM:<a@client.test>\r\n")[-1] == "452 4.3.1 Error: insufficient system storage"


def test_mail_with_a_size_that_fits_is_accepted(tmp_path: Any) -> None:
    s = Session(runtime(extra={"spool": {"path": str(tmp_path), "min_free": 0}}))
    s.send(b"EHLO client.test\r\n")
    assert s.send(b"MAIL FROM:<a@client.test> SIZE=1000\r\n")[-1].startswith("250")


# -- a real tlsmta with its spool on a small tmpfs -----------------------------------------------


def _write_config(tmp_path: Any, spool: str, min_free: int) -> str:
    path = tmp_path / "tlsmta.toml"
    path.write_text(
        f"""
[global]
hostname = "mx.example.test"
state_dir = "{tmp_path}/state"
route = "smtp:127.0.0.1:9"
[spool]
path = "{spool}"
min_free = {min_free}
[queue]
retry_schedule = [3600]
[[listener]]
name = "mx"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "no"
relay_networks = ["127.0.0.0/8"]
"""
    )
    return str(path)


@contextlib.contextmanager
def _running(tmp_path: Any, spool: str, min_free: int) -> Iterator[TlsmtaProcess]:
    proc = TlsmtaProcess(str(tmp_path), "--config", _write_config(tmp_path, spool, min_free))
    try:
        yield proc
    finally:
        proc.stop()


def test_mail_with_a_size_the_tmpfs_cannot_take_is_452_in_one_log_line(tmp_path: Any, small_tmpfs: Any) -> None:
    with _running(tmp_path, str(small_tmpfs), min_free=128 * KIB) as proc:
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as client:
            client.ehlo("client.test")
            code, text = client.mail("a@client.test", [f"SIZE={400 * KIB}"])
            assert (code, text) == (452, b"4.3.1 Error: insufficient system storage")
            client.rset()
            assert client.mail("a@client.test", ["SIZE=1000"])[0] == 250
        line = proc.wait_for_log(r".*mail_refused .*").group(0)
    assert "code=452" in line and f"size={400 * KIB}" in line
    assert "Traceback" not in proc.log()


def test_a_message_that_fills_the_disk_during_data_is_452_and_leaves_nothing(tmp_path: Any, small_tmpfs: Any) -> None:
    """No SIZE, no reserve: the writes hit ENOSPC; the client gets 452 4.3.1 at the end of DATA, the
    log has the received line and no traceback, and the spool holds no part of the message."""
    body = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * (1024 * KIB // 78)
    spool = str(small_tmpfs)
    with _running(tmp_path, spool, min_free=0) as proc:
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=60) as client:
            client.ehlo("client.test")
            client.mail("a@client.test")
            client.rcpt("b@remote.test")
            assert client.data(body) == (452, b"4.3.1 Error: insufficient system storage")
            client.rset()
        proc.wait_for_log(r"received .*code=452")
        leftovers = [os.path.join(d, n) for d, _, names in os.walk(spool) for n in names]
    assert [p for p in leftovers if not p.endswith("tlsmta.lock")] == []
    assert "Traceback" not in proc.log()


def test_a_maildir_copy_already_renamed_goes_when_the_message_is_discarded(tmp_path: Any) -> None:
    """Two local Maildirs, the second runs the disk full: the client is told 452 and sends again,
    so the first copy, already in new/, must not stay (it would be a duplicate)."""
    from tlsmta.storage._maildir import MaildirFile, ensure_maildir

    first = MaildirFile(str(tmp_path / "a"), b"", ensure_maildir)
    first.append(b"Subject: x\n\nbody\n")
    first.finish()
    first.discard()  # what StreamingWriter does to every target once one failed
    assert os.listdir(tmp_path / "a" / "new") == [] and os.listdir(tmp_path / "a" / "tmp") == []
