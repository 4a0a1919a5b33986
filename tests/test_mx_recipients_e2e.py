"""A domain's MX over loopback: recipient maps at RCPT, aliases, one Maildir per user, SIGHUP reloads.

Real clients (smtplib, swaks) against tlsmta in this process, and tlsmta as a real twistd process
for the SIGHUP test; mailboxes are read with the standard library's Maildir reader.
"""

from __future__ import annotations

import os
import signal
import smtplib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e import eventually, in_thread, maildir_messages, run_process, send_smtplib, start_relay
from postfix_lab import PrivatePostfix
from processes import TlsmtaProcess

from tlsmta.testing import RunningRelay, build_config, dev_listener

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
async def test_swaks_gets_550_for_an_unknown_user_and_the_session_goes_on(tmp_path: Path, events: list) -> None:
    """swaks to a user the maps do not list: 550 5.1.1 at RCPT, logged with why, nothing stored;
    postmaster is accepted."""
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
    [rejected] = [e for e in events if e["tlsmta_event"] == "rcpt_rejected"]
    assert (rejected["rcpt"], rejected["reason"]) == ("nosuchuser@example.test", "not in recipient_maps")


@pytest_twisted.ensureDeferred
async def test_an_alias_that_forwards_goes_through_the_queue_and_the_local_copy_still_lands(
    tmp_path: Path, dead_port: int
) -> None:
    """team2 is alice and a far address whose smarthost is down: the message is spooled, the queue puts
    alice's copy in her own Maildir (the route's %u expanded at delivery too), the far copy waits."""
    maps = tmp_path / "recipients"
    maps.write_text(MAPS + "team2@example.test  alice@example.test, friend@far.test\n")
    raw = {
        "global": {"hostname": "mx.example.test", "state_dir": str(tmp_path / "state"),
                   "route": f"maildir:{tmp_path}/mail/%d/%u"},
        "domain": {"far.test": {"route": f"smtp:127.0.0.1:{dead_port}"}},
        "listener": [mx_listener(maps)],
        "spool": {"path": str(tmp_path / "spool")},
    }
    relay = await RunningRelay(build_config(raw)).start()
    try:
        assert await in_thread(send_smtplib, relay.port, rcpts=("team2@example.test",)) == {}
        [queued] = relay.service.queue.messages.values()

        def states() -> dict[str, str]:
            return {r.address: r.status for r in queued.recipients}

        await eventually(lambda: states()["alice@example.test"] == "delivered", timeout=30)
        assert states() == {"alice@example.test": "delivered", "friend@far.test": "pending"}
    finally:
        await relay.stop()
    [message] = maildir_messages(str(tmp_path / "mail" / "example.test" / "alice"))
    assert message.get_all("Delivered-To") == ["alice@example.test"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root (CI runs as root)")
@pytest_twisted.ensureDeferred
async def test_postfix_relaying_to_the_mx_delivers_users_and_bounces_unknown_ones(tmp_path: Path) -> None:
    """A real Postfix relays a message for team (alice + bob) and nosuchuser to tlsmta: it logs sent for
    team and a bounce with our 550 5.1.1 for nosuchuser; alice and bob each have the message."""
    maps = tmp_path / "recipients"
    maps.write_text(MAPS)
    relay = await start_relay(tmp_path, [mx_listener(maps, relay_networks=[])], route=f"maildir:{tmp_path}/mail/%d/%u")
    postfix = PrivatePostfix({"relayhost": f"[127.0.0.1]:{relay.port}"})
    await in_thread(postfix.start)
    try:
        # MAIL FROM:<>: Postfix sends no bounce of its own for the refused recipient, only logs it.
        await in_thread(send_smtplib, postfix.port, sender="", rcpts=("team@example.test", "nosuchuser@example.test"))
        await eventually(lambda: all(maildir_messages(str(tmp_path / "mail" / "example.test" / u)) for u in ("alice", "bob")),
                         timeout=60)
        log = await in_thread(postfix.wait_for_log, "status=bounced", 60)
        log = await in_thread(postfix.wait_for_log, "status=sent", 60)
    finally:
        await in_thread(postfix.remove)
        await relay.stop()
    [bounced] = [line for line in log.splitlines() if "status=bounced" in line]
    assert "to=<nosuchuser@example.test>" in bounced and "said: 550 5.1.1 <nosuchuser@example.test>" in bounced
    [sent] = [line for line in log.splitlines() if "status=sent" in line]
    assert "to=<team@example.test>" in sent
    for user in ("alice", "bob"):
        [message] = maildir_messages(str(tmp_path / "mail" / "example.test" / user))
        assert message.get_all("Delivered-To") == [f"{user}@example.test"]


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
