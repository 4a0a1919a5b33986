"""Queued mail under an operator: routes resolved at each attempt, hold/release/requeue,
many ids at once, the spool under its lock with the daemon stopped, a bounce that cannot
store its DSN (in-process relays on real sockets, and the pure parts without a reactor)."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, maildir_messages, send_smtplib
from outbound_lab import DOMAIN, start_receiver
from test_operations import relay_raw

from tlsmta.app._service import QueueService
from tlsmta.app.cli import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, main
from tlsmta.config import _loader as configuration
from tlsmta.config import parse_route
from tlsmta.delivery import destination_of
from tlsmta.delivery._mailqueue import group_jobs
from tlsmta.storage import DirectoryLock, QueuedMessage, RecipientState
from tlsmta.storage import _spool as spool_module
from tlsmta.testing import RunningRelay, build_config, dev_listener
from tlsmta.tls import Hooks


@pytest.fixture
def second_dead_port() -> Iterator[int]:
    """Another loopback port that refuses connections (bound, never listening) for the whole test."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def relay_file(tmp_path: Any, domain_route: str, smtp_port: int, extra: str = "") -> str:
    return (
        f'[global]\nhostname = "ops.test"\nstate_dir = "{tmp_path / "state"}"\nsmtp_port = {smtp_port}\n'
        f'[spool]\npath = "{tmp_path / "spool"}"\n[queue]\nretry_schedule = [3600]\n'
        '[[listener]]\nname = "test"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\nrelay_networks = ["127.0.0.0/8"]\n'
        f'[domain."{DOMAIN}"]\nroute = "{domain_route}"\n' + extra
    )


# -- routes fixed at arrival (issue 16) -----------------------------------------------------------


def test_the_destination_comes_from_the_running_configuration_not_the_record() -> None:
    """The spool record's route and binding are the arrival's; the attempt asks the configuration."""
    config = build_config({
        "domain": {DOMAIN: {"route": "smtp:new.example.net:2525"}},
        "binding": {"out1": {"source_address": "127.0.0.1"}},
        "binding_rule": [{"recipient_domain": [DOMAIN], "binding": "out1"}],
        "listener": [dev_listener()],
    })
    rcpt = RecipientState(f"bob@{DOMAIN}", parse_route("smtp:old.example.net"), "default")
    message = QueuedMessage(id="m", sender="a@client.test", recipients=[rcpt], received_at=0.0, listener="test")
    assert destination_of(config, Hooks(), message, rcpt) == (parse_route("smtp:new.example.net:2525"), "out1")
    [job] = group_jobs(message, lambda m, r: destination_of(config, Hooks(), m, r))
    assert (str(job.route), job.binding, job.domain) == ("smtp:new.example.net:2525", "out1", DOMAIN)
    # A DSN tlsmta wrote itself keeps the default binding; its route is still the configuration's.
    dsn = QueuedMessage(id="d", sender="", recipients=[rcpt], received_at=0.0, listener="dsn")
    assert destination_of(config, Hooks(), dsn, rcpt) == (parse_route("smtp:new.example.net:2525"), "default")


@pytest_twisted.ensureDeferred
async def test_a_reloaded_route_applies_to_mail_already_queued(tmp_path: Any, dead_port: int, second_dead_port: int) -> None:
    """A message deferred on the old route goes, after a reload and a flush, to the server the new
    route names, not to the old route's host on the new global smtp_port."""
    receiver = await start_receiver(tmp_path)
    path = tmp_path / "tlsmta.toml"
    path.write_text(relay_file(tmp_path, "smtp:127.0.0.1", dead_port))
    relay = await RunningRelay(configuration.load(str(path))).start()
    try:
        await in_thread(send_smtplib, relay.port, rcpts=(f"user@{DOMAIN}",))
        await relay.service.queue.wait_idle()
        [queued] = relay.service.queue.messages.values()
        assert queued.attempts == 1 and "4.4.1" in queued.recipients[0].last
        path.write_text(relay_file(tmp_path, f"smtp:127.0.0.1:{receiver.port}", second_dead_port))
        assert relay.service.reload() == []
        assert relay.service.queue.flush() == 1
        await relay.service.queue.wait_idle()
        assert relay.service.queue.messages == {}
    finally:
        await relay.stop()
        await receiver.stop()
    [delivered] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert delivered["Subject"] == "hello"


# -- queue bounce ------------------------------------------------------------------------------------


async def queued_relay(tmp_path: Any, dead_port: int, count: int = 1) -> RunningRelay:
    relay = await RunningRelay(build_config(relay_raw(tmp_path, dead_port))).start()
    for i in range(count):
        await in_thread(send_smtplib, relay.port, rcpts=(f"user{i}@{DOMAIN}",))
    await relay.service.queue.wait_idle()
    return relay


def cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest_twisted.ensureDeferred
async def test_bounce_on_a_full_disk_changes_nothing_and_says_why(
    tmp_path: Any, capsys: Any, dead_port: int, monkeypatch: Any,
) -> None:
    """The DSN cannot be stored (ENOSPC injected where the spool writes a record): the command fails
    naming the cause, the message stays queued as it was; once the disk has room the bounce goes
    through and the DSN carries the last real failure with the postmaster's note."""
    relay = await queued_relay(tmp_path, dead_port)
    sock = relay.service.config.control["socket"]
    [(message_id, message)] = relay.service.queue.messages.items()
    before = [(r.status, r.last, r.remote) for r in message.recipients]
    spool_before = sorted(p.name for p in (tmp_path / "spool" / "q").iterdir())

    def disk_full(message: Any) -> bytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:
        monkeypatch.setattr(spool_module, "record_and_trailer", disk_full)
        code, out, err = await in_thread(cli, capsys, "queue", "--socket", sock, "bounce", message_id)
        assert code == EX_TEMPFAIL and out == ""
        assert f"{message_id}: cannot store the DSN: No space left on device; the message stays queued" in err
        assert relay.service.queue.messages == {message_id: message}
        assert [(r.status, r.last, r.remote) for r in message.recipients] == before
        assert sorted(p.name for p in (tmp_path / "spool" / "q").iterdir()) == spool_before
        assert list((tmp_path / "spool" / "tmp").iterdir()) == []
        monkeypatch.undo()
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "bounce", message_id)
        assert (code, out.strip()) == (EX_OK, f"{message_id}: returned to sender")
        await relay.service.queue.wait_idle()
    finally:
        await relay.stop()
    [dsn] = maildir_messages(str(tmp_path / "bounces"))
    text = dsn.as_string()
    assert "returned to sender by the postmaster" in text
    assert before[0][1].startswith("451 4.4.1 connect to ")
    # A failed connect is tlsmta's own verdict (issue 16): typed X-tlsmta, not smtp.
    assert "Diagnostic-Code: X-tlsmta; 4.4.1 connect to 127.0.0.1" in text and "Status: 4.4.1" in text


@pytest_twisted.ensureDeferred
async def test_delete_and_bounce_take_many_ids_and_options_after_the_subcommand(
    tmp_path: Any, capsys: Any, dead_port: int,
) -> None:
    """`queue delete A B` deletes both; an unknown id among them is named and fails the command
    without stopping the rest; --config and --json go after the subcommand too."""
    relay = await queued_relay(tmp_path, dead_port, count=3)
    sock = relay.service.config.control["socket"]
    first, second, third = sorted(relay.service.queue.messages)
    config_file = tmp_path / "tlsmta.toml"
    config_file.write_text(f'[control]\nsocket = "{sock}"\n[global]\nstate_dir = "{tmp_path / "state"}"\n')
    try:
        code, out, err = await in_thread(cli, capsys, "queue", "delete", first, "nonexistent", second, "--config", str(config_file))
        assert code == EX_DATAERR and out.splitlines() == [f"{first}: deleted", f"{second}: deleted"]
        assert err.strip() == "tlsmta queue: no queued message nonexistent"
        code, out, _ = await in_thread(cli, capsys, "queue", "list", "--config", str(config_file), "--json")
        assert code == EX_OK and [m["id"] for m in json.loads(out)] == [third]
        code, out, _ = await in_thread(cli, capsys, "queue", "bounce", third, "--socket", sock)
        assert (code, out.strip()) == (EX_OK, f"{third}: returned to sender")
        await relay.service.queue.wait_idle()
    finally:
        await relay.stop()
    assert len(maildir_messages(str(tmp_path / "bounces"))) == 1


@pytest_twisted.ensureDeferred
async def test_held_mail_is_not_tried_until_released_and_stays_held_across_a_restart(
    tmp_path: Any, capsys: Any, dead_port: int,
) -> None:
    """hold by id: flush passes it by, `queue list` marks it `!`, a restart keeps it held;
    release makes it due now; --domain and ALL select as well."""
    raw = relay_raw(tmp_path, dead_port)
    relay = await queued_relay(tmp_path, dead_port, count=2)
    sock = relay.service.config.control["socket"]
    held, other = sorted(relay.service.queue.messages)
    try:
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "hold", held)
        assert (code, out.strip()) == (EX_OK, f"{held}: held")
        assert relay.service.queue.flush() == 1
        await relay.service.queue.wait_idle()
        assert relay.service.queue.messages[held].attempts == 1 and relay.service.queue.messages[other].attempts == 2
    finally:
        await relay.stop()
    relay = await RunningRelay(build_config(raw)).start()
    try:
        [loading] = [s for s in relay.service if isinstance(s, QueueService)]
        await loading.loaded
        await relay.service.queue.wait_idle()
        queue = relay.service.queue
        assert queue.messages[held].held and not queue.messages[other].held
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "list")
        assert f"{held:<33}!" in out and f"{other:<33} " in out
        assert queue.flush() == 1 and queue.messages[held].attempts == 1
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "release", held)
        assert (code, out.strip()) == (EX_OK, f"{held}: released")
        await queue.wait_idle()
        assert queue.messages[held].attempts == 2 and not queue.messages[held].held
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "hold", "--domain", DOMAIN)
        assert code == EX_OK and sorted(out.split()) == sorted([f"{held}:", "held", f"{other}:", "held"])
        code, out, _ = await in_thread(cli, capsys, "queue", "--socket", sock, "release", "ALL")
        assert code == EX_OK and out.count("released") == 2
        code, _, err = await in_thread(cli, capsys, "queue", "--socket", sock, "hold")
        assert code == EX_USAGE and "name message ids, --domain DOMAIN or ALL" in err
    finally:
        await queue.wait_idle()
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_with_the_daemon_stopped_delete_and_hold_work_on_the_spool_under_its_lock(
    tmp_path: Any, capsys: Any, dead_port: int,
) -> None:
    """No daemon: hold and delete change the spool directly (a restart sees the hold); while another
    process holds the spool lock they refuse, naming it; flush, requeue and bounce need the daemon."""
    relay = await queued_relay(tmp_path, dead_port, count=2)
    await relay.stop()
    doomed, held = sorted(relay.service.queue.messages)
    config_file = tmp_path / "tlsmta.toml"
    config_file.write_text(f'[global]\nstate_dir = "{tmp_path / "state"}"\n[spool]\npath = "{tmp_path / "spool"}"\n')
    conf = ("--config", str(config_file))
    code, out, err = await in_thread(cli, capsys, "queue", "delete", doomed, *conf)
    assert (code, out.strip()) == (EX_OK, f"{doomed}: deleted") and "not running" in err
    code, out, _ = await in_thread(cli, capsys, "queue", "hold", "ALL", *conf)
    assert (code, out.strip()) == (EX_OK, f"{held}: held")
    code, _, err = await in_thread(cli, capsys, "queue", "delete", "nonexistent", *conf)
    assert code == EX_DATAERR and "no queued message nonexistent; nothing changed" in err
    for action in ("flush", "requeue ALL", "bounce " + held):
        code, _, err = await in_thread(cli, capsys, "queue", *action.split(), *conf)
        assert code == EX_UNAVAILABLE and f"{action.split()[0]} needs the running daemon" in err
    other = DirectoryLock.acquire(str(tmp_path / "spool"))
    try:
        code, _, err = await in_thread(cli, capsys, "queue", "release", held, *conf)
    finally:
        other.release()
    assert code == EX_TEMPFAIL and f"is in use by tlsmta PID {os.getpid()}" in err
    relay = await RunningRelay(build_config(relay_raw(tmp_path, dead_port))).start()
    try:
        [loading] = [s for s in relay.service if isinstance(s, QueueService)]
        await loading.loaded
        assert list(relay.service.queue.messages) == [held] and relay.service.queue.messages[held].held
    finally:
        await relay.stop()


def test_a_release_to_a_smarthost_keeps_the_route_it_was_given() -> None:
    """The dev relay's Release names its route per message: the configuration does not replace it."""
    config = build_config({"domain": {DOMAIN: {"route": "smtp:new.example.net"}}, "listener": [dev_listener()]})
    rcpt = RecipientState(f"bob@{DOMAIN}", parse_route("smtp:smarthost.test:2525"), "default")
    message = QueuedMessage(id="m", sender="a@client.test", recipients=[rcpt], received_at=0.0, listener="release")
    assert destination_of(config, Hooks(), message, rcpt) == (parse_route("smtp:smarthost.test:2525"), "default")
