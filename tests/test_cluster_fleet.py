"""A fleet of tlsmta nodes on one real redis-server (issue 18): three nodes delivering to one
smarthost never hold more connections than its ``cluster_max_connections``, all together; a
node killed with -9 frees its leases within ``lease_ttl``; Redis killed and restarted in the
middle of the load loses no message; ``tlsmta cluster status`` lists the nodes."""

from __future__ import annotations

import datetime
import gzip
import json
import sys
import time
from typing import Any

import pytest_twisted
from e2e import eventually, in_thread, maildir_messages, run_process, send_smtplib
from processes import TlsmtaProcess
from redis_lab import CountingSink, RedisServer, start_sink
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tlsmta.cluster import Keys, Redis, fleet_status
from tlsmta.config import RedisAddress, RedisTransport
from tlsmta.testing import RunningRelay, build_config, dev_listener

CAP = 3  # one per node while Redis is away (1/3 each): a slow Redis reply cannot break the cap
HEARTBEAT = 0.3
LEASE_TTL = 2.0


def node_raw(tmp_path: Any, name: str, redis_url: str, sink_port: int, cap: int | None = CAP, rate: str | None = None,
             **cluster: Any) -> dict[str, Any]:
    """One node's configuration: mail for anywhere to the sink, one message per connection."""
    options: dict[str, Any] = {"cluster_max_connections": cap} if cap else {}
    if rate:
        options["cluster_message_rate"] = rate
    return {
        "global": {"hostname": f"{name}.test", "state_dir": str(tmp_path / f"{name}-state"),
                   "route": f"smtp:127.0.0.1:{sink_port}", "max_messages_per_connection": 1, **options},
        "spool": {"path": str(tmp_path / f"{name}-spool")},
        "queue": {"retry_schedule": [1]},
        "listener": [dev_listener(name="submit")],
        "cluster": {"redis": redis_url, "node_id": name, "heartbeat": HEARTBEAT, "node_ttl": 5,
                    "lease_ttl": LEASE_TTL, "redis_timeout": 1.0, **cluster},
    }


async def start_fleet(tmp_path: Any, redis: RedisServer, sink_port: int, count: int = 3, cap: int | None = CAP,
                      rate: str | None = None) -> list[RunningRelay]:
    return [await RunningRelay(build_config(node_raw(tmp_path, f"node{i}", redis.url, sink_port, cap, rate))).start()
            for i in range(1, count + 1)]


async def submit(nodes: list[RunningRelay], per_node: int) -> list[str]:
    """``per_node`` messages into each node (one subject each); returns the subjects."""
    subjects = []
    for n in range(per_node):
        for i, node in enumerate(nodes):
            subject = f"m{i}-{n}"
            await in_thread(send_smtplib, node.port, rcpts=("user@dest.test",), body=f"Subject: {subject}\r\n\r\nhi\r\n")
            subjects.append(subject)
    return subjects


def queued(nodes: list[RunningRelay]) -> int:
    return sum(node.service.queue.stats()[0] for node in nodes)


async def deliver_through_fleet(tmp_path: Any, redis: RedisServer, per_node: int, delay: float = 0.0,
                                cap: int | None = CAP, rate: str | None = None) -> CountingSink:
    """Three nodes, each given ``per_node`` messages for the sink; returns the sink once it took them all."""
    sink, port = await start_sink(delay)
    nodes = await start_fleet(tmp_path, redis, port.getHost().port, cap=cap, rate=rate)
    try:
        subjects = await submit(nodes, per_node)
        await eventually(lambda: len(sink.subjects) == len(subjects), timeout=60)
        assert sorted(sink.subjects) == sorted(subjects)
        return sink
    finally:
        for node in nodes:
            await node.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_fleet_never_exceeds_the_destination_cap(tmp_path: Any, redis: RedisServer) -> None:
    """Three nodes, a slow receiver, 24 messages: the receiver never sees more than CAP connections
    at once (each node alone would open up to max_connections), and takes every message."""
    sink = await deliver_through_fleet(tmp_path, redis, per_node=8, delay=0.15)
    assert sink.peak == CAP


@pytest_twisted.ensureDeferred
async def test_without_a_fleet_cap_the_nodes_add_up(tmp_path: Any, redis: RedisServer) -> None:
    """The control for the test above: the same load without cluster_max_connections opens more
    than CAP connections at once (so the cap is what held it down)."""
    sink = await deliver_through_fleet(tmp_path, redis, per_node=8, delay=0.15, cap=None)
    assert sink.peak > CAP


@pytest_twisted.ensureDeferred
async def test_the_fleet_keeps_the_destination_rate(tmp_path: Any, redis: RedisServer) -> None:
    """cluster_message_rate "4/1s" over three nodes: a burst of 4, then one message (MAIL FROM)
    every 0.25 s at most, whichever node sends it: 12 messages take at least 2 s."""
    sink = await deliver_through_fleet(tmp_path, redis, per_node=4, rate="4/1s")
    times = sorted(sink.mail_times)
    interval, burst = 0.25, 4
    for i in range(burst, len(times)):  # past the burst, message i goes (i - burst + 1) intervals after the first
        assert times[i] - times[0] >= (i - burst + 1) * interval * 0.95


@pytest_twisted.ensureDeferred
async def test_redis_killed_and_restarted_mid_load_loses_nothing(tmp_path: Any, redis: RedisServer, events: Any) -> None:
    """Redis dies with -9 while the fleet delivers and comes back empty: every message accepted
    is delivered, the nodes said Redis was down (local limits) and up again."""
    sink, port = await start_sink(delay=0.05)
    nodes = await start_fleet(tmp_path, redis, port.getHost().port)
    try:
        subjects = await submit(nodes, per_node=4)
        await eventually(lambda: len(sink.subjects) >= 2, timeout=30)
        await eventually(lambda: all(node.service.cluster.health.fleet_size == 3 for node in nodes))  # the last known membership
        redis.kill9()
        more = [f"late-{i}" for i in range(6)]
        for i, subject in enumerate(more):
            await in_thread(send_smtplib, nodes[i % 3].port, rcpts=("user@dest.test",), body=f"Subject: {subject}\r\n\r\nhi\r\n")
        await eventually(lambda: {e["node"] for e in events if e["tlsmta_event"] == "cluster_redis" and e.get("state") == "down"}
                         == {"node1", "node2", "node3"})
        redis.restart()
        await eventually(lambda: len(sink.subjects) >= len(subjects) + len(more) and queued(nodes) == 0, timeout=60)
        assert sorted(set(sink.subjects)) == sorted(subjects + more)
        await eventually(lambda: sum(1 for e in events if e["tlsmta_event"] == "cluster_redis" and e.get("state") == "up") == 3,
                         timeout=30)
        down = [e for e in events if e["tlsmta_event"] == "cluster_redis" and e.get("state") == "down"]
        assert {e["node"] for e in down} == {"node1", "node2", "node3"}
        assert all(e["nodes"] == 3 for e in down)  # 1/3 of the cap each, from the last membership
    finally:
        for node in nodes:
            await node.stop()
        await port.stopListening()


def node_toml(tmp_path: Any, name: str, redis_url: str, sink_port: int) -> str:
    """node_raw's node as a file, for a twistd node and the command line; shutdown_grace 0, so a
    stop does not wait for the sessions a test's receiver holds."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[global]
hostname = "{name}.test"
state_dir = "{tmp_path}/{name}-state"
route = "smtp:127.0.0.1:{sink_port}"
max_messages_per_connection = 1
cluster_max_connections = {CAP}
[spool]
path = "{tmp_path}/{name}-spool"
[control]
shutdown_grace = 0
[[listener]]
name = "submit"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "no"
relay_networks = ["127.0.0.0/8"]
[cluster]
redis = "{redis_url}"
node_id = "{name}"
heartbeat = {HEARTBEAT}
node_ttl = 5
lease_ttl = {LEASE_TTL}
redis_timeout = 1.0
""")
    return str(path)


@pytest_twisted.ensureDeferred
async def test_a_node_killed_with_9_frees_its_leases_within_the_ttl(tmp_path: Any, redis: RedisServer) -> None:
    """A twistd node holds CAP connections to a receiver that never answers; killed with -9 it
    renews nothing, and its leases are gone from Redis within lease_ttl; a live node then delivers."""
    sink, port = await start_sink()
    sink.hold = True
    proc = TlsmtaProcess(str(tmp_path), "--config", node_toml(tmp_path, "doomed", redis.url, port.getHost().port))
    client = Redis(reactor, RedisAddress(RedisTransport.UNIX, path=redis.socket), timeout=2)
    keys = Keys("tlsmta:")
    try:
        for n in range(3 * CAP):  # enough waiting jobs for a second session (Destination.wants_session)
            await in_thread(send_smtplib, proc.port, rcpts=("user@dest.test",), body=f"Subject: held-{n}\r\n\r\nhi\r\n")
        await eventually(lambda: sink.current == CAP, timeout=30)
        status = await fleet_status(client, keys)
        assert [node.node_id for node in status.nodes] == ["doomed"]
        (held,) = status.leases.values()
        assert len(held) == CAP and all(member.startswith("doomed#") for member in held)
        proc.kill9()
        killed_at = time.monotonic()
        sink.close_all()

        async def leases_left() -> int:
            return sum(len(v) for v in (await fleet_status(client, keys)).leases.values())

        while await leases_left():
            assert time.monotonic() - killed_at < LEASE_TTL + 1, "leases outlived lease_ttl"
            await deferLater(reactor, 0.1, lambda: None)
        assert time.monotonic() - killed_at <= LEASE_TTL + 1

        sink.hold = False
        live = await RunningRelay(build_config(node_raw(tmp_path, "live", redis.url, port.getHost().port))).start()
        try:
            await in_thread(send_smtplib, live.port, rcpts=("user@dest.test",), body="Subject: after\r\n\r\nhi\r\n")
            await eventually(lambda: "after" in sink.subjects, timeout=30)
        finally:
            await live.stop()
    finally:
        proc.stop()
        await client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_cluster_status_lists_the_nodes_and_their_queues(tmp_path: Any, redis: RedisServer) -> None:
    """`tlsmta cluster status` reads Redis (not the nodes): each live node with its queue size."""
    sink, port = await start_sink()
    sink.hold = True
    nodes = await start_fleet(tmp_path, redis, port.getHost().port, count=2)
    config = node_toml(tmp_path, "node1", redis.url, port.getHost().port)
    try:
        await in_thread(send_smtplib, nodes[1].port, rcpts=("user@dest.test",), body="Subject: waits\r\n\r\nhi\r\n")
        await eventually(lambda: sink.current == 1, timeout=30)
        await nodes[1].service.cluster.heartbeat()
        code, stdout, stderr = await run_process(sys.executable, "-m", "tlsmta.app.cli", "cluster", "status", "--config", config, "--json")
        assert code == 0, stderr
        status = json.loads(stdout)
        assert {n["node_id"]: n["queue"] for n in status["nodes"]} == {"node1": 0, "node2": 1}
        assert [m.split("#")[0] for m in status["leases"]["default/smtp:127.0.0.1:%d" % port.getHost().port]] == ["node2"]
        code, stdout, _ = await run_process(sys.executable, "-m", "tlsmta.app.cli", "cluster", "status", "--config", config)
        assert code == 0 and "node1" in stdout and "node2" in stdout
    finally:
        sink.close_all()
        for node in nodes:
            await node.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_one_tlsrpt_report_per_domain_per_day_with_the_fleets_sessions(tmp_path: Any, redis: RedisServer,
                                                                             events: Any) -> None:
    """Three nodes each saw yesterday's sessions to one domain; all three run their daily reports at
    once: exactly one report goes out, and it counts every node's sessions."""
    from twisted.internet.defer import ensureDeferred, gatherResults

    from tlsmta.reporting import TLSRPTStore, store_directory

    yesterday = datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)
    reports = tmp_path / "reports"
    nodes = []
    for i in range(1, 4):
        raw = node_raw(tmp_path, f"node{i}", redis.url, 9)
        raw["dns"] = {"txt": {"_smtp._tls.example.test": ["v=TLSRPTv1; rua=mailto:tls-reports@reports.test"]}}
        raw["domain"] = {"reports.test": {"route": f"maildir:{reports}"}}
        store = TLSRPTStore(store_directory(raw["global"]["state_dir"]))
        store.record("example.test", yesterday, "no-policy-found", [], "mx.example.test", True)
        if i == 3:
            store.record("example.test", yesterday, "no-policy-found", [], "mx.example.test", False,
                         result_type="certificate-expired", receiving_ip="192.0.2.25", reason="certificate has expired")
        nodes.append(await RunningRelay(build_config(raw)).start())
    try:
        await eventually(lambda: all(node.service.cluster.health.fleet_size == 3 for node in nodes))
        sent = await gatherResults([ensureDeferred(node.service.tlsrpt.send_due()) for node in nodes])
        assert sorted(sent) == [0, 0, 1]
        assert [await node.service.tlsrpt.send_due() for node in nodes] == [0, 0, 0]  # and never again
        for node in nodes:
            await node.service.queue.wait_idle()
        assert [e["domain"] for e in events if e["tlsmta_event"] == "tlsrpt_report"] == ["example.test"]
        [mail] = maildir_messages(str(reports))
        [attachment] = [p for p in mail.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
        [policy] = json.loads(gzip.decompress(attachment.get_payload(decode=True)))["policies"]
        assert policy["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 1}
        assert policy["failure-details"][0]["result-type"] == "certificate-expired"
    finally:
        for node in nodes:
            await node.stop()


@pytest_twisted.ensureDeferred
async def test_an_mta_sts_policy_one_node_fetched_serves_the_others(tmp_path: Any, redis: RedisServer, pki: Any) -> None:
    """Two nodes deliver to an MTA-STS enforce domain one after the other: the policy is fetched
    once (by the first), the second applies it from the fleet's cache and delivers verified."""
    from outbound_lab import DOMAIN, MX, start_receiver, submit_and_settle
    from sts_lab import POLICY_HOST, policy_text, start_policy_server, sts_dns

    server = start_policy_server(pki.ca, policy_text("enforce"))
    rx = await start_receiver(tmp_path, pki.good)
    dns = sts_dns()
    dns.update(mx={DOMAIN: [MX]}, hosts={MX: ["127.0.0.1"], POLICY_HOST: ["127.0.0.1"]})
    nodes = []
    try:
        for i in (1, 2):
            raw = node_raw(tmp_path, f"node{i}", redis.url, 9, cap=None)
            raw["global"].update(route="mx", smtp_port=rx.port, tls_ca=pki.ca_pem, mta_sts_https_port=server.port)
            raw["dns"] = dns
            nodes.append(await RunningRelay(build_config(raw)).start())
        for node in nodes:
            await submit_and_settle(node, rcpts=(f"user@{DOMAIN}",))
        assert len(server.resource.requests) == 1
        assert len(maildir_messages(str(tmp_path / "receiver-maildir"))) == 2
    finally:
        for node in nodes:
            await node.stop()
        await rx.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_broken_tls_one_node_learnt_is_skipped_by_the_others(tmp_path: Any, redis: RedisServer, events: Any) -> None:
    """tls_remember_broken: node1's handshake with a broken STARTTLS fails (plain-text retry);
    after its next heartbeat node2 goes straight to plain text there (tls_fallback=remembered-broken)."""
    from outbound_lab import DOMAIN, MX, deliveries, start_scripted, submit_and_settle

    from tlsmta.delivery._broken_tls import REMEMBERED_BROKEN

    factory, port = await start_scripted("broken")
    nodes = []
    try:
        for i in (1, 2):
            raw = node_raw(tmp_path, f"node{i}", redis.url, 9, cap=None)
            raw["global"].update(route="mx", smtp_port=port.getHost().port, tls="ifavailable", tls_remember_broken="1h",
                                 mta_sts=False, dane=False)
            raw["dns"] = {"mx": {DOMAIN: [MX]}, "hosts": {MX: ["127.0.0.1"]}}
            nodes.append(await RunningRelay(build_config(raw)).start())
        await submit_and_settle(nodes[0], rcpts=(f"user@{DOMAIN}",))
        assert (factory.starttls, len(factory.messages)) == (1, 1)
        await nodes[1].service.cluster.heartbeat()
        await submit_and_settle(nodes[1], rcpts=(f"user@{DOMAIN}",))
        assert (factory.starttls, len(factory.messages)) == (1, 2)
        first, second = deliveries(events)
        assert first["result"] == second["result"] == "delivered"
        assert (second["tls"], second["tls_fallback"]) == ("none", REMEMBERED_BROKEN)
    finally:
        for node in nodes:
            await node.stop()
        await port.stopListening()
