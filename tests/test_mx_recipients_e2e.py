"""A domain's MX over loopback: recipient maps at RCPT, aliases, one Maildir per user, SIGHUP reloads.

Real clients (smtplib, swaks) against tlsmta in this process, and tlsmta as a real twistd process
for the SIGHUP test; mailboxes are read with the standard library's Maildir reader.
"""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path
from typing import Any

import pytest_twisted
from e2e import in_thread, maildir_messages, run_process, send_smtplib, start_relay
from processes import TlsmtaProcess

from tlsmta.testing import dev_listener

MAPS = """\
# mailboxes
alice@example.test
bob@example.test
# aliases
team@example.test      alice@example.test, bob@example.test
postmaster@example.test  alice@example.test
"""


def mx_listener(maps: Path, **overrides: Any) -> dict[str, Any]:
    return dev_listener(local_domains=["example.test"], recipient_maps=str(maps), **overrides)


def rcpt_reply(port: int, rcpt: str) -> tuple[int, bytes]:
    """The server's answer to one RCPT TO, with smtplib."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
    try:
        client.ehlo()
        client.mail("s@client.test")
        return client.rcpt(rcpt)
    finally:
        client.quit()


@pytest_twisted.ensureDeferred
async def test_unknown_users_refused_aliases_expanded_one_maildir_each(tmp_path: Path) -> None:
    """smtplib to alice, team (alice + bob) and nosuchuser: nosuchuser gets 550 5.1.1 at RCPT, and
    alice and bob each find one message in their own Maildir with a Delivered-To naming only them."""
    maps = tmp_path / "recipients"
    maps.write_text(MAPS)
    relay = await start_relay(tmp_path, [mx_listener(maps)], route=f"maildir:{tmp_path}/mail/%d/%u/")
    try:
        refused = await in_thread(
            send_smtplib, relay.port, rcpts=("alice@example.test", "team@example.test", "nosuchuser@example.test")
        )
    finally:
        await relay.stop()
    assert refused == {
        "nosuchuser@example.test": (550, b"5.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown")
    }
    for user in ("alice", "bob"):
        [message] = maildir_messages(str(tmp_path / "mail" / "example.test" / user))
        assert message.get_all("Delivered-To") == [f"{user}@example.test"]
        assert message["Subject"] == "hello"
    assert sorted(p.name for p in (tmp_path / "mail" / "example.test").iterdir()) == ["alice", "bob"]


@pytest_twisted.ensureDeferred
async def test_swaks_gets_550_for_an_unknown_user_and_the_session_goes_on(tmp_path: Path) -> None:
    """swaks to a user the maps do not list: 550 5.1.1 at RCPT, nothing stored; postmaster is accepted."""
    maps = tmp_path / "recipients"
    maps.write_text(MAPS)
    relay = await start_relay(tmp_path, [mx_listener(maps)], route=f"maildir:{tmp_path}/mail/%d/%u")
    try:
        code, out, err = await run_process(
            "swaks", "--server", f"127.0.0.1:{relay.port}", "--from", "s@client.test", "--helo", "client.test",
            "--to", "nosuchuser@example.test",
        )
        postmaster = await in_thread(rcpt_reply, relay.port, "postmaster@example.test")
    finally:
        await relay.stop()
    assert code != 0
    assert "<** 550 5.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown" in out, out + err
    assert postmaster[0] == 250
    assert not (tmp_path / "mail").exists()


def test_sighup_reloads_the_maps_and_keeps_them_when_the_new_file_is_broken(tmp_path: Path) -> None:
    """A real tlsmta: carol is unknown (550); after adding her and SIGHUP she is accepted; a map
    broken after that is refused at the next SIGHUP with its file and line logged, and carol still is."""
    maps = tmp_path / "recipients"
    maps.write_text(MAPS)
    config = tmp_path / "tlsmta.toml"
    config.write_text(
        f'[global]\nhostname = "mx.example.test"\nstate_dir = "{tmp_path}/state"\n'
        f'route = "maildir:{tmp_path}/mail/%d/%u"\n[spool]\npath = "{tmp_path}/spool"\n'
        f'[[listener]]\nname = "mx"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\n'
        f'local_domains = ["example.test"]\nrecipient_maps = "{maps}"\n'
    )
    proc = TlsmtaProcess(str(tmp_path), "--config", str(config))
    try:
        assert rcpt_reply(proc.port, "carol@example.test")[0] == 550
        maps.write_text(MAPS + "carol@example.test\n")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"reload result=ok")
        assert rcpt_reply(proc.port, "carol@example.test")[0] == 250

        maps.write_text(MAPS + "carol@example.test\ndave@example.test  not an address\n")
        proc.proc.send_signal(signal.SIGHUP)
        refused = proc.wait_for_log(r"reload refused, keeping the running configuration: [^\n]*").group(0)
        assert f"recipient_maps: {maps}:8: 'not' is not an address" in refused
        assert rcpt_reply(proc.port, "carol@example.test")[0] == 250
        assert rcpt_reply(proc.port, "dave@example.test")[0] == 550
    finally:
        proc.stop()
