"""The queue's DSN policy (issue 16): whose words a DSN reports, when the last attempt was,
delay warnings after ``[queue] delay_warning_time`` (once, across restarts), ``soft_bounce``,
and a backed-off destination's "not before" time.

Same harness as tests/test_queue.py: a Clock, a real spool, a fake deliver function.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import pytest
from test_queue import BODY, LATER, NO_USER, T0, Harness, body_of, new_message, parse
from twisted.internet.task import Clock

from tlsmta.smtp._reply import Reply
from tlsmta.storage._spool import PENDING

HOUR = 3600.0
TLS_POLICY = (PENDING, Reply.parse("451 4.7.5 certificate name does not match mx.example.com"), "mx.example.com", True)


def harness(tmp_path, clock=None):
    """A harness whose DSNs stay queued (the sender's MX defers them), so tests can read them."""
    h = Harness(tmp_path, clock=clock)
    h.deliver.outcomes["alice@example.org"] = LATER
    return h


@pytest.fixture
def h(tmp_path):
    started = harness(tmp_path)
    assert started.start() == [None]
    return started


def status_blocks(h, dsn):
    report = parse(body_of(h.spool, dsn.id))
    return report, report.get_payload()[1].get_payload()[1:]


def events_of(h):
    seen: list[tuple[str, dict]] = []
    h.queue.events.add_sink(lambda event, fields: seen.append((event, fields)))
    return seen


def run_until_gone_or(h, message_id, deadline):
    """Advance to each next attempt of ``message_id`` until it leaves the queue or ``deadline``."""
    for _ in range(100):
        message = h.queue.messages.get(message_id)
        if message is None or message.next_attempt > deadline:
            return
        h.clock.advance(max(0.0, message.next_attempt - h.clock.seconds()))
    raise AssertionError("no end in sight")


def test_bounce_names_remote_mta_and_last_attempt_date(h):
    """A 5xx from the MX: Diagnostic-Code smtp; with that host as Remote-MTA, and
    Last-Attempt-Date the queue clock's time of the attempt (RFC 5322 date)."""
    h.deliver.outcomes["bob@example.com"] = NO_USER
    h.clock.advance(30)
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    [dsn] = h.dsns()
    _, [block] = status_blocks(h, dsn)
    assert block["Remote-MTA"] == "dns; mx.example.com"
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.1.1 no such user")
    assert parsedate_to_datetime(block["Last-Attempt-Date"]).timestamp() == T0 + 30


def test_tlsmta_own_verdict_is_x_tlsmta_without_remote_mta(tmp_path):
    """A deferral tlsmta decided (TLS policy 4.7.5 at mx.example.com) that expires: the DSN types
    it X-tlsmta with the reason and names no Remote-MTA, since that host said nothing of it."""
    h = harness(tmp_path)
    h.start()
    h.deliver.outcomes["bob@example.com"] = TLS_POLICY
    h.submit(new_message("m1", ["bob@example.com"]))
    run_until_gone_or(h, "m1", T0 + 10 * HOUR)
    [dsn] = h.dsns()
    _, [block] = status_blocks(h, dsn)
    assert block["Status"] == "4.7.5"
    assert block["Remote-MTA"] is None
    assert block["Diagnostic-Code"] == "X-tlsmta; 4.7.5 certificate name does not match mx.example.com (at mx.example.com)"
    assert block["Last-Attempt-Date"] is not None


def test_our_verdict_survives_a_restart(tmp_path):
    """Whether the last result was ours is kept in the state file."""
    first = harness(tmp_path)
    first.start()
    first.deliver.outcomes["bob@example.com"] = TLS_POLICY
    first.submit(new_message("m1", ["bob@example.com"]))
    first.clock.advance(0)
    [loaded] = first.on_disk().values()
    assert loaded.recipients[0].ours is True
    assert loaded.last_attempt == T0


def test_delay_warning_once_after_delay_warning_time_and_not_after_restart(tmp_path):
    """delay_warning_time = 4h: no warning before, one Action: delayed DSN at the first attempt
    after 4h, none at later attempts, and none after a restart (it is in the state file)."""
    h = harness(tmp_path)
    h.queue.delay_warning = 4 * HOUR
    h.queue.max_lifetime = 5 * 24 * HOUR
    h.start()
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com", "carol@example.com"]))
    run_until_gone_or(h, "m1", T0 + 4 * HOUR - 1)
    assert h.dsns() == []
    run_until_gone_or(h, "m1", T0 + 8 * HOUR)
    [warning] = h.dsns()
    report, [block] = status_blocks(h, warning)  # carol was delivered: only bob is still waiting
    assert report["Subject"] == "Delayed Mail (still being retried)"
    assert block["Final-Recipient"] == "rfc822; bob@example.com"
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.7.5"
    assert parsedate_to_datetime(block["Will-Retry-Until"]).timestamp() == T0 + 5 * 24 * HOUR
    assert "WARNING ONLY" in report.get_payload()[0].get_content()
    assert h.on_disk()["m1"].delay_warned is True

    clock = Clock()
    clock.advance(h.clock.seconds())
    h.queue.stop()
    again = harness(tmp_path, clock=clock)
    again.queue.delay_warning = 4 * HOUR
    again.queue.max_lifetime = 5 * 24 * HOUR
    again.deliver.outcomes["bob@example.com"] = LATER
    again.start()
    run_until_gone_or(again, "m1", T0 + 20 * HOUR)
    assert len(again.deliver.attempts_of("m1")) >= 2
    assert [m.id for m in again.dsns()] == [warning.id]  # the one stored before the restart


def test_no_delay_warning_by_default_or_for_a_bounce(h):
    """Off by default (as Postfix); never for a null-sender message."""
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    h.submit(new_message("b1", ["alice@example.org"], sender=""))
    h.clock.advance(0)
    h.clock.advance(HOUR - 10)
    assert h.dsns() == [h.queue.messages["b1"]]  # only b1 itself, a null-sender message
    h.queue.delay_warning = 60.0
    h.queue.flush()
    h.clock.advance(0)
    assert h.queue.messages["m1"].delay_warned is True
    assert h.queue.messages["b1"].delay_warned is False
    assert len(h.dsns()) == 2  # b1 and m1's warning


def test_soft_bounce_keeps_a_5xx_queued_without_a_dsn(tmp_path):
    """soft_bounce: a 5xx leaves the recipient pending with the 5xx recorded (queue show and a
    later DSN report it), a soft_bounce event names it, and no bounce is sent."""
    h = harness(tmp_path)
    h.queue.soft_bounce = True
    seen = events_of(h)
    h.start()
    h.deliver.outcomes["bob@example.com"] = NO_USER
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert h.dsns() == []
    [rcpt] = h.on_disk()["m1"].recipients
    assert (rcpt.status, rcpt.last) == (PENDING, "550 5.1.1 no such user")
    [(_, fields)] = [e for e in seen if e[0] == "soft_bounce"]
    assert fields["to"] == "bob@example.com" and fields["reason"] == "550 5.1.1 no such user"
    assert h.queue.messages["m1"].next_attempt == T0 + 60  # retried like a deferral


def test_soft_bounce_also_keeps_an_expired_message(tmp_path):
    """Past max_queue_lifetime under soft_bounce the message still stays; turned off, it bounces."""
    h = harness(tmp_path)
    h.queue.soft_bounce = True
    h.start()
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    run_until_gone_or(h, "m1", T0 + 3 * HOUR)
    assert "m1" in h.queue.messages and h.dsns() == []
    h.queue.soft_bounce = False
    h.queue.flush()
    h.clock.advance(0)
    assert "m1" not in h.queue.messages
    [dsn] = h.dsns()
    assert status_blocks(h, dsn)[1][0]["Action"] == "failed"


def test_backed_off_result_postpones_the_next_attempt(h):
    """A result with retry_after (a backed-off destination) is not retried before that time."""
    status, reply, remote = LATER
    h.deliver.outcomes["bob@example.com"] = (status, reply, "", True, T0 + 1234)
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert h.queue.messages["m1"].next_attempt == T0 + 1234
    assert h.on_disk()["m1"].next_attempt == T0 + 60  # a restart forgets the back-off: its own schedule


def test_admin_bounce_of_an_untried_message_is_our_verdict(h):
    """`tlsmta queue bounce` of a message never tried: X-tlsmta, no Remote-MTA, no Last-Attempt-Date."""
    h.deliver.hold = True
    h.spool.store_blocking(new_message("m1", ["bob@example.com"]), BODY)
    h.queue.messages["m1"] = h.spool.load_blocking(["m1"])[0][0]
    done = []
    from twisted.internet.defer import ensureDeferred

    ensureDeferred(h.queue.bounce("m1")).addBoth(done.append)
    assert done == [None]
    [dsn] = h.dsns()
    _, [block] = status_blocks(h, dsn)
    assert block["Diagnostic-Code"] == "X-tlsmta; 5.0.0 returned to sender by the postmaster"
    assert block["Remote-MTA"] is None and block["Last-Attempt-Date"] is None
    assert block["Action"] == "failed"
