"""Unit tests for :mod:`tlsmta.delivery._mailqueue`: scheduling, retries, per-recipient results, bounces.

The queue runs on a :class:`twisted.internet.task.Clock`, against a real
spool directory under ``tmp_path`` whose disk work runs synchronously
(:class:`SyncDisk`), and a fake deliver function (:class:`FakeDeliver`)
whose results the test chooses.  Every Deferred fires during
``clock.advance``, so the tests are plain synchronous code.
"""

from __future__ import annotations

import email
import email.policy
import os
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock

from tlsmta.config._routes import parse_route
from tlsmta.delivery._mailqueue import Queue, group_jobs, retry_delay
from tlsmta.delivery._pool import RecipientResult
from tlsmta.smtp._reply import Reply
from tlsmta.storage._spool import BOUNCED, DELIVERED, PENDING, QueuedMessage, RecipientState, Spool, read_record

T0 = 1_700_000_000.0
SCHEDULE = (60, 300, 900)
LIFETIME = 3600
HOSTNAME = "mx.example.net"
HEADERS = b"Received: from client.example.org by mx.example.net\r\nFrom: alice@example.org\r\nSubject: hello\r\n"
BODY = HEADERS + b"\r\nbody text\r\n"

OK = (DELIVERED, Reply.parse("250 2.0.0 ok"))
LATER = (PENDING, Reply.parse("451 4.7.5 certificate name does not match mx.example.com"), "mx.example.com")
NO_USER = (BOUNCED, Reply.parse("550 5.1.1 no such user"), "mx.example.com")


# -- fakes ------------------------------------------------------------------------------------


class SyncDisk:
    """A DiskIO that runs the work at once; failures come back as failed Deferreds."""

    def run(self, fn, *args):
        return maybeDeferred(fn, *args)

    def run_quick(self, fn, *args):  # a disk job, as with [spool] commit = "fsync"
        return self.run(fn, *args)

    def sync_directory_blocking(self, path):
        pass


class GatedDisk(SyncDisk):
    """A DiskIO that holds every call while ``held`` (a slow disk thread), until release()."""

    def __init__(self):
        self.held = True
        self.waiting: list[tuple[Deferred, object, tuple]] = []

    def run(self, fn, *args):
        if not self.held:
            return super().run(fn, *args)
        d: Deferred = Deferred()
        self.waiting.append((d, fn, args))
        return d

    def release(self):
        self.held = False
        while self.waiting:
            d, fn, args = self.waiting.pop(0)
            maybeDeferred(fn, *args).chainDeferred(d)


class FakeDeliver:
    """deliver(job): per-recipient results from ``outcomes`` (default delivered).

    An outcome is ``(status, reply)`` or ``(status, reply, remote)``.  With
    ``hold`` set, jobs get unfired Deferreds kept in ``held``.  ``broken``
    makes every job fail.
    """

    def __init__(self, outcomes=None):
        self.outcomes: dict[str, tuple] = dict(outcomes or {})
        self.jobs = []
        self.hold = False
        self.broken = False
        self.held: list[tuple[object, Deferred]] = []

    def results(self, job):
        return [RecipientResult(r.address, *self.outcomes.get(r.address, OK)) for r in job.recipients]

    def __call__(self, job):
        self.jobs.append(job)
        if self.broken:
            return fail(RuntimeError("deliverer exploded"))
        if self.hold:
            d: Deferred = Deferred()
            self.held.append((job, d))
            return d
        return succeed(self.results(job))

    def release(self):
        held, self.held = self.held, []
        for job, d in held:
            d.callback(self.results(job))

    def attempts_of(self, message_id):
        return [job for job in self.jobs if job.message.id == message_id]


class Harness:
    """A queue on a Clock at T0 over a real spool in ``tmp_path``."""

    def __init__(self, tmp_path, deliver=None, disk=None, route_for=None, clock=None):
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(T0)
        self.spool = Spool(str(tmp_path / "spool"), disk or SyncDisk())
        self.spool.ensure()
        self.deliver = deliver or FakeDeliver()
        self.route_for_calls = []

        def default_route(domain):
            self.route_for_calls.append(domain)
            return parse_route("mx")

        self.queue = Queue(self.spool, self.deliver, self.clock, HOSTNAME, SCHEDULE, LIFETIME,
                           route_for=route_for or default_route)

    def start(self):
        loaded = []
        self.queue.start(self.spool.prepare_blocking()).addBoth(loaded.append)
        return loaded

    def submit(self, message, body=BODY):
        """What intake does: make the message durable, then hand it to the queue."""
        self.spool.store_blocking(message, body)
        self.queue.add(message)
        return message

    def on_disk(self):
        """The queued messages as a restart would load them (record plus state), by id."""
        messages, _ = self.spool.load_blocking(self.spool.list_blocking())
        return {m.id: m for m in messages}

    def files(self):
        return set(os.listdir(self.spool.queue_dir))

    def dsns(self):
        return [m for m in self.queue.messages.values() if m.is_bounce]


def body_of(spool: Spool, message_id: str) -> bytes:
    """A spooled message's body, as the disk thread reads it for delivery."""
    return spool.read_body_blocking(read_record(spool.message_path(message_id)))


def new_message(message_id, recipients, sender="alice@example.org", received_at=T0, **fields):
    return QueuedMessage(
        id=message_id,
        sender=sender,
        recipients=[RecipientState(a, parse_route("mx")) for a in recipients],
        received_at=received_at,
        next_attempt=received_at,
        **fields,
    )


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def fired(d: Deferred) -> list:
    box = []
    d.addBoth(box.append)
    return box


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    assert harness.start() == [None]
    return harness


# -- retry_delay, group_jobs ----------------------------------------------------------------------


@pytest.mark.parametrize("attempts, delay", [(1, 60), (2, 300), (3, 900), (4, 900), (1000, 900), (0, 60)])
def test_retry_delay_steps_and_last_repeats(attempts, delay):
    """Attempt n waits schedule[n-1]; past the end of the schedule its last step repeats."""
    assert retry_delay(attempts, SCHEDULE) == delay


@settings(max_examples=100)
@given(schedule=st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=8).map(sorted),
       attempts=st.integers(min_value=1, max_value=50))
def test_retry_delay_never_shrinks(schedule, attempts):
    """With a growing schedule, each retry waits at least as long as the one before,
    and every delay is a step of the schedule."""
    assert retry_delay(attempts + 1, schedule) >= retry_delay(attempts, schedule)
    assert retry_delay(attempts, schedule) in schedule
    if attempts >= len(schedule):
        assert retry_delay(attempts, schedule) == schedule[-1]


def test_group_jobs_one_job_per_route_domain_binding():
    """Pending recipients are grouped by (route, recipient domain, binding); local routes
    ignore the domain (an LMTP route keeps it: its domain's options apply); delivered or
    bounced recipients are left out."""
    mx, relay, maildir = parse_route("mx"), parse_route("smtp:relay.example.net"), parse_route("maildir:/tmp/md")
    lmtp = parse_route("lmtp:unix:/run/lmtp")
    message = QueuedMessage(
        id="m", sender="a@example.org", received_at=T0,
        recipients=[
            RecipientState("bob@example.com", mx),
            RecipientState("carol@EXAMPLE.com", mx),
            RecipientState("dave@example.net", mx),
            RecipientState("erin@example.com", mx, "out1"),
            RecipientState("frank@example.com", relay),
            RecipientState("gina@a.test", maildir),
            RecipientState("hal@b.test", maildir),
            RecipientState("kim@a.test", lmtp),
            RecipientState("lee@a.test", lmtp),
            RecipientState("max@b.test", lmtp),
            RecipientState("ivan@example.com", mx, status=DELIVERED),
            RecipientState("judy@example.com", mx, status=BOUNCED),
        ],
    )
    jobs = group_jobs(message)
    got = sorted((str(j.route), j.domain, j.binding, tuple(r.address for r in j.recipients)) for j in jobs)
    assert got == sorted([
        ("mx", "example.com", "default", ("bob@example.com", "carol@EXAMPLE.com")),
        ("mx", "example.net", "default", ("dave@example.net",)),
        ("mx", "example.com", "out1", ("erin@example.com",)),
        ("smtp:relay.example.net", "example.com", "default", ("frank@example.com",)),
        ("maildir:/tmp/md", "", "default", ("gina@a.test", "hal@b.test")),
        ("lmtp:unix:/run/lmtp", "a.test", "default", ("kim@a.test", "lee@a.test")),
        ("lmtp:unix:/run/lmtp", "b.test", "default", ("max@b.test",)),
    ])
    assert all(j.message is message for j in jobs)


def test_group_jobs_nothing_pending():
    """A message with no pending recipient has no jobs."""
    message = new_message("m", ["bob@example.com"])
    message.recipients[0].status = DELIVERED
    assert group_jobs(message) == []


# -- the first attempt ------------------------------------------------------------------------------


def test_new_message_attempted_at_once(h):
    """A message handed to the queue is attempted without any time passing."""
    m = h.submit(new_message("m1", ["bob@example.com", "carol@example.com"]))
    h.clock.advance(0)
    [job] = h.deliver.jobs
    assert job.message is m
    assert [r.address for r in job.recipients] == ["bob@example.com", "carol@example.com"]
    assert (str(job.route), job.domain, job.binding) == ("mx", "example.com", "default")
    assert h.clock.seconds() == T0


def test_delivered_message_leaves_memory_and_disk(h):
    """When every recipient is delivered, the message is gone from the queue and the spool."""
    h.submit(new_message("m1", ["bob@example.com"]))
    assert h.files() == {"m1.msg"}
    h.clock.advance(0)
    assert h.queue.messages == {}
    assert h.files() == set()
    assert h.queue.in_flight == set()
    assert h.dsns() == []
    assert h.clock.getDelayedCalls() == []


def test_a_recipient_recorded_twice_is_delivered_once(h):
    """A spool record naming one address twice (written before RCPT deduplication): one
    delivery settles both entries; the message is done, not retried at every step."""
    h.submit(new_message("m1", ["bob@example.com", "bob@example.com"]))
    h.clock.advance(0)
    assert h.queue.messages == {} and h.files() == set()
    h.clock.advance(SCHEDULE[-1] * 3)
    assert len(h.deliver.attempts_of("m1")) == 1


# -- deferrals and retries ------------------------------------------------------------------------------


def test_4xx_reschedules_and_persists(h):
    """A 4xx result keeps the message, schedules it at now + retry_delay and writes
    attempts, next attempt and the reason to the spool."""
    h.deliver.outcomes["bob@example.com"] = LATER
    m = h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert m.attempts == 1
    assert m.next_attempt == T0 + 60
    saved = h.on_disk()["m1"]
    assert (saved.attempts, saved.next_attempt) == (1, T0 + 60)
    assert saved.recipients[0].status == PENDING
    assert saved.recipients[0].last_shown == "451 4.7.5 certificate name does not match mx.example.com (from mx.example.com)"
    assert saved.recipients[0].last_reply == LATER[1] and saved.recipients[0].remote == "mx.example.com"
    assert h.dsns() == []

    h.clock.advance(59)
    assert len(h.deliver.jobs) == 1  # not early
    h.clock.advance(1)
    assert len(h.deliver.jobs) == 2
    assert m.attempts == 2
    assert m.next_attempt == T0 + 60 + 300
    assert h.on_disk()["m1"].next_attempt == T0 + 60 + 300


def test_retries_follow_schedule_then_repeat_last_step(h):
    """Attempt times follow the schedule, then repeat its last step."""
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    times = []
    for _ in range(6):
        h.clock.advance(h.queue.messages["m1"].next_attempt - h.clock.seconds())
        times.append(h.clock.seconds() - T0)
    assert times == [0, 60, 360, 1260, 2160, 3060]
    assert len(h.deliver.jobs) == 6


def test_delivered_recipients_not_retried(h):
    """After a partial success, the retry carries only the recipients still pending."""
    h.deliver.outcomes["carol@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com", "carol@example.com"]))
    h.clock.advance(0)
    assert [r.status for r in h.on_disk()["m1"].recipients] == [DELIVERED, PENDING]
    h.deliver.outcomes["carol@example.com"] = OK
    h.clock.advance(60)
    assert [[r.address for r in j.recipients] for j in h.deliver.jobs] == [
        ["bob@example.com", "carol@example.com"], ["carol@example.com"]]
    assert h.queue.messages == {} and h.files() == set()


def test_three_domains_done_for_two_queued_for_one(h):
    """A message to three domains is attempted as three jobs; two succeed, one stays
    queued on its own, and only that one is retried."""
    h.deliver.outcomes["carol@c.test"] = LATER
    h.submit(new_message("m1", ["alice@a.test", "bob@b.test", "carol@c.test"]))
    h.clock.advance(0)
    assert sorted(j.domain for j in h.deliver.jobs) == ["a.test", "b.test", "c.test"]
    saved = h.on_disk()["m1"]
    assert {r.address: r.status for r in saved.recipients} == {
        "alice@a.test": DELIVERED, "bob@b.test": DELIVERED, "carol@c.test": PENDING}
    h.clock.advance(60)
    assert [j.domain for j in h.deliver.jobs[3:]] == ["c.test"]
    assert "m1" in h.queue.messages


def test_failed_job_counts_as_temporary_failure(h):
    """A deliver Deferred that fails (a bug, not an SMTP answer) defers its recipients
    with 4.3.0 instead of losing or bouncing them."""
    h.deliver.broken = True
    m = h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert m.recipients[0].status == PENDING
    assert m.recipients[0].last.startswith("451 4.3.0")
    assert m.next_attempt == T0 + 60
    assert h.dsns() == []
    assert h.queue.in_flight == set()


# -- bounces --------------------------------------------------------------------------------------------------


def test_5xx_sends_dsn_to_sender(tmp_path):
    """A 5xx bounces the recipient: the original leaves the spool and a DSN with null sender,
    addressed to the original sender and routed by route_for(sender's domain), is spooled
    and queued."""
    relay = parse_route("smtp:relay.example.org:2525")
    domains = []
    h = Harness(tmp_path, route_for=lambda d: domains.append(d) or relay)
    h.start()
    h.deliver.outcomes.update({"bob@example.com": NO_USER, "alice@Example.ORG": LATER})
    h.submit(new_message("m1", ["bob@example.com"], sender="alice@Example.ORG"))
    h.clock.advance(0)

    assert "m1" not in h.queue.messages
    assert "m1" not in h.on_disk()
    [dsn] = h.dsns()
    assert dsn.sender == ""
    assert [(r.address, r.route, r.status) for r in dsn.recipients] == [("alice@Example.ORG", relay, PENDING)]
    assert domains == ["example.org"]
    assert h.on_disk()[dsn.id] == dsn
    assert h.files() - {f"{dsn.id}.state"} == {f"{dsn.id}.msg"}

    report = parse(body_of(h.spool, dsn.id))
    assert report.get_content_type() == "multipart/report"
    assert report["To"].addresses[0].addr_spec == "alice@Example.ORG"
    block = report.get_payload()[1].get_payload()[1]
    assert block["Final-Recipient"] == "rfc822; bob@example.com"
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user (from mx.example.com)"
    assert report.get_payload()[2].get_payload(decode=True) == HEADERS

    # The DSN is a queued message like any other: it is attempted to the sender.
    dsn_jobs = h.deliver.attempts_of(dsn.id)
    assert len(dsn_jobs) == 1
    assert dsn_jobs[0].route == relay
    assert [r.address for r in dsn_jobs[0].recipients] == ["alice@Example.ORG"]


def test_dsn_only_for_bounced_recipients(h):
    """With one recipient delivered and one rejected, the DSN names only the rejected one,
    and the message is done."""
    h.deliver.outcomes.update({"carol@example.com": NO_USER, "alice@example.org": LATER})
    h.submit(new_message("m1", ["bob@example.com", "carol@example.com"]))
    h.clock.advance(0)
    [dsn] = h.dsns()
    report = parse(body_of(h.spool, dsn.id))
    blocks = report.get_payload()[1].get_payload()[1:]
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; carol@example.com"]
    assert "m1" not in h.queue.messages


def test_dsn_uses_queue_clock(h):
    """The DSN's arrival time and Date come from the queue's clock, not the wall clock,
    so it expires on the same time line as everything else."""
    h.deliver.outcomes.update({"bob@example.com": NO_USER, "alice@example.org": LATER})
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    [dsn] = h.dsns()
    assert dsn.received_at == T0
    report = parse(body_of(h.spool, dsn.id))
    assert report["Date"].datetime == datetime.fromtimestamp(T0, timezone.utc)


def test_dsn_of_a_requiretls_message_requires_tls_too(h):
    """The DSN of a REQUIRETLS message carries REQUIRETLS itself (it quotes the headers),
    durably; an ordinary message's DSN does not."""
    h.deliver.outcomes.update({"bob@example.com": NO_USER, "carol@example.com": NO_USER, "alice@example.org": LATER})
    h.submit(new_message("m1", ["bob@example.com"], requiretls=True))
    h.submit(new_message("m2", ["carol@example.com"]))
    h.clock.advance(0)
    by_recipient = {parse(body_of(h.spool, d.id)).get_payload()[1].get_payload()[1]["Final-Recipient"]: d for d in h.dsns()}
    assert by_recipient["rfc822; bob@example.com"].requiretls is True
    assert h.on_disk()[by_recipient["rfc822; bob@example.com"].id].requiretls is True
    assert by_recipient["rfc822; carol@example.com"].requiretls is False


def test_null_sender_bounce_produces_no_dsn(h):
    """A bounce that bounces (null sender) is dropped: no DSN, nothing left queued."""
    h.deliver.outcomes["alice@example.org"] = NO_USER
    h.submit(new_message("dsn1", ["alice@example.org"], sender=""))
    h.clock.advance(0)
    assert h.queue.messages == {}
    assert h.files() == set()
    assert len(h.deliver.jobs) == 1
    assert h.clock.getDelayedCalls() == []


def test_expiry_bounces_pending_with_last_reason(h):
    """A message still deferred after max_lifetime is bounced at its next attempt; the DSN
    says it expired and carries the last reason; no DSN is sent before that."""
    h.deliver.outcomes.update({"bob@example.com": LATER, "alice@example.org": LATER})
    h.submit(new_message("m1", ["bob@example.com"]))
    attempts = 0
    while "m1" in h.queue.messages:
        assert h.dsns() == []
        h.clock.advance(h.queue.messages["m1"].next_attempt - h.clock.seconds())
        attempts += 1
        assert attempts < 50
    assert h.clock.seconds() - T0 >= LIFETIME
    assert h.clock.seconds() - T0 - 900 < LIFETIME  # the first attempt after expiry, not later
    assert "m1" not in h.on_disk()
    [dsn] = h.dsns()
    report = parse(body_of(h.spool, dsn.id))
    block = report.get_payload()[1].get_payload()[1]
    assert block["Action"] == "failed"
    assert block["Status"] == "4.7.5"
    assert "certificate name does not match" in block["Diagnostic-Code"]
    assert "too long" in report.get_payload()[0].get_content()


def test_old_message_expires_at_first_attempt(h):
    """A message already older than max_lifetime (e.g. found at start) is attempted once, and
    if that attempt does not deliver it, bounced with that attempt's reason."""
    h.deliver.outcomes.update({"bob@example.com": (PENDING, Reply.parse("421 4.4.2 too busy")), "alice@example.org": LATER})
    h.submit(new_message("m1", ["bob@example.com"], received_at=T0 - LIFETIME))
    h.clock.advance(0)
    assert "m1" not in h.queue.messages
    [dsn] = h.dsns()
    block = parse(body_of(h.spool, dsn.id)).get_payload()[1].get_payload()[1]
    assert block["Status"] == "4.4.2"


def test_expired_dsn_is_dropped_not_bounced(h):
    """A DSN that cannot be delivered within max_lifetime is dropped, never bounced."""
    h.deliver.outcomes.update({"bob@example.com": NO_USER, "alice@example.org": LATER})
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    [dsn] = h.dsns()
    for _ in range(50):
        if not h.queue.messages:
            break
        h.clock.advance(h.queue.messages[dsn.id].next_attempt - h.clock.seconds())
    assert h.queue.messages == {}
    assert h.files() == set()


# -- flush, in-flight, idle ----------------------------------------------------------------------------------------


def test_flush_makes_deferred_message_due_now(h):
    """flush() retries a deferred message at once; filters by id and by pending domain."""
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert h.queue.flush(message_id="other") == 0
    assert h.queue.flush(domain="example.net") == 0
    h.clock.advance(0)
    assert len(h.deliver.jobs) == 1
    assert h.queue.flush(domain="example.com") == 1
    h.clock.advance(0)
    assert len(h.deliver.jobs) == 2
    assert h.queue.flush() == 1
    h.clock.advance(0)
    assert len(h.deliver.jobs) == 3
    assert h.clock.seconds() == T0
    # The schedule after a flushed attempt continues from the attempt count.
    assert h.queue.messages["m1"].next_attempt == T0 + retry_delay(3, SCHEDULE)


def test_message_in_flight_not_attempted_twice(h):
    """While an attempt is running, neither flush() nor the passing of time starts another."""
    h.deliver.hold = True
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert h.queue.in_flight == {"m1"}
    assert h.queue.flush() == 0
    h.clock.advance(0)
    h.clock.advance(1000)
    assert len(h.deliver.jobs) == 1
    h.deliver.release()
    assert h.queue.in_flight == set()
    assert h.queue.messages["m1"].next_attempt == T0 + 1000 + 60
    h.clock.advance(60)
    assert len(h.deliver.jobs) == 2


def test_wait_idle(h):
    """wait_idle fires when nothing is due and nothing is in flight, not before."""
    assert fired(h.queue.wait_idle()) == [None]
    h.deliver.hold = True
    h.submit(new_message("m1", ["bob@example.com"]))
    due = fired(h.queue.wait_idle())
    assert due == []  # due now, not yet attempted
    h.clock.advance(0)
    assert due == []  # in flight
    h.deliver.release()
    assert due == [None]
    assert h.queue.messages == {}


def test_wait_idle_ignores_messages_due_later(h):
    """A deferred message waiting for its retry does not keep the queue busy."""
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert fired(h.queue.wait_idle()) == [None]


# -- restart ------------------------------------------------------------------------------------------------------


def test_restart_resumes_from_spool(tmp_path):
    """A new queue started on an existing spool loads every message with its state and
    attempts each when it is due: overdue ones at once, others at their next attempt."""
    first = Harness(tmp_path)
    first.start()
    first.deliver.outcomes["bob@example.com"] = LATER
    first.submit(new_message("deferred", ["bob@example.com"]))
    first.clock.advance(0)
    first.queue.stop()
    first.spool.store_blocking(new_message("overdue", ["carol@example.com"], received_at=T0 - 100), BODY)
    later = new_message("later", ["dave@example.com"])
    later.next_attempt = T0 + 500
    first.spool.store_blocking(later, BODY)
    with open(first.spool.message_path("corrupt"), "wb") as f:
        f.write(b"{garbage")  # no trailer: a torn file
    assert len(first.deliver.jobs) == 1

    clock = Clock()
    clock.advance(T0 + 10)
    second = Harness(tmp_path, clock=clock)
    assert second.deliver.jobs == []
    assert second.start() == [None]
    assert set(second.queue.messages) == {"deferred", "overdue", "later"}
    loaded = second.queue.messages["deferred"]
    assert (loaded.attempts, loaded.next_attempt) == (1, T0 + 60)
    assert loaded.recipients[0].last.startswith("451 4.7.5")

    clock.advance(0)
    assert [j.message.id for j in second.deliver.jobs] == ["overdue"]
    clock.advance(T0 + 60 - clock.seconds())
    assert [j.message.id for j in second.deliver.jobs] == ["overdue", "deferred"]
    clock.advance(T0 + 500 - clock.seconds())
    assert [j.message.id for j in second.deliver.jobs] == ["overdue", "deferred", "later"]
    assert second.queue.messages == {}
    assert second.files() == set()  # the unreadable record was moved aside, not left in q/
    assert os.listdir(os.path.join(second.spool.path, "corrupt")) == ["corrupt.msg"]


def test_stopped_queue_attempts_nothing(h):
    """After stop() no timer fires and no message is attempted."""
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    h.queue.stop()
    h.clock.advance(10_000)
    assert len(h.deliver.jobs) == 1
    assert h.clock.getDelayedCalls() == []


def test_message_added_while_spool_loads_keeps_being_retried(tmp_path):
    """A message handed to the queue while the start-up scan is still running (so the scan
    also finds it) is not replaced by the scan's stale copy: its retries keep happening."""
    disk = GatedDisk()
    h = Harness(tmp_path, disk=disk)
    live = new_message("m1", ["bob@example.com"])
    disk.held = False
    h.spool.store_blocking(live, BODY)  # durable before the scan lists q/
    disk.held = True
    loading = h.start()
    assert loading == []
    h.deliver.hold = True
    h.deliver.outcomes["bob@example.com"] = LATER
    h.queue.add(live)  # intake's callback after the commit
    h.clock.advance(0)
    assert h.queue.in_flight == {"m1"}
    disk.release()  # the scan finishes and finds m1 on disk
    assert loading == [None]
    h.clock.advance(0)
    h.deliver.release()  # the first attempt ends: deferred
    assert h.queue.messages["m1"] is live
    assert h.on_disk()["m1"].attempts == 1
    h.clock.advance(60)
    assert len(h.deliver.attempts_of("m1")) == 2


def test_deliver_that_raises_is_not_stuck_in_flight(tmp_path):
    """A deliver function that raises (instead of failing its Deferred) defers the message; it is retried."""
    calls = []

    def deliver(job):
        calls.append(job)
        raise RuntimeError("bug in a route")

    h = Harness(tmp_path, deliver=deliver)
    h.start()
    h.submit(new_message("m1", ["bob@example.com"]))
    h.clock.advance(0)
    assert h.queue.in_flight == set()
    assert h.on_disk()["m1"].recipients[0].last.startswith("451 4.3.0")
    h.clock.advance(SCHEDULE[0])
    assert len(calls) == 2


def test_failure_to_record_an_attempt_keeps_the_message_scheduled(tmp_path, monkeypatch):
    """If saving the state after an attempt fails (disk full), the message is retried later, not forgotten."""
    h = Harness(tmp_path)
    h.start()
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("m1", ["bob@example.com"]))

    def full(message):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.spool, "save_blocking", full)
    h.clock.advance(0)
    assert "m1" in h.queue.messages and h.queue.in_flight == set()
    monkeypatch.undo()
    h.clock.advance(SCHEDULE[0])
    assert len(h.deliver.attempts_of("m1")) == 2


@pytest.mark.parametrize("cause", ["disk_full_on_dsn", "sender_domain_not_idna"])
def test_bounce_is_not_lost_when_the_dsn_cannot_be_stored_at_first(tmp_path, cause):
    """If the DSN cannot be written (disk full), the recipient stays pending and the bounce happens later;
    a sender domain the route lookup rejects still gets its DSN (routed by MX)."""
    import errno

    from tlsmta.smtp._names import normalize_domain

    deliver = FakeDeliver({"bob@example.com": NO_USER})
    sender = "alice@example.org"
    route_for = None
    if cause == "sender_domain_not_idna":
        sender = "alice@ab--cd.example"  # passes MAIL FROM's syntax, not IDNA
        route_for = lambda domain: (normalize_domain(domain), parse_route("mx"))[1]  # noqa: E731 as the service's resolve()
    h = Harness(tmp_path, deliver=deliver, route_for=route_for)
    h.start()
    failures = []
    if cause == "disk_full_on_dsn":
        real = h.spool.store_blocking

        def full_once(message, data):
            if message.sender == "" and not failures:
                failures.append(message.id)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(message, data)

        h.spool.store_blocking = full_once
    h.submit(new_message("m1", ["bob@example.com"], sender=sender))
    h.clock.advance(0)
    def dsn_jobs():
        return [job for job in h.deliver.jobs if job.message.is_bounce]

    if cause == "disk_full_on_dsn":
        assert "m1" in h.queue.messages and dsn_jobs() == []  # not finished silently
        h.clock.advance(SCHEDULE[0])
    h.clock.advance(0)
    assert "m1" not in h.queue.messages
    [job] = dsn_jobs()
    assert job.recipients[0].address == sender


# -- gauges ---------------------------------------------------------------------------------------


def test_gauges_age_is_by_the_queues_clock(h):
    """The oldest message's age (what the metrics collector reports) is the queue's clock
    minus its receipt, not the machine's time; an empty queue is 0 messages of age 0."""
    from tlsmta.reporting._metrics import Metrics

    assert h.queue.gauges() == (0, 0.0)
    h.deliver.outcomes["bob@example.com"] = LATER
    h.submit(new_message("old", ["bob@example.com"], received_at=T0 - 100))
    h.submit(new_message("new", ["bob@example.com"]))
    h.clock.advance(30)
    assert h.queue.gauges() == (2, 130.0)
    registry = Metrics(h.queue.gauges).registry
    assert registry.get_sample_value("tlsmta_queue_messages") == 2
    assert registry.get_sample_value("tlsmta_queue_oldest_age_seconds") == 130.0
    h.clock.advance(1000)
    assert registry.get_sample_value("tlsmta_queue_oldest_age_seconds") == 1130.0
