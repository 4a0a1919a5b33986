"""Remembered broken TLS (``tls_remember_broken``): the pure store and rule, then a real sender.

A scripted MX answers STARTTLS with junk instead of a handshake.  With the
option set, the first delivery falls back as before and the host is
remembered; the next goes straight to plain text (``tls_fallback=
remembered-broken``), except for a domain whose policy requires TLS.
``tlsmta policy --mx`` and ``tlsmta probe`` ask the running daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread
from outbound_lab import DOMAIN, MX, deliveries, start_scripted, submit_and_settle

from tlsmta.app import _preflight as preflight
from tlsmta.config import OutboundTLS
from tlsmta.delivery._broken_tls import (
    REMEMBERED_BROKEN,
    BrokenTLS,
    MemoryBrokenTLS,
    broken_tls_key,
    may_skip_tls,
    remember,
    remembered,
)
from tlsmta.testing import RunningRelay
from tlsmta.tls import DANEStatus, STSState, VerifyMode, effective_requirement

TLSMTA = [os.path.join(os.path.dirname(sys.executable), "tlsmta")]
HOUR = 3600.0
NOW = 1_800_000_000.0
STRICT = "strict.example"  # a domain with tls = required, served by the same MX
IFAVAILABLE = effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, True)

# -- the pure core ------------------------------------------------------------------------------


def test_memory_store_forgets_at_the_deadline() -> None:
    """An entry is returned until its ``until`` and not at or after it."""
    store = MemoryBrokenTLS()
    store.remember("mx.example:25", BrokenTLS("junk", NOW, NOW + HOUR))
    assert store.get("mx.example:25", NOW + HOUR - 1) == BrokenTLS("junk", NOW, NOW + HOUR)
    assert store.get("mx.example:25", NOW + HOUR) is None
    assert store.get("mx.example:25", NOW) is None  # expired entries are dropped, not kept


def test_memory_store_is_bounded_and_evicts_the_oldest() -> None:
    """At the limit the least recently remembered host goes; remembering again refreshes a host."""
    store = MemoryBrokenTLS(limit=2)
    for key in ("a:25", "b:25", "a:25", "c:25"):
        store.remember(key, BrokenTLS(key, NOW, NOW + HOUR))
    assert store.get("b:25", NOW) is None
    assert store.get("a:25", NOW) is not None and store.get("c:25", NOW) is not None


def test_key_is_host_and_port_case_insensitive() -> None:
    """MX names compare without case and trailing dot; another port is another host."""
    assert broken_tls_key("MX.Example.", 25) == broken_tls_key("mx.example", 25) == "mx.example:25"
    assert broken_tls_key("mx.example", 2525) != broken_tls_key("mx.example", 25)


@pytest.mark.parametrize(
    ("req", "allowed"),
    [
        (IFAVAILABLE, True),
        (effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, False), False),  # no fallback
        (effective_requirement(OutboundTLS.REQUIRED, VerifyMode.NO, True), False),
        (effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, True, sts=STSState("enforce", True)), False),
        (effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, True, sts=STSState("testing", True)), True),
        (effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, True, dane=DANEStatus.USABLE), False),
        (effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, True, dane=DANEStatus.UNUSABLE), False),
        (effective_requirement(OutboundTLS.IFAVAILABLE, VerifyMode.NO, True, requiretls=True), False),
    ],
    ids=["ifavailable", "no-fallback", "required", "sts-enforce", "sts-testing", "dane", "dane-unusable", "requiretls"],
)
def test_plain_text_is_skipped_to_only_where_a_failed_handshake_would_fall_back(req: Any, allowed: bool) -> None:
    """MTA-STS enforce, DANE, REQUIRETLS, tls = required and no fallback never skip STARTTLS."""
    assert may_skip_tls(req) is allowed
    store = MemoryBrokenTLS()
    store.remember("mx:25", BrokenTLS("junk", NOW, NOW + HOUR))
    assert (remembered(store, "mx:25", req, HOUR, NOW) is not None) is allowed


def test_off_means_neither_remembered_nor_consulted() -> None:
    """tls_remember_broken = 0 (None): a failure is not stored and an old entry is not used."""
    store = MemoryBrokenTLS()
    remember(store, "mx:25", "junk", None, NOW)
    assert store.get("mx:25", NOW) is None
    remember(store, "mx:25", "junk", HOUR, NOW)
    assert store.get("mx:25", NOW + 1) == BrokenTLS("junk", NOW, NOW + HOUR)
    assert remembered(store, "mx:25", IFAVAILABLE, None, NOW + 1) is None


# -- a real sender against a broken STARTTLS ---------------------------------------------------


def sender_toml(tmp_path: Any, port: int, remember_for: str) -> str:
    path = tmp_path / "sender.toml"
    path.write_text(
        f'[global]\nhostname = "sender.test"\nstate_dir = "{tmp_path}/state"\nroute = "mx"\nsmtp_port = {port}\n'
        f'tls = "ifavailable"\ntls_remember_broken = "{remember_for}"\nmta_sts = false\ndane = false\n'
        'connection_cache_time = 0\n'  # each message on a connection of its own: what a new one does is the point
        f'[spool]\npath = "{tmp_path}/spool"\n[queue]\nretry_schedule = [3600]\n'
        f'[dns.mx]\n"{DOMAIN}" = ["{MX}"]\n"{STRICT}" = ["{MX}"]\n[dns.hosts]\n"{MX}" = ["127.0.0.1"]\n'
        f'[domain."{STRICT}"]\ntls = "required"\n'
        '[[listener]]\nname = "submit"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\nrelay_networks = ["127.0.0.0/8"]\n'
    )
    return str(path)


def tlsmta(*args: str) -> str:
    done = subprocess.run([*TLSMTA, *args], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_broken_host_is_remembered_and_shown(tmp_path: Any, events: list) -> None:
    """First message: STARTTLS, junk, plain-text retry. Second: no STARTTLS at all, logged
    tls_fallback=remembered-broken; policy --mx and probe say so; a tls = required domain at the
    same MX still tries STARTTLS (and defers)."""
    factory, port = await start_scripted("broken")
    key = f"{MX}:{port.getHost().port}"
    path = sender_toml(tmp_path, port.getHost().port, "1h")
    sender = await RunningRelay(preflight.load(path)).start()
    try:
        await submit_and_settle(sender)
        assert (factory.starttls, len(factory.messages)) == (1, 1)
        await submit_and_settle(sender)
        assert (factory.starttls, len(factory.messages)) == (1, 2)
        policy = await in_thread(tlsmta, "policy", path, DOMAIN, "--mx", MX)
        probe = await in_thread(tlsmta, "probe", "--config", path, DOMAIN)
        strict_policy = await in_thread(tlsmta, "policy", path, STRICT, "--mx", MX)
        assert factory.starttls == 2  # the probe's own handshake attempt
        await submit_and_settle(sender, rcpts=(f"user@{STRICT}",))
        assert (factory.starttls, len(factory.messages)) == (3, 2)
    finally:
        await sender.stop()
        await port.stopListening()
    first, second, strict = deliveries(events)
    assert first["result"] == second["result"] == "delivered"
    assert "tls_fallback" not in first or first["tls_fallback"] != REMEMBERED_BROKEN
    assert (second["tls"], second["tls_fallback"]) == ("none", REMEMBERED_BROKEN)
    assert (strict["result"], strict["text"][:5]) == ("deferred", "4.7.5") and "tls_fallback" not in strict
    assert f"Remembered broken TLS for {key}: since" in policy and "go straight to plain text" in policy, policy
    assert f"Remembered broken TLS for {key}: since" in probe, probe
    assert f"Remembered broken TLS: never applied to {key}" in strict_policy, strict_policy


@pytest_twisted.ensureDeferred
async def test_without_the_option_every_delivery_tries_starttls(tmp_path: Any, events: list) -> None:
    """tls_remember_broken = 0 (the default): each delivery pays the failed handshake again."""
    factory, port = await start_scripted("broken")
    sender = await RunningRelay(preflight.load(sender_toml(tmp_path, port.getHost().port, "0"))).start()
    try:
        await submit_and_settle(sender)
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await port.stopListening()
    assert (factory.starttls, len(factory.messages)) == (2, 2)
    assert all(e.get("tls_fallback") != REMEMBERED_BROKEN for e in deliveries(events))


def test_policy_without_a_daemon_says_unknown(tmp_path: Any) -> None:
    """No daemon on the control socket: policy --mx says the memory is unknown, not empty."""
    text = tlsmta("policy", sender_toml(tmp_path, 2525, "1h"), DOMAIN, "--mx", MX)
    assert f"Remembered broken TLS for {MX}:2525: unknown (no tlsmta daemon answers on" in text, text
