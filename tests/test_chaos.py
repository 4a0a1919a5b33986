"""Chaos: the dev relay's SMTP failures on purpose, as pure rules, in the session, and over loopback."""

from __future__ import annotations

import json
import smtplib
import subprocess
from typing import Any

import pytest
import pytest_twisted
from e2e import CLIENT_TIMEOUT, in_thread
from test_server_session import Driver
from test_webui import send, web, web_relay, welcome

from tlsmta.devrelay import ChaosError, ChaosRules
from tlsmta.smtp.server_session import Close, MessageRefused, Phase, ServerSettings, Stage

TRANSACTION = b"EHLO app.test\r\nMAIL FROM:<a@app.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n.\r\n"


def chaos_driver(rules: ChaosRules) -> Driver:
    return Driver(ServerSettings(hostname="mx.test", reply_override=rules))


# -- the rules, pure ------------------------------------------------------------------------


def test_rule_fires_at_its_stage_only_and_says_what_it_was_given() -> None:
    """A rule answers at its stage with its code, status and text; other stages go on."""
    rules = ChaosRules()
    rules.add("rcpt", 452, "mailbox full", "4.2.2")
    assert rules(Stage.MAIL, ()) is None
    reply = rules(Stage.RCPT, ("bob@example.org",))
    assert reply is not None and str(reply) == "452 4.2.2 mailbox full"


def test_times_counts_down_and_the_rule_goes() -> None:
    """times=2: the next two matching commands fail, then the rule is gone from the listing."""
    rules = ChaosRules()
    rules.add("RCPT", 450, times=2)
    assert rules.listing()[0]["times_left"] == 2
    assert [rules(Stage.RCPT, ("x@y",)) is not None for _ in range(3)] == [True, True, False]
    assert rules.listing() == []


def test_probability_asks_the_injected_random_source() -> None:
    """A rule with probability p fires when the random source says < p, and only then counts a time."""
    draws = iter([0.9, 0.2, 0.5])
    rules = ChaosRules(chance=lambda: next(draws))
    rules.add("MAIL", 451, probability=0.3, times=1)
    assert rules(Stage.MAIL, ()) is None  # 0.9
    assert rules(Stage.MAIL, ()) is not None  # 0.2: fires, and its one time is used
    assert rules(Stage.MAIL, ()) is None and rules.listing() == []


def test_recipient_glob_matches_case_insensitively() -> None:
    """recipient: a glob over the addresses the stage concerns (any of them at DATA)."""
    rules = ChaosRules()
    rules.add("RCPT", 550, recipient="*@Bounce.test")
    rules.add("DATA", 554, recipient="carol@*")
    assert rules(Stage.RCPT, ("bob@example.org",)) is None
    assert rules(Stage.RCPT, ("alice@bounce.TEST",)) is not None
    assert rules(Stage.DATA, ("bob@example.org", "Carol@example.org")) is not None
    assert rules(Stage.DATA, ("bob@example.org",)) is None


def test_each_firing_is_reported_with_its_recipients() -> None:
    """on_fire hears each time a rule answers (the service logs it), and only then."""
    fired: list[tuple[int, tuple[str, ...]]] = []
    rules = ChaosRules(on_fire=lambda rule, recipients: fired.append((rule.id, recipients)))
    rule = rules.add("RCPT", 452, recipient="*@full.test")
    rules(Stage.RCPT, ("bob@example.org",))
    rules(Stage.RCPT, ("ann@full.test",))
    assert fired == [(rule.id, ("ann@full.test",))]


def test_first_rule_added_answers() -> None:
    """Two rules at one stage: the first added wins; removing it lets the second answer."""
    rules = ChaosRules()
    first = rules.add("EHLO", 421)
    rules.add("EHLO", 554)
    assert rules(Stage.EHLO, ()).code == 421  # type: ignore[union-attr]
    assert rules.remove(first.id) and not rules.remove(first.id)
    assert rules(Stage.EHLO, ()).code == 554  # type: ignore[union-attr]
    assert rules.clear() == 1 and rules(Stage.EHLO, ()) is None


@pytest.mark.parametrize(
    "fields, complaint",
    [
        ({"stage": "HELO", "code": 450}, "stage must be one of CONNECT, EHLO, MAIL, RCPT, DATA, END-OF-DATA"),
        ({"stage": "RCPT", "code": 250}, "code must be an SMTP failure code"),
        ({"stage": "RCPT", "code": 470}, "code must be an SMTP failure code"),
        ({"stage": "RCPT", "code": "452"}, "code must be an SMTP failure code"),
        ({"stage": "RCPT", "code": 452, "status": "5.2.2"}, "status must be an enhanced status code of the same class"),
        ({"stage": "RCPT", "code": 452, "text": "two\r\nlines"}, "text must be one line of printable ASCII"),
        ({"stage": "RCPT", "code": 452, "probability": 0}, "probability must be a number in (0, 1]"),
        ({"stage": "RCPT", "code": 452, "times": 0}, "times must be a whole number from 1"),
        ({"stage": "MAIL", "code": 452, "recipient": "*@x"}, "recipient applies only at RCPT, DATA, END-OF-DATA"),
        ({"stage": "RCPT", "code": 452, "color": "red"}, "unknown field 'color'"),
        ({"code": 452}, "stage and code are required"),
        ({"stage": "RCPT", "code": 452, "recipient": "*" * 321}, "at most 320 characters"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(fields: dict[str, Any], complaint: str) -> None:
    """A rule that would send an invalid SMTP reply (or cannot match) is refused, saying which field."""
    with pytest.raises(ChaosError) as caught:
        ChaosRules().add_from(fields)
    assert complaint in str(caught.value)


def test_the_rules_are_bounded() -> None:
    """The API is unauthenticated (loopback only): it cannot grow the list every session stage walks without end."""
    from tlsmta.devrelay._chaos import MAX_RULES

    rules = ChaosRules()
    for _ in range(MAX_RULES):
        rules.add("RCPT", 452)
    with pytest.raises(ChaosError, match=f"at most {MAX_RULES} rules"):
        rules.add("RCPT", 452)
    assert len(rules.listing()) == MAX_RULES
    rules.clear()
    rules.add("RCPT", 452)


def test_default_reply_is_valid_smtp_with_an_enhanced_code() -> None:
    """Without status and text: X.0.0 of the code's class and a text naming the stage."""
    rules = ChaosRules()
    rules.add("end_of_data", 554)
    assert str(rules(Stage.END_OF_DATA, ("b@x",))) == "554 5.0.0 chaos: END-OF-DATA failure injected by the dev relay"


# -- in the session (no reactor) --------------------------------------------------------------


def test_session_asks_at_each_stage_and_goes_on_after() -> None:
    """Each stage's failure is the answer to that command; the session goes on, and the next try works."""
    rules = ChaosRules()
    for stage in ("EHLO", "MAIL", "RCPT", "DATA"):
        rules.add(stage, 451, times=1)
    d = chaos_driver(rules)
    assert d.codes(b"EHLO app.test\r\n") == [451]
    assert d.codes(b"EHLO app.test\r\nMAIL FROM:<a@app.test>\r\n") == [250, 451]
    assert d.codes(b"MAIL FROM:<a@app.test>\r\nRCPT TO:<bob@example.org>\r\n") == [250, 451]
    assert d.codes(b"RCPT TO:<bob@example.org>\r\nDATA\r\nDATA\r\n") == [250, 451, 354]
    assert d.codes(MESSAGE) == [250]
    assert d.stored == [b"Subject: hi\r\n\r\nbody\r\n"]


def test_end_of_data_failure_refuses_the_message_it_read() -> None:
    """END-OF-DATA: the body was read, then it is refused (not committed): a 554 is never stored."""
    rules = ChaosRules()
    rules.add("END-OF-DATA", 554, "content rejected", "5.7.1", recipient="bob@*")
    d = chaos_driver(rules)
    d.feed(TRANSACTION)
    events = d.feed(MESSAGE)
    refused = [e for e in events if isinstance(e, MessageRefused)]
    assert [str(e.reply) for e in refused] == ["554 5.7.1 content rejected"]
    assert d.codes(b"MAIL FROM:<a@app.test>\r\n") == [250]  # the session goes on


def test_421_ends_the_session() -> None:
    """421 means the server closes the channel (RFC 5321 3.8): the reply, then Close."""
    rules = ChaosRules()
    rules.add("MAIL", 421, "going down", "4.3.2")
    d = chaos_driver(rules)
    events = d.feed(b"EHLO app.test\r\nMAIL FROM:<a@app.test>\r\nRSET\r\n")
    assert [str(e.reply) for e in events if hasattr(e, "reply")][-1] == "421 4.3.2 going down"
    assert isinstance(events[-1], Close) and d.session.phase is Phase.CLOSED


def test_connect_failure_replaces_the_greeting_and_closes() -> None:
    """CONNECT: the rule's reply is the only thing sent, then the connection closes."""
    rules = ChaosRules()
    rules.add("CONNECT", 554, "no SMTP service here", "5.3.2")
    d = chaos_driver(rules)
    assert d.session.refused_at_connect()
    events = d.drain()
    assert [str(e.reply) for e in events if hasattr(e, "reply")] == ["554 5.3.2 no SMTP service here"]
    assert isinstance(events[-1], Close)
    assert not chaos_driver(ChaosRules()).session.refused_at_connect()


# -- over loopback: the API, smtplib, swaks ----------------------------------------------------------


def post_rule(port: int, rule: dict[str, Any]) -> tuple[int, Any]:
    status, _, body = web(port, "POST", "/api/chaos", json.dumps(rule).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def rcpt_refusal(port: int) -> Any:
    """What smtplib reports sending one message (None: accepted)."""
    try:
        send(port, welcome())
    except smtplib.SMTPRecipientsRefused as e:
        return e.recipients
    return None


@pytest_twisted.ensureDeferred
async def test_api_rule_fails_the_next_rcpt_for_smtplib(tmp_path: Any) -> None:
    """POST /api/chaos {RCPT 452 times 1}: smtplib sees 452 for bob once, then mail goes through;
    GET lists the rules, DELETE removes them, bad rules are 400."""
    relay = await web_relay(tmp_path)
    try:
        port = relay.http_port
        assert port is not None
        status, rule = await in_thread(post_rule, port, {"stage": "RCPT", "code": 452, "status": "4.2.2",
                                                         "text": "mailbox full", "times": 1})
        assert status == 201 and rule["reply"] == "452 4.2.2 mailbox full" and rule["times_left"] == 1
        assert await in_thread(rcpt_refusal, relay.port) == {"bob@example.org": (452, b"4.2.2 mailbox full")}
        assert await in_thread(rcpt_refusal, relay.port) is None
        status, bad = await in_thread(post_rule, port, {"stage": "RCPT", "code": 200})
        assert status == 400 and "code must be an SMTP failure code" in bad["error"]
        status, kept = await in_thread(post_rule, port, {"stage": "MAIL", "code": 451})
        listing = json.loads((await in_thread(web, port, "GET", "/api/chaos"))[2])
        assert [r["id"] for r in listing["rules"]] == [kept["id"]] and "END-OF-DATA" in listing["stages"]
        assert (await in_thread(web, port, "DELETE", f"/api/chaos/{kept['id']}"))[0] == 200
        assert (await in_thread(web, port, "DELETE", f"/api/chaos/{kept['id']}"))[0] == 404
    finally:
        await relay.stop()


def swaks(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--from", "app@example.com",
         "--to", "bob@example.org", "--helo", "app.test", "--timeout", str(CLIENT_TIMEOUT), *extra],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT * 2,
    )


@pytest_twisted.ensureDeferred
async def test_swaks_sees_each_stage_fail(tmp_path: Any) -> None:
    """swaks over loopback: CONNECT 554 (then closed), end-of-data 451 (nothing stored), and the next try
    is stored; the relay carries on.  A chaos line is logged per failure, and the disconnect line says
    why the first session was turned away."""
    relay = await web_relay(tmp_path)
    chaos = relay.service.chaos
    assert chaos is not None
    events: list[tuple[str, dict[str, Any]]] = []
    relay.service.events.add_sink(lambda event, fields: events.append((event, fields)))
    try:
        chaos.add("CONNECT", 554, "not now", "5.3.2", times=1)
        refused = await in_thread(swaks, relay.port)
        assert "<** 554 5.3.2 not now" in refused.stdout and "EHLO" not in refused.stdout.split("554 5.3.2")[1]
        disconnect = next(fields for event, fields in events if event == "disconnect")
        assert disconnect["refused"] == "reply override (dev relay chaos)" and disconnect["commands"] == 0
        chaos.add("END-OF-DATA", 451, "try later", "4.3.0", times=1)
        deferred = await in_thread(swaks, relay.port)
        assert "<** 451 4.3.0 try later" in deferred.stdout
        fired = [fields for event, fields in events if event == "chaos"]
        assert [(f["stage"], f["reply"], f["rcpts"]) for f in fired] == [
            ("CONNECT", "554 5.3.2 not now", None), ("END-OF-DATA", "451 4.3.0 try later", "bob@example.org")]
        assert not any((tmp_path / "maildir" / "new").iterdir())
        accepted = await in_thread(swaks, relay.port)
        assert accepted.returncode == 0 and "250 2.0.0 Ok: queued as" in accepted.stdout
        assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1
    finally:
        await relay.stop()
