"""The fleet's pieces without a fleet (issue 18): the [cluster] options and the Redis URL, the
local share of a cap, the local lease counter that is today's behaviour, and, on a real
redis-server, broken TLS shared between two nodes and the fall back to local limits when Redis
is gone, within the timeout."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from redis_lab import RedisServer
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from tlsmta.cluster import Keys, Redis, local_share
from tlsmta.cluster._broken_tls import RedisBrokenTLS
from tlsmta.cluster._health import RedisHealth
from tlsmta.cluster._leases import RedisLeases
from tlsmta.config import ConfigError, RedisAddress, RedisTransport, parse_route
from tlsmta.config._redis_address import parse_redis_url
from tlsmta.delivery import BrokenTLS, Gcra, LocalLeases, Rate, lease_key
from tlsmta.reporting import EventBus
from tlsmta.testing import build_config


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", RedisAddress(RedisTransport.TCP, host="127.0.0.1", port=6379, db=0)),
    ("redis://redis.example.net", RedisAddress(RedisTransport.TCP, host="redis.example.net")),
    ("rediss://:s3cret@redis.example.net:6380/2",
     RedisAddress(RedisTransport.TLS, host="redis.example.net", port=6380, db=2, password="s3cret")),
    ("redis://fleet:pw@[::1]:7000/1", RedisAddress(RedisTransport.TCP, host="::1", port=7000, db=1, username="fleet", password="pw")),
    ("unix:/run/redis/redis.sock", RedisAddress(RedisTransport.UNIX, path="/run/redis/redis.sock")),
    ("unix:///run/redis/redis.sock?db=3", RedisAddress(RedisTransport.UNIX, path="/run/redis/redis.sock", db=3)),
])
def test_redis_urls(url: str, expected: RedisAddress) -> None:
    """The URL forms redis clients take, parsed into one value."""
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1", "redis://, rediss:// or unix:"),
    ("redis://", "names no Redis host"),
    ("redis://h:99999/0", "bad port"),
    ("redis://h/16", "0 to 15"),
    ("unix:relative.sock", "absolute"),
])
def test_bad_redis_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_redis_url(url)


def test_describe_hides_the_password() -> None:
    """Logs and `tlsmta cluster status` show where Redis is, never its password."""
    address = parse_redis_url("rediss://:s3cret@redis.example.net:6380/2")
    assert address.describe() == "rediss://redis.example.net:6380/2"
    assert "s3cret" not in repr(address)


def _raw(tmp_path: Any, **cluster: Any) -> dict[str, Any]:
    return {"global": {"state_dir": str(tmp_path)}, "spool": {"path": str(tmp_path / "spool")}, "cluster": cluster}


def test_cluster_defaults_and_single_node_without_it(tmp_path: Any) -> None:
    """[cluster] with only redis gets the documented defaults; without [cluster] there is none."""
    config = build_config(_raw(tmp_path, redis="unix:/run/redis.sock"))
    assert config.cluster is not None
    assert (config.cluster["key_prefix"], config.cluster["heartbeat"], config.cluster["node_ttl"],
            config.cluster["lease_ttl"], config.cluster["redis_timeout"]) == ("tlsmta:", 5.0, 15.0, 30.0, 0.5)
    raw = _raw(tmp_path)
    del raw["cluster"]
    assert build_config(raw).cluster is None


@pytest.mark.parametrize("cluster, key, why", [
    ({}, "redis", "is required"),
    ({"redis": "http://x"}, "redis", "redis://"),
    ({"redis": "unix:/r.sock", "heartbeat": "10s", "node_ttl": "5s"}, "node_ttl", "longer than heartbeat"),
    ({"redis": "unix:/r.sock", "lease_ttl": 2}, "lease_ttl", "longer than heartbeat"),
    ({"redis": "unix:/r.sock", "nodes": 3}, "nodes", "unknown"),
])
def test_cluster_problems_name_table_and_key(tmp_path: Any, cluster: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_config(_raw(tmp_path, **cluster))
    (problem,) = e.value.problems
    assert (problem.table, problem.key) == ("cluster", key)
    assert why in str(problem)


def test_cluster_max_connections_lives_in_the_delivery_scopes(tmp_path: Any) -> None:
    """Like max_connections: global, binding and domain scopes; resolved per (binding, domain)."""
    from tlsmta.config import resolve

    raw = _raw(tmp_path, redis="unix:/r.sock")
    raw["global"]["cluster_max_connections"] = 10
    raw["domain"] = {"small.example": {"cluster_max_connections": 2}}
    config = build_config(raw)
    assert resolve(config, "small.example")["cluster_max_connections"].value == 2
    assert resolve(config, "big.example")["cluster_max_connections"].value == 10
    raw["global"]["cluster_max_connections"] = 0
    with pytest.raises(ConfigError, match="at least 1"):
        build_config(raw)


def test_local_share_is_one_nth_and_never_zero() -> None:
    assert [local_share(12, n) for n in (1, 2, 3, 20)] == [12, 6, 4, 1]
    assert local_share(2, 3) == 1  # every node keeps delivering (docs/scaling.md: then the fleet may exceed it)
    assert local_share(5, 0) == 5


def test_fleet_size_is_the_largest_recent_membership() -> None:
    """A Redis restarted empty lists one node at first: the share must not jump to the whole cap."""
    health = RedisHealth(EventBus(), "n1", node_ttl=15)
    assert health.fleet_size == 1
    health.recovered(3, now=100)
    health.recovered(1, now=101)
    assert health.fleet_size == 3
    health.recovered(1, now=116)
    assert health.fleet_size == 1


def test_lease_key_groups_a_smarthost_whatever_the_domain() -> None:
    assert lease_key("b1", parse_route("mx"), "example.org") == "b1/example.org"
    assert lease_key("b1", parse_route("smtp:relay.example.net:587"), "a.example") == "b1/smtp:relay.example.net:587"


def test_local_leases_cap_and_serve_waiters_in_order() -> None:
    """One node alone: at most cap leases per key; a released lease goes to the first waiter; an
    uncapped acquire is granted at once and counts nothing (today's behaviour)."""
    leases = LocalLeases(Clock())
    first, second = leases.acquire("k", 2), leases.acquire("k", 2)
    waiting, behind = leases.acquire("k", 2), leases.acquire("k", 2)
    assert first.called and second.called and not waiting.called
    assert leases.acquire("other", 2).called
    first.result.release()
    first.result.release()  # twice: no effect
    assert waiting.called and not behind.called
    assert leases.held["k"] == 2
    behind.cancel()
    behind.addErrback(lambda f: f.trap(CancelledError))
    second.result.release()
    waiting.result.release()
    assert "k" not in leases.held
    free = leases.acquire("k", None)
    assert free.called and "k" not in leases.held


def test_gcra_lets_a_burst_go_then_one_per_interval() -> None:
    """600/1h: 600 at once, then one every 6 s; waiting out the period refills the burst."""
    rate, gcra = Rate(600, 3600), Gcra()
    assert [gcra.wait(rate, 1000.0) for _ in range(600)] == [0.0] * 600
    assert gcra.wait(rate, 1000.0) == pytest.approx(6.0)
    assert gcra.wait(rate, 1006.0) == 0.0
    assert gcra.wait(rate, 1006.0) == pytest.approx(6.0)
    assert [gcra.wait(rate, 5000.0) for _ in range(600)] == [0.0] * 600


def test_a_rate_share_is_one_nth() -> None:
    assert Rate(600, 3600).share(3) == Rate(200, 3600)
    assert Rate(2, 60).share(3) == Rate(1, 60)


def test_cluster_message_rate_is_n_per_period(tmp_path: Any) -> None:
    from tlsmta.config import resolve

    raw = _raw(tmp_path, redis="unix:/r.sock")
    raw["global"]["cluster_message_rate"] = "600/1h"
    assert resolve(build_config(raw), "x.example")["cluster_message_rate"].value == (600, 3600.0)
    for bad in ("600", "0/1h", "x/1h", "6/never"):
        raw["global"]["cluster_message_rate"] = bad
        with pytest.raises(ConfigError, match="cluster_message_rate"):
            build_config(raw)


def test_local_pacing_waits_on_the_clock() -> None:
    """One node alone: past the burst, the next message fires after the interval, not before."""
    clock = Clock()
    leases = LocalLeases(clock)
    assert leases.pace("k", (2, 10.0)).called and leases.pace("k", (2, 10.0)).called
    third = leases.pace("k", (2, 10.0))
    clock.advance(4.9)
    assert not third.called
    clock.advance(0.1)
    assert third.called
    assert leases.pace("k", None).called


@pytest_twisted.ensureDeferred
async def test_broken_tls_learnt_by_one_node_serves_the_others(redis: RedisServer) -> None:
    """Node A remembers a host's failed handshake; node B knows it after its refresh, until it expires."""
    client = Redis(reactor, parse_redis_url(redis.url), timeout=2)
    keys = Keys("fleet-a:")
    try:
        a = RedisBrokenTLS(client, keys, RedisHealth(EventBus(), "a", 15))
        b = RedisBrokenTLS(client, keys, RedisHealth(EventBus(), "b", 15))
        now = time.time()
        a.remember("mx.example.org:25", BrokenTLS("handshake failed: bad record mac", now, now + 600))
        a.remember("gone.example.org:25", BrokenTLS("old", now - 700, now - 100))
        assert b.get("mx.example.org:25", now) is None
        await b.refresh()
        assert b.get("mx.example.org:25", now) == BrokenTLS("handshake failed: bad record mac", now, now + 600)
        assert b.get("gone.example.org:25", now) is None
        assert b"gone.example.org:25" not in redis.command("HKEYS", "fleet-a:broken")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_redis_down_falls_back_to_the_local_share_within_the_timeout(tmp_path: Any) -> None:
    """No Redis at all: the first lease waits at most redis_timeout, then the node grants its share
    (1/N of the cap) and says so once; past the share it waits."""
    events: list[tuple[str, dict[str, Any]]] = []
    bus = EventBus()
    bus.add_sink(lambda event, fields: events.append((event, fields)))
    health = RedisHealth(bus, "n1", 15)
    health.recovered(3, reactor.seconds())  # the last membership: three nodes
    client = Redis(reactor, RedisAddress(RedisTransport.UNIX, path=str(tmp_path / "absent.sock")), timeout=0.3)
    leases = RedisLeases(reactor, client, Keys("t:"), health, lease_ttl=30)
    try:
        started = time.monotonic()
        granted = [await leases.acquire("default/example.org", 6) for _ in range(2)]
        assert time.monotonic() - started < 2  # one timeout, not one per lease
        third = leases.acquire("default/example.org", 6)
        assert not third.called
        assert [fields["state"] for event, fields in events if event == "cluster_redis"] == ["down"]
        assert [event for event, _ in events].count("cluster_local_lease") == 2
        granted[0].release()
        await third
        third.result.release()
        granted[1].release()
        assert not leases.held
    finally:
        await client.close()


def test_fleet_aggregates_add_up_per_domain_and_policy() -> None:
    """Two nodes' days summed: sessions per policy, failure details per key (first reason kept)."""
    from tlsmta.reporting import aggregate_to_json, merge_aggregates
    from tlsmta.reporting._tlsrpt import FailureKey, PolicyStats

    key = FailureKey("certificate-expired", "mx.example.org", None, "192.0.2.1")
    a = {"example.org": [PolicyStats("sts", ("mode: enforce",), ("mx.example.org",), 5, 1, {key: [1, "expired"]})]}
    b = {"example.org": [PolicyStats("sts", ("mode: enforce",), ("mx.example.org",), 2, 2, {key: [2, "later"]})],
         "other.example": [PolicyStats("no-policy-found", (), (), 1)]}
    merged = merge_aggregates([aggregate_to_json(a), aggregate_to_json(b)])
    [sts] = merged["example.org"]
    assert (sts.successes, sts.failures, sts.details) == (7, 3, {key: [3, "expired"]})
    assert merged["other.example"][0].successes == 1


def test_a_reload_names_cluster_changes_as_needing_a_restart(tmp_path: Any) -> None:
    """A fleet is joined at start: SIGHUP keeps the running [cluster] and says a restart applies it,
    without showing the Redis password."""
    from tlsmta.app._reload_plan import keeping_fixed, plan, running_of

    alone = build_config(_raw(tmp_path, redis="unix:/r.sock"))
    raw = _raw(tmp_path, redis="redis://:s3cret@10.0.0.5:6379/1", node_id="mx2")
    joined = build_config(raw)
    steps = plan(running_of(alone), running_of(joined))
    assert steps.restart_required == ("[cluster]",)
    [line] = steps.restarts(running_of(alone), running_of(joined))
    assert "redis=redis://10.0.0.5:6379/1" in line and "node_id=mx2" in line and "s3cret" not in line
    assert keeping_fixed(joined, alone).cluster == alone.cluster


def test_redis_down_and_local_leases_show_in_the_metrics() -> None:
    """The cluster_redis events set tlsmta_cluster_redis_up per node; each local lease counts."""
    from tlsmta.reporting import Metrics

    metrics = Metrics()
    metrics.handle("cluster_redis", {"node": "mx1", "state": "down", "nodes": 3})
    metrics.handle("cluster_local_lease", {"key": "default/example.org"})
    metrics.handle("cluster_local_lease", {"key": "default/example.org"})
    sample = metrics.registry.get_sample_value
    assert sample("tlsmta_cluster_redis_up", {"node": "mx1"}) == 0
    assert sample("tlsmta_cluster_local_leases_total") == 2
    metrics.handle("cluster_redis", {"node": "mx1", "state": "up", "nodes": 3})
    assert sample("tlsmta_cluster_redis_up", {"node": "mx1"}) == 1


@pytest_twisted.ensureDeferred
async def test_rediss_checks_the_servers_certificate(redis: RedisServer, pki: Any) -> None:
    """rediss:// to a TLS front of the real Redis: with redis_ca the certificate's CA, commands
    work; with another CA the handshake fails and the call is RedisUnavailable within the timeout."""
    from redis_lab import start_tls_front

    from tlsmta.cluster import RedisUnavailable

    front = await start_tls_front(redis, pki.good)
    address = parse_redis_url(f"rediss://127.0.0.1:{front.getHost().port}/0")
    trusted = Redis(reactor, address, timeout=5, ca_file=pki.ca_pem)
    untrusted = Redis(reactor, address, timeout=1, ca_file=pki.other_ca_pem)
    try:
        assert await trusted.call("set", "tls-key", "over tls") == "OK"
        assert await trusted.call("get", "tls-key") == "over tls"
        with pytest.raises(RedisUnavailable):
            await untrusted.call("get", "tls-key")
    finally:
        await trusted.close()
        await untrusted.close()
        await front.stopListening()


def test_cluster_commands_exit_codes(tmp_path: Any) -> None:
    """check-config names file, table and key of a bad [cluster] (78); `cluster status` with no
    Redis answering says so (69); without [cluster] it is a configuration error (78)."""
    import subprocess
    import sys

    def tlsmta(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tlsmta.app.cli", *args], capture_output=True, text=True, timeout=60)

    base = f'[global]\nstate_dir = "{tmp_path}"\n[spool]\npath = "{tmp_path}/spool"\n'
    bad = tmp_path / "bad.toml"
    bad.write_text(base + "[cluster]\nnode_id = \"mx1\"\n")
    result = tlsmta("check-config", str(bad))
    assert result.returncode == 78 and f"{bad}: [cluster] redis: is required" in result.stderr
    down = tmp_path / "down.toml"
    down.write_text(base + f'[cluster]\nredis = "unix:{tmp_path}/none.sock"\nredis_timeout = "0.2s"\n')
    result = tlsmta("cluster", "status", "--config", str(down))
    assert result.returncode == 69 and f"unix:{tmp_path}/none.sock?db=0" in result.stdout
    alone = tmp_path / "alone.toml"
    alone.write_text(base)
    assert tlsmta("cluster", "status", "--config", str(alone)).returncode == 78


@pytest_twisted.ensureDeferred
async def test_a_stopping_node_starts_no_waiting_session(redis: RedisServer) -> None:
    """A session waiting for the fleet's last lease never starts once the node is stopping, even
    when the lease comes free (its jobs stay queued on disk)."""
    from twisted.internet.task import deferLater

    from tlsmta.cluster._leases import RETRY

    client = Redis(reactor, parse_redis_url(redis.url), timeout=2)
    leases = RedisLeases(reactor, client, Keys("stop:"), RedisHealth(EventBus(), "n1", 15), lease_ttl=30)
    try:
        held = await leases.acquire("default/example.org", 1)
        waiting = leases.acquire("default/example.org", 1)
        await deferLater(reactor, RETRY * 2, lambda: None)
        assert not waiting.called
        leases.closed = True
        held.release()
        await deferLater(reactor, RETRY * 3, lambda: None)
        assert not waiting.called
    finally:
        waiting.cancel()
        waiting.addErrback(lambda f: f.trap(CancelledError))
        await client.close()
