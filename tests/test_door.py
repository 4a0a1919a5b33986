"""At the door of the MX: pregreet test, DNSBL score, connection and message rates."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from e2e import eventually, in_thread, maildir_messages, send_smtplib
from inbound_harness import Session, runtime
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import client
from unbound_lab import SignedZone

from tlsmta.config import ConfigError, DnsblZone, Rate
from tlsmta.config._door import parse_dnsbl, parse_rate
from tlsmta.discovery import DNSPermanent, Resolver
from tlsmta.inbound._dnsbl import check, listed, query_name
from tlsmta.inbound._ratelimit import PRUNE_EVERY, RateLimiter
from tlsmta.inbound._server import InboundFactory
from tlsmta.reporting import EventBus
from tlsmta.smtp.server_session import Close, Send, ServerSession, ServerSettings
from tlsmta.testing import RunningRelay, build_config, dev_listener

CLIENT = "192.0.2.7"


# -- pure parts ----------------------------------------------------------------


def test_rates_parse_as_count_per_period() -> None:
    """ "30/1m", "100/1h", "5/10s" and "100/h" are token buckets; nonsense is a ValueError naming the form."""
    assert parse_rate("30/1m") == Rate(30, 60.0)
    assert parse_rate("100/1h") == Rate(100, 3600.0)
    assert parse_rate(" 5 / 10s ") == Rate(5, 10.0)
    assert parse_rate("100/h") == Rate(100, 3600.0)
    for bad in ("30", "30/1x", "0/1m", 30, "1/0s"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_token_bucket_allows_a_burst_then_refills_evenly() -> None:
    """3/30s: three at once, the fourth refused; ten seconds later one more, not two."""
    limiter, rate = RateLimiter(), Rate(3, 30.0)
    assert [limiter.take("a", rate, 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.take("b", rate, 0.0)  # another key has its own bucket
    assert [limiter.take("a", rate, 10.0) for _ in range(2)] == [True, False]
    assert limiter.take("a", rate, 100.0)


def test_full_buckets_are_forgotten() -> None:
    """Clients not seen for a whole period leave no state behind (memory follows recent clients)."""
    limiter, rate = RateLimiter(), Rate(2, 1.0)
    for i in range(PRUNE_EVERY - 1):
        limiter.take(f"client{i}", rate, 0.0)
    assert len(limiter) == PRUNE_EVERY - 1
    limiter.take("late", rate, 5.0)
    assert len(limiter) == 1


def test_dnsbl_query_names() -> None:
    """RFC 5782: IPv4 octets and IPv6 nibbles reversed under the zone; a v4-mapped address as IPv4."""
    assert query_name("192.0.2.7", "zen.example") == "7.2.0.192.zen.example"
    assert query_name("::ffff:192.0.2.7", "zen.example") == "7.2.0.192.zen.example"
    assert query_name("2001:db8::1", "bl.example") == "1.0.0.0." + "0.0.0.0." * 5 + "8.b.d.0.1.0.0.2.bl.example"


def test_only_loopback_answers_mean_listed() -> None:
    """127.0.0.0/8 is a listing; anything else (a wildcarding ISP resolver) is not."""
    assert listed(["127.0.0.2"])
    assert not listed(["192.0.2.1"])
    assert not listed([])


def test_dnsbl_entries_parse() -> None:
    """Zones are canonical names with integer weights (1 by default); other shapes are refused."""
    assert parse_dnsbl([{"zone": "Zen.Example.", "weight": 2}, {"zone": "b.example"}]) == (
        DnsblZone("zen.example", 2), DnsblZone("b.example", 1))
    for bad in ("zen.example", [{"zone": "z.example", "weight": "2"}], [{"zone": "z.example", "score": 2}], [{}]):
        with pytest.raises(ValueError):
            parse_dnsbl(bad)


def test_bad_door_options_name_table_and_key() -> None:
    """check-config problems name the listener table and the key."""
    with pytest.raises(ConfigError) as caught:
        build_config({"listener": [dev_listener(max_message_rate="lots", dnsbl=[{"zone": 3}], pregreet_wait="soon")]})
    problems = caught.value.problems
    assert sorted(p.key or "" for p in problems) == ["dnsbl", "max_message_rate", "pregreet_wait"]
    assert {p.table for p in problems} == {problems[0].table} and "test" in problems[0].table
    assert all(p.file == "<test>" for p in problems)


def _score(zones: list[DnsblZone], answers: dict[str, Any], events: list[tuple[str, dict[str, Any]]] | None = None) -> Any:
    bus = EventBus()
    if events is not None:
        bus.add_sink(lambda event, fields: events.append((event, fields)))

    def lookup(name: str) -> Deferred[list[str]]:
        answer = answers.get(name, DNSPermanent(f"{name}: no such domain"))
        if isinstance(answer, Deferred):
            return answer
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)

    clock = Clock()
    found: list[Any] = []
    check(CLIENT, zones, lookup, clock, 2.0, bus, "mx").addCallback(found.append)
    return found, clock


def test_dnsbl_score_adds_the_weights_of_listing_zones() -> None:
    """Two of three zones list the client: the score is their weights' sum; NXDOMAIN is silent."""
    zones = [DnsblZone("a.example", 2), DnsblZone("b.example", 1), DnsblZone("c.example", 5)]
    events: list[tuple[str, dict[str, Any]]] = []
    found, _ = _score(zones, {"7.2.0.192.a.example": ["127.0.0.2"], "7.2.0.192.b.example": ["127.0.0.4"]}, events)
    assert found[0].zones == ("a.example", "b.example") and found[0].score == 3
    assert found[0].blocked(3) and not found[0].blocked(4)
    assert events == []


def test_a_peer_without_an_ip_address_is_not_looked_up() -> None:
    """A UNIX-socket peer ("unknown") is in no blocklist: no lookup, score 0."""
    asked: list[str] = []
    found: list[Any] = []
    check("unknown", [DnsblZone("a.example")], lambda name: asked.append(name) or succeed([]), Clock(), 1.0,
          EventBus(), "mx").addCallback(found.append)
    assert asked == [] and found[0].score == 0


def test_dnsbl_that_does_not_answer_counts_as_not_listed_and_is_logged() -> None:
    """A zone that stalls is given up after the timeout: not listed, one dnsbl_failed line."""
    events: list[tuple[str, dict[str, Any]]] = []
    found, clock = _score([DnsblZone("slow.example", 5)], {"7.2.0.192.slow.example": Deferred()}, events)
    assert found == []
    clock.advance(2.0)
    assert found[0].score == 0 and not found[0].blocked(1)
    assert [(e, f["zone"]) for e, f in events] == [("dnsbl_failed", "slow.example")]


# -- the pure session's pregreet rule ----------------------------------------------------------


def test_session_refuses_a_client_that_talks_before_the_greeting() -> None:
    """Bytes before the held greeting: 554 5.5.1, then close; nothing of them is executed."""
    session = ServerSession(ServerSettings(hostname="mx.test"))
    session.hold_greeting()
    session.receive_data(b"EHLO spambot\r\nMAIL FROM:<a@b.example>\r\n")
    first, second = session.next_event(), session.next_event()
    assert isinstance(first, Send) and first.reply.code == 554 and first.reply.lines[0].startswith("5.5.1 ")
    assert isinstance(second, Close) and session.next_event() is None
    assert session.talked_early


def test_session_after_the_greeting_reads_commands() -> None:
    """Once greeted, the same input is SMTP as usual."""
    session = ServerSession(ServerSettings(hostname="mx.test"))
    session.hold_greeting()
    assert session.greet().code == 220
    session.receive_data(b"EHLO client.test\r\n")
    events = [session.next_event() for _ in range(2)]
    assert isinstance(events[1], Send) and events[1].reply.code == 250
    assert not session.talked_early


# -- the shell, on a fake transport and a Clock -------------------------------------------------


def _door_session(listener: dict[str, Any], peer: str = CLIENT, dns: dict[str, Any] | None = None,
                  factory: InboundFactory | None = None) -> tuple[Session, list[tuple[str, dict[str, Any]]]]:
    rt = runtime(listener={"relay_networks": ["10.9.0.0/16"], **listener}, extra={"dns": dns} if dns else None)
    rt.resolver = Resolver(rt.config.dns, backend=_NoBackend())
    events: list[tuple[str, dict[str, Any]]] = []
    rt.events.add_sink(lambda event, fields: events.append((event, fields)))
    session = Session(rt, peer=peer, factory=factory or InboundFactory(rt, Clock()))
    return session, events


class _NoBackend:
    """Any lookup not pinned is NXDOMAIN (the tests pin the listed names)."""

    def __getattr__(self, name: str) -> Any:
        from twisted.names import error

        return lambda *args, **kwargs: fail(error.DNSNameError(name))


def _refused(events: list[tuple[str, dict[str, Any]]]) -> str | None:
    return next(fields.get("refused") for event, fields in events if event == "disconnect")


def test_early_talker_is_refused_and_logged() -> None:
    """pregreet_wait: a client talking in the wait gets 554 5.5.1, is closed, and the disconnect line says why."""
    s, events = _door_session({"pregreet_wait": "1s"})
    assert s.new_replies() == []  # no greeting yet
    s.clock.advance(0.5)
    assert s.send(b"EHLO spambot\r\n") == ["554 5.5.1 Error: you talked before the greeting"]
    assert s.closed
    s.proto.connectionLost(None)
    assert _refused(events) == "pregreet: talked before the greeting"


def test_patient_client_is_greeted_after_the_wait() -> None:
    """A client that waits gets the 220 after pregreet_wait and goes on as usual."""
    s, _ = _door_session({"pregreet_wait": "1s"})
    s.clock.advance(0.99)
    assert s.new_replies() == []
    s.clock.advance(0.01)
    assert s.new_replies() == ["220 mx.test ESMTP tlsmta"]
    assert s.codes("EHLO client.test\r\n") == [250]


def test_relay_networks_skip_the_wait() -> None:
    """Our own networks are greeted at once, as Postfix exempts mynetworks from postscreen."""
    s, _ = _door_session({"pregreet_wait": "1s"}, peer="10.9.0.5")
    assert s.new_replies() == ["220 mx.test ESMTP tlsmta"]


DNSBL = {"dnsbl": [{"zone": "zen.example", "weight": 2}, {"zone": "other.example"}], "dnsbl_threshold": 3}


def test_listed_client_above_threshold_is_refused_with_the_zone() -> None:
    """Listed in both zones (2 + 1 >= 3): 554 5.7.1 naming the client and the zones, then close."""
    dns = {"hosts": {"7.2.0.192.zen.example": ["127.0.0.2"], "7.2.0.192.other.example": ["127.0.0.3"]}}
    s, events = _door_session(DNSBL, dns=dns)
    assert s.new_replies() == [
        "554 5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.example, other.example"]
    assert s.closed
    s.proto.connectionLost(None)
    assert _refused(events) == "dnsbl zen.example, other.example (score 3 >= 3)"


def test_listed_client_below_threshold_is_greeted() -> None:
    """One zone only (2 < 3): greeted; not listed anywhere: greeted."""
    s, _ = _door_session(DNSBL, dns={"hosts": {"7.2.0.192.zen.example": ["127.0.0.2"]}})
    assert s.new_replies() == ["220 mx.test ESMTP tlsmta"]
    clean, _ = _door_session(DNSBL, peer="192.0.2.8")
    assert clean.new_replies() == ["220 mx.test ESMTP tlsmta"]


def test_dnsbl_and_pregreet_wait_for_each_other() -> None:
    """The DNSBL answer is known at once, but the greeting still waits for pregreet_wait."""
    s, _ = _door_session({**DNSBL, "pregreet_wait": 2})
    assert s.new_replies() == []
    s.clock.advance(2)
    assert s.new_replies() == ["220 mx.test ESMTP tlsmta"]


def test_connection_rate_refuses_with_421_and_recovers() -> None:
    """max_connection_rate = 2/1m: the third connection in the minute is 421 4.7.0; later ones are back."""
    rt = runtime(listener={"max_connection_rate": "2/1m", "relay_networks": ["10.9.0.0/16"]})
    events: list[tuple[str, dict[str, Any]]] = []
    rt.events.add_sink(lambda event, fields: events.append((event, fields)))
    clock = Clock()
    factory = InboundFactory(rt, clock)
    firsts = [Session(rt, peer=CLIENT, factory=factory).new_replies()[0] for _ in range(3)]
    assert [line[:9] for line in firsts] == ["220 mx.te", "220 mx.te", "421 4.7.0"]
    assert "connection rate limit exceeded" in firsts[2]
    assert Session(rt, peer="10.9.0.1", factory=factory).new_replies()[0].startswith("220")  # exempt
    clock.advance(30)  # one token back
    assert Session(rt, peer=CLIENT, factory=factory).new_replies()[0].startswith("220")
    refusals = [fields.get("refused") for event, fields in events if event == "disconnect" and fields.get("refused")]
    assert refusals == []  # the sessions are still open; the refused one is logged when it goes
    factory.sessions.clear()


def test_message_rate_refuses_mail_with_450_and_logs_it() -> None:
    """max_message_rate = 2/1h: the third MAIL in the hour is 450 4.7.1, with a refused event; RSET does not help."""
    s, events = _door_session({"max_message_rate": "2/1h"})
    s.new_replies()
    s.ehlo()
    script = "MAIL FROM:<a@client.test>\r\nRSET\r\n" * 3
    assert s.codes(script) == [250, 250, 250, 250, 450, 250]
    refused = [fields for event, fields in events if event == "refused"]
    assert len(refused) == 1 and refused[0]["reason"].startswith("message rate limit exceeded")
    assert refused[0]["code"] == 450 and refused[0]["peer"] == CLIENT


# -- end to end: real sockets, a blocklist zone in a local unbound ---------------------------------


def _talk(port: int, source: str, early: bytes = b"", script: bytes = b"QUIT\r\n") -> bytes:
    """Connect from ``source`` (a loopback address) and talk at once (``early``), or after a 220 run ``script``:
    the replies after the 220 (or the refusal given instead of it)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0)) as conn:
        chunks = []
        if early:
            conn.sendall(early)
        else:
            chunks.append(conn.recv(4096))  # the greeting (or the refusal), when it comes
            if chunks[0].startswith(b"220 "):
                chunks = []
                conn.sendall(script)
        while chunk := conn.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


async def _relay(tmp_path: Any, listener: dict[str, Any], dns_backend: Any) -> RunningRelay:
    """A relay into tmp_path/maildir whose lookups go to ``dns_backend`` (a resolver the test started or holds)."""
    raw = {"global": {"hostname": "mx.example.test", "state_dir": str(tmp_path / "state"),
                      "route": f"maildir:{tmp_path / 'maildir'}"},
           "listener": [listener], "spool": {"path": str(tmp_path / "spool")}}
    return await RunningRelay(build_config(raw), dns_backend=dns_backend).start()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_door_over_loopback_with_a_blocklist_served_by_unbound(tmp_path: Any) -> None:
    """A listed client gets 554 5.7.1 naming the zone, an early talker 554 5.5.1, a patient unlisted one mail
    through (smtplib), the third connection in a minute 421 4.7.0; each refusal in a disconnect line."""
    zone = SignedZone(str(tmp_path / "zone"), "bl.example.test", ["2.0.0.127 IN A 127.0.0.2"]).start()
    listener = dev_listener(relay_networks=[], local_domains=["example.org"], pregreet_wait="0.3s",
                            dnsbl=[{"zone": "bl.example.test", "weight": 2}], dnsbl_threshold=2,
                            max_connection_rate="3/1m")
    relay = await _relay(tmp_path, listener, zone.twisted_backend())
    events: list[tuple[str, dict[str, Any]]] = []
    relay.service.events.add_sink(lambda event, fields: events.append((event, fields)))
    try:
        listed_reply = await in_thread(_talk, relay.port, "127.0.0.2")
        assert listed_reply == b"554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.example.test\r\n"
        early_reply = await in_thread(_talk, relay.port, "127.0.0.3", early=b"EHLO bot.example\r\n")
        assert early_reply == b"554 5.5.1 Error: you talked before the greeting\r\n"
        refused = await in_thread(send_smtplib, relay.port, rcpts=("carol@example.org",))
        assert refused == {}
        await eventually(lambda: len(maildir_messages(str(tmp_path / "maildir"))) == 1)
        over_rate = await in_thread(_talk, relay.port, "127.0.0.1")  # 127.0.0.1's second: under 3/1m
        assert over_rate.startswith(b"221")
        third = await in_thread(_talk, relay.port, "127.0.0.1")
        fourth = await in_thread(_talk, relay.port, "127.0.0.1")
        assert third.startswith(b"221") and fourth.startswith(b"421 4.7.0 ")
        await eventually(lambda: len([e for e, _ in events if e == "disconnect"]) == 6)
        reasons = [f.get("refused") for e, f in events if e == "disconnect"]
        assert reasons[0] == "dnsbl bl.example.test (score 2 >= 2)"
        assert reasons[1] == "pregreet: talked before the greeting"
        assert reasons[2:5] == [None, None, None]
        assert reasons[5].startswith("connection rate limit exceeded")
    finally:
        await relay.stop()
        zone.stop()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_blocklist_that_does_not_answer_lets_mail_in_and_is_logged(tmp_path: Any) -> None:
    """The DNSBL's server never answers (a UDP socket the test holds): after dnsbl_timeout the client is
    greeted and its mail accepted, and a dnsbl_failed line names the zone."""
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    listener = dev_listener(relay_networks=[], local_domains=["example.org"], dnsbl=[{"zone": "down.example.test"}],
                            dnsbl_timeout="0.5s")
    relay = await _relay(tmp_path, listener, client.Resolver(servers=[silent.getsockname()]))
    events: list[tuple[str, dict[str, Any]]] = []
    relay.service.events.add_sink(lambda event, fields: events.append((event, fields)))
    try:
        assert await in_thread(send_smtplib, relay.port, rcpts=("carol@example.org",)) == {}
        failed = [f for e, f in events if e == "dnsbl_failed"]
        assert failed and failed[0]["zone"] == "down.example.test" and failed[0]["peer"] == "127.0.0.1"
    finally:
        await relay.stop()
        silent.close()
