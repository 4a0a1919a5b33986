"""Unit tests for :mod:`tlsmta.smtp._data`: the sans-IO DATA reader.

No reactor and no sockets: the reader is fed bytes and what it hands back
is compared with an independent, deliberately naive model of RFC 5321
DATA (:func:`model`) that works on the whole input at once.
"""

from __future__ import annotations

import itertools
import tracemalloc

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsmta.smtp import _data as smtp_data
from tlsmta.smtp._data import (
    BARE_CR,
    BARE_LF,
    LINE_TOO_LONG,
    NUL,
    STARTS_FOLDED,
    TOO_BIG,
    DataProblem,
    DataReader,
    HeaderScanner,
    says_tls_required_no,
)

BIG = 1 << 40  # a size or line cap that is never reached


# -- helpers --------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """Everything observable about one message read to its end (or to the input's end)."""

    body: bytes | None  # None when a problem suppressed it
    ended: bool
    rest: bytes
    problem: DataProblem | None
    received: int


def run(chunks, max_line_length: int = 998, max_size: int = BIG) -> Outcome:
    """Feed ``chunks`` in order; bytes given after the end of data count as ``rest``."""
    reader = DataReader(max_line_length, max_size)
    body = []
    rest = b""
    ended = False
    for chunk in chunks:
        if ended:
            rest += chunk
            continue
        result = reader.feed(chunk)
        assert len(reader._carry) <= 2
        if reader.problem is not None:
            assert result.body == b""
        body.append(result.body)
        if result.ended:
            ended = True
            rest = result.rest
        else:
            assert result.rest == b""
    return Outcome(
        None if reader.problem is not None else b"".join(body),
        ended,
        rest,
        reader.problem,
        reader.received,
    )


def too_long(limit: int) -> DataProblem:
    return attrs.evolve(LINE_TOO_LONG, text=LINE_TOO_LONG.text.format(limit=limit))


def too_big(limit: int) -> DataProblem:
    return attrs.evolve(TOO_BIG, text=TOO_BIG.text.format(limit=limit))


# The order in which the reader ranks problems when a message has several:
# the reply must not depend on how TCP happened to segment the message.
RANK = (BARE_LF, BARE_CR, NUL, LINE_TOO_LONG, TOO_BIG, STARTS_FOLDED)


def model(wire: bytes, max_line_length: int = 998, max_size: int = BIG) -> Outcome:
    """RFC 5321 DATA computed from the whole input at once (the oracle)."""
    if wire.startswith(b".\r\n"):
        content, rest, ended = b"", wire[3:], True
    else:
        k = wire.find(b"\r\n.\r\n")
        if k < 0:
            # Not ended: the reader may hold back the octets that could still
            # become part of a CRLF or of the end mark; they are not yet seen.
            content, rest, ended = wire, b"", False
            last_line = content.rpartition(b"\r\n")[2]
            if last_line in (b".", b".\r"):
                content = content[: -len(last_line)]
            elif content.endswith(b"\r"):
                content = content[:-1]
        else:
            content, rest, ended = wire[: k + 2], wire[k + 5 :], True
    lines = content.split(b"\r\n")
    problems = set()
    for line in lines:
        if b"\n" in line:
            problems.add(0)
        if b"\r" in line:
            problems.add(1)
        if b"\x00" in line:
            problems.add(2)
        if len(line) > max_line_length:
            problems.add(3)
    if len(content) > max_size:
        problems.add(4)
    first = lines[0][1:] if lines[0].startswith(b".") else lines[0]
    if first[:1] in (b" ", b"\t"):
        problems.add(5)
    problem = None
    if problems:
        problem = [BARE_LF, BARE_CR, NUL, too_long(max_line_length), too_big(max_size), STARTS_FOLDED][min(problems)]
    body = None
    if problem is None:
        body = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    return Outcome(body, ended, rest, problem, len(content))


def stuff(lines: list[bytes]) -> bytes:
    """What a correct client sends for ``lines``: dot-stuffed, CRLF, end mark."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def split_at(data: bytes, points) -> list[bytes]:
    cuts = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


# -- plain messages -----------------------------------------------------------------


def test_body_comes_out_exactly():
    """A normal message comes out byte for byte, CRLF kept, with nothing of the end mark."""
    wire = b"From: a@example.com\r\nSubject: hi\r\n\r\nline one\r\n\r\nline three\r\n.\r\n"
    reader = DataReader()
    result = reader.feed(wire)
    assert result.ended
    assert result.body == wire[: -len(b".\r\n")]
    assert result.rest == b""
    assert reader.problem is None


@pytest.mark.parametrize(
    "sent, stored",
    [
        (b"..\r\n", b".\r\n"),
        (b".x\r\n", b"x\r\n"),
        (b"...\r\n", b"..\r\n"),
        (b"..x\r\n", b".x\r\n"),
        (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a.b\r\n", b"a.b\r\n"),  # a dot that is not at a line start stays
        (b"a\r\n . \r\n", b"a\r\n . \r\n"),
    ],
)
def test_dot_unstuffing(sent, stored):
    """A leading dot is removed from every line (first line included); other dots stay."""
    result = DataReader().feed(sent + b".\r\n")
    assert result.ended
    assert result.body == stored


def test_empty_message():
    """``.<CRLF>`` right after 354 ends DATA with an empty message."""
    reader = DataReader()
    result = reader.feed(b".\r\n")
    assert result == smtp_data.DataResult(b"", True, b"")
    assert reader.problem is None
    assert reader.received == 0


def test_empty_line_then_end():
    """A message that is one empty line is CRLF, and ends at the following dot line."""
    result = DataReader().feed(b"\r\n.\r\n")
    assert (result.body, result.ended, result.rest) == (b"\r\n", True, b"")


def test_rest_is_what_follows_the_end_mark():
    """Pipelined commands after the end of data come back in ``rest``, untouched."""
    result = DataReader().feed(b"hello\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert result.ended
    assert result.body == b"hello\r\n"
    assert result.rest == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"


def test_not_ended_without_end_mark():
    """Without ``<CRLF>.<CRLF>`` DATA goes on and nothing is returned as rest."""
    reader = DataReader()
    result = reader.feed(b"hello\r\nworld\r\n")
    assert not result.ended and result.rest == b""
    assert result.body == b"hello\r\nworld\r\n"
    result = reader.feed(b".\r")  # not yet decidable
    assert not result.ended and result.body == b""
    result = reader.feed(b"\nQUIT\r\n")
    assert result.ended and result.rest == b"QUIT\r\n"


@pytest.mark.parametrize("tail", [b".", b".\r", b"\r", b"\r\n", b"\r\n.", b"\r\n.\r"])
def test_partial_end_mark_is_not_an_end(tail):
    """A chunk that stops inside the end mark does not end DATA; the next bytes decide."""
    reader = DataReader()
    result = reader.feed(b"text" + tail)
    assert not result.ended
    assert len(reader._carry) <= 2


def test_dot_line_that_is_not_end_mark_after_held_dot():
    """A held-back leading dot followed by more text is a stuffed line, not the end."""
    reader = DataReader()
    parts = [reader.feed(b"a\r\n."), reader.feed(b"."), reader.feed(b"\r\n"), reader.feed(b".\r\n")]
    assert b"".join(p.body for p in parts) == b"a\r\n.\r\n"
    assert parts[-1].ended


def test_received_counts_octets_as_sent():
    """``received`` counts the message octets as sent (stuffing dots and CRLFs), not the end mark."""
    lines = [b"Subject: x", b"", b".hidden", b"..", b"plain"]
    wire = stuff(lines)
    reader = DataReader()
    result = reader.feed(wire + b"QUIT\r\n")
    assert result.ended
    assert reader.received == len(wire) - len(b".\r\n")
    assert reader.received == len(result.body) + 2  # two stuffing dots


def test_feed_after_end_raises():
    """A reader is for one message: feeding it after the end mark is a programming error."""
    reader = DataReader()
    reader.feed(b"x\r\n.\r\n")
    with pytest.raises(RuntimeError):
        reader.feed(b"more\r\n")


def test_feeding_empty_bytes_changes_nothing():
    """An empty chunk (e.g. after a pause) neither ends DATA nor loses a held byte."""
    reader = DataReader()
    bodies = [reader.feed(b"a\r"), reader.feed(b""), reader.feed(b"\n"), reader.feed(b""), reader.feed(b"."), reader.feed(b"")]
    final = reader.feed(b"\r\n")
    assert final.ended
    assert b"".join(r.body for r in bodies) + final.body == b"a\r\n"
    assert reader.problem is None


# -- chunking does not matter ---------------------------------------------------------


CHUNKING_CASES = [
    b"a\r\n..b\r\n.c\r\n\r\n.\r\nQUIT\r\n",
    b"..\r\n.\r\n",
    b"\r\n\r\n.\r\nNOOP\r\n",
    b"x\r\n.\r\n",
    b"x\n.\ny\r\n.\r\nREST",  # smuggling, then the real end
    b"x\r.\r\ny\r\n.\r\n",
    b"x\r\n.\ny\r\n.\r\n",
]


@pytest.mark.parametrize("wire", CHUNKING_CASES)
def test_every_single_and_double_split_gives_the_same_result(wire):
    """Every one- and two-cut split (inside CRLF, inside CRLF.CRLF, after a leading dot) reads alike."""
    whole = run([wire])
    assert whole == model(wire)
    for k in range(1, 3):
        for points in itertools.combinations(range(1, len(wire)), k):
            assert run(split_at(wire, points)) == whole, points


def test_byte_by_byte_equals_all_at_once_for_a_stuffed_message():
    """Feeding one octet at a time gives the same message as one feed."""
    wire = stuff([b".", b"..", b".x", b"", b"Subject: x", b"."]) + b"RSET\r\n"
    assert run([wire[i : i + 1] for i in range(len(wire))]) == run([wire]) == model(wire)


# Pieces chosen so random concatenations hit CR, LF, dots at line starts,
# end marks and all the smuggling shapes.
PIECES = st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"x", b"ab", b"..", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"\x00", b"\xff"])
WIRE = st.lists(PIECES, max_size=40).map(b"".join)


@given(wire=WIRE, data=st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_random_split_points_match_the_model(wire, data):
    """For arbitrary input and arbitrary chunk boundaries the reader agrees with the whole-input model."""
    points = data.draw(st.sets(st.integers(0, len(wire)), max_size=12))
    assert run(split_at(wire, points)) == model(wire)


@given(wire=WIRE, max_line=st.integers(0, 6), max_size=st.integers(0, 30))
@settings(max_examples=500)
def test_byte_by_byte_equals_all_at_once(wire, max_line, max_size):
    """With tight limits too, octet-at-a-time feeding ends, flags and counts exactly like one feed."""
    one = run([wire], max_line, max_size)
    assert run([wire[i : i + 1] for i in range(len(wire))], max_line, max_size) == one
    assert one == model(wire, max_line, max_size)


LINE = st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b)


@given(lines=st.lists(LINE, max_size=20), tail=st.binary(max_size=20), data=st.data())
@settings(max_examples=300)
def test_stuffed_messages_round_trip(lines, tail, data):
    """Whatever the lines (leading dots included), a correctly stuffed message comes back exactly."""
    wire = stuff(lines) + tail
    points = data.draw(st.sets(st.integers(0, len(wire)), max_size=10))
    out = run(split_at(wire, points), max_line_length=31)
    if lines and lines[0][:1] in (b" ", b"\t"):  # would continue our Received: header
        assert out.problem == STARTS_FOLDED
        assert out.ended and out.rest == tail
        return
    assert out.problem is None
    assert out.ended
    assert out.body == b"".join(line + b"\r\n" for line in lines)
    assert out.rest == tail


# -- a first line that would fold into our Received: header ---------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"\tby mx.example.com (tlsmta) with ESMTPSA id FORGED\r\nSubject: hi\r\n\r\nbody\r\n.\r\n",
        b" client certificate: verified\r\n\r\n.\r\n",
        b". x\r\nSubject: hi\r\n.\r\n",  # unstuffed, the first line is " x"
        b" \r\n.\r\n",
        b"\t\r\n.\r\n",
    ],
)
def test_message_starting_with_sp_or_htab_is_refused(wire):
    """A first line starting with SP/HTAB (a continuation line, RFC 5322 3.2.2) would fold into
    our own Received: header: 554 5.6.0, whatever the chunking, and no body is handed out."""
    assert STARTS_FOLDED.reply.code == 554 and STARTS_FOLDED.status == "5.6.0"
    for cut in range(len(wire) + 1):
        out = run([wire[:cut], wire[cut:]])
        assert out.problem == STARTS_FOLDED, cut
        assert out.body is None and out.ended and out.rest == b""
    assert run([wire[i : i + 1] for i in range(len(wire))]).problem == STARTS_FOLDED


@pytest.mark.parametrize(
    "wire",
    [
        b"Subject: hi\r\n\tfolded\r\n\r\n body\r\n.\r\n",  # continuations later on are fine
        b"\r\n body\r\n.\r\n",  # no header section at all, body starts with a space
        b"..x\r\n.\r\n",
        b".\r\n",
    ],
)
def test_continuation_lines_after_the_first_are_fine(wire):
    assert run([wire]).problem is None


# -- SMTP smuggling -----------------------------------------------------------------


INJECTED = b"MAIL FROM:<x@evil.example>\r\nRCPT TO:<y@victim.example>\r\nDATA\r\nFrom: ceo@victim.example\r\n\r\nwire the money\r\n"

SMUGGLING = [
    (b"\n.\n", BARE_LF),
    (b"\n.\r\n", BARE_LF),
    (b"\r\n.\n", BARE_LF),
    (b"\r.\r", BARE_CR),
    (b"\r.\r\n", BARE_CR),
    (b"\r\n.\r", BARE_CR),
    (b"\r.\n", BARE_LF),  # both a bare CR and a bare LF: the LF is reported
]


@pytest.mark.parametrize("fake, problem", SMUGGLING, ids=[repr(f) for f, _ in SMUGGLING])
def test_smuggling_fake_end_does_not_end_data(fake, problem):
    """A fake end-of-data does not end DATA: the message is flagged, the injected commands stay inside it."""
    wire = b"Subject: hi\r\n\r\nhello" + fake + INJECTED + b".\r\nQUIT\r\n"
    reader = DataReader()
    result = reader.feed(wire)
    assert result.ended
    assert result.rest == b"QUIT\r\n"
    assert b"MAIL FROM" not in result.rest and b"RCPT TO" not in result.rest
    assert reader.problem == problem
    assert result.body == b""  # nothing of a rejected message is handed on


@pytest.mark.parametrize("fake, problem", SMUGGLING, ids=[repr(f) for f, _ in SMUGGLING])
def test_smuggling_without_real_end_keeps_reading(fake, problem):
    """With no real ``<CRLF>.<CRLF>`` yet, the reader stays in DATA and returns no rest at all."""
    reader = DataReader()
    result = reader.feed(b"hello" + fake + INJECTED)
    assert not result.ended
    assert result.rest == b""
    assert reader.problem == problem
    result = reader.feed(b"\r\n.\r\n")
    assert result.ended and result.rest == b""


@pytest.mark.parametrize("fake, problem", SMUGGLING, ids=[repr(f) for f, _ in SMUGGLING])
def test_smuggling_split_across_chunks(fake, problem):
    """The fake terminator split at every position gives the same verdict and the same rest."""
    wire = b"hello" + fake + INJECTED + b".\r\nQUIT\r\n"
    for cut in range(len(b"hello"), len(b"hello") + len(fake) + 1):
        out = run([wire[:cut], wire[cut:]])
        assert out.ended and out.rest == b"QUIT\r\n" and out.problem == problem, cut


@pytest.mark.parametrize(
    "wire, problem",
    [
        (b"a\nb\r\n.\r\n", BARE_LF),
        (b"a\rb\r\n.\r\n", BARE_CR),
        (b"\n\r\n.\r\n", BARE_LF),
        (b"\r\r\n.\r\n", BARE_CR),
        (b".\n\r\n.\r\n", BARE_LF),
        (b".\r.\r\n.\r\n", BARE_CR),
        (b"a\r\n\n.\r\n", BARE_LF),  # an LF alone as a line
    ],
)
def test_bare_line_endings_are_flagged(wire, problem):
    """A bare LF or bare CR anywhere in the message is a problem; the message body is withheld."""
    reader = DataReader()
    result = reader.feed(wire)
    assert reader.problem == problem
    assert result.body == b""


def test_nul_smuggling_case_is_refused():
    """``<CRLF><NUL>.<CRLF>`` does not end DATA and the message is refused with NUL's 550 5.5.2.

    A next hop that drops NUL before looking for the end of data would see
    ``<CRLF>.<CRLF>`` there and run the injected commands: we never accept it.
    """
    wire = b"Subject: hi\r\n\r\nhello\r\n\x00.\r\n" + INJECTED + b".\r\nQUIT\r\n"
    for cut in range(len(wire)):
        out = run([wire[:cut], wire[cut:]])
        assert out.ended and out.rest == b"QUIT\r\n" and out.problem == NUL, cut
        assert out.body is None  # nothing of the message is handed on
    assert str(NUL.reply) == "550 5.5.2 message contains a NUL octet; SMTP data must not carry NUL"


@pytest.mark.parametrize("wire", [b"\x00\r\n.\r\n", b"a\x00b\r\n.\r\n", b"ab\r\n.\x00\r\n.\r\n", b"..\x00\r\n.\r\n"])
def test_nul_anywhere_is_flagged(wire):
    """A NUL at a line start, inside a line, after a dot or in a stuffed line: the message is withheld."""
    reader = DataReader()
    result = reader.feed(wire)
    assert result.ended
    assert reader.problem == NUL
    assert result.body == b""


def test_problem_constants_are_5xx():
    """The named problems carry permanent replies with enhanced codes (DESIGN: 554/550 5.5.x, 552)."""
    assert BARE_LF.reply.code == BARE_CR.reply.code == 550
    assert BARE_LF.status.startswith("5.5.") and BARE_CR.status.startswith("5.5.")
    assert LINE_TOO_LONG.code == 550 and LINE_TOO_LONG.status == "5.5.6"
    assert TOO_BIG.code == 552 and TOO_BIG.status == "5.3.4"
    assert str(BARE_LF.reply) == f"550 {BARE_LF.status} {BARE_LF.text}"


# -- line length ----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 10, 998])
def test_line_at_limit_passes_one_more_fails(limit):
    """A line of exactly ``max_line_length`` octets passes; one octet more is LINE_TOO_LONG."""
    ok = DataReader(max_line_length=limit)
    result = ok.feed(b"a" * limit + b"\r\n.\r\n")
    assert ok.problem is None and result.body == b"a" * limit + b"\r\n"

    bad = DataReader(max_line_length=limit)
    result = bad.feed(b"a" * (limit + 1) + b"\r\n.\r\nQUIT\r\n")
    assert result.ended and result.rest == b"QUIT\r\n"
    assert bad.problem == too_long(limit)
    assert bad.problem.code == LINE_TOO_LONG.code and bad.problem.status == LINE_TOO_LONG.status
    assert str(limit) in bad.problem.reply.text


def test_stuffing_dot_counts_towards_line_length():
    """The limit is on the line as sent, so a stuffed line of ``limit`` octets after unstuffing fails."""
    reader = DataReader(max_line_length=5)
    reader.feed(b"." + b"." * 5 + b"\r\n.\r\n")
    assert reader.problem == too_long(5)
    reader = DataReader(max_line_length=5)
    reader.feed(b"." + b"." * 4 + b"\r\n.\r\n")
    assert reader.problem is None


def test_line_length_counts_across_chunks():
    """A long line sent in small pieces is measured as one line."""
    reader = DataReader(max_line_length=10)
    for _ in range(11):
        reader.feed(b"x")
    assert reader.problem == too_long(10)


def test_line_length_resets_at_crlf():
    """Many short lines that add up past the limit are fine: the limit is per line."""
    reader = DataReader(max_line_length=10)
    result = reader.feed(b"0123456789\r\n" * 50 + b".\r\n")
    assert result.ended and reader.problem is None


FIFTY_MIB = 50 * 1024 * 1024
CHUNK = 64 * 1024


def test_fifty_mib_line_is_not_buffered():
    """A 50 MiB line without CRLF, fed in 64 KiB chunks, never makes the reader hold more than 2 octets,
    allocates far less than 1 MiB at peak, and DATA still ends at the next CRLF.CRLF."""
    chunk = b"x" * CHUNK
    reader = DataReader(max_line_length=998)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(FIFTY_MIB // CHUNK):
            result = reader.feed(chunk)
            assert not result.ended
            assert result.body == b""
            assert len(reader._carry) <= 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 1024 * 1024
    assert reader.problem == too_long(998)
    result = reader.feed(b"\r\n.\r\nQUIT\r\n")
    assert result.ended
    assert result.rest == b"QUIT\r\n"
    assert reader.received == FIFTY_MIB + 2
    assert reader.problem == too_long(998)


def test_fifty_mib_line_with_carried_cr_is_not_buffered():
    """Chunks that end in CR (the first half of a possible CRLF) hold back only that one octet."""
    chunk = b"y" * (CHUNK - 1) + b"\r"
    reader = DataReader(max_line_length=998)
    for _ in range(64):
        reader.feed(chunk)
        assert reader._carry == b"\r"
    assert reader.problem == BARE_CR  # a CR followed by y is bare; it outranks the long line
    result = reader.feed(b"\n.\r\n")
    assert result.ended and result.rest == b""


def test_long_line_within_limit_streams_through():
    """With a big line limit a long line is handed on chunk by chunk, never accumulated."""
    chunk = b"z" * CHUNK
    reader = DataReader(max_line_length=BIG)
    total = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(160):  # 10 MiB
            result = reader.feed(chunk)
            total += len(result.body)
            del result
            assert len(reader._carry) <= 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 1024 * 1024
    result = reader.feed(b"\r\n.\r\n")
    total += len(result.body)
    assert result.ended and reader.problem is None
    assert total == 160 * CHUNK + 2


# -- size -------------------------------------------------------------------------------


def test_size_at_limit_passes_one_more_fails():
    """A message of exactly ``max_size`` octets is accepted; one octet more is TOO_BIG."""
    wire = b"12345678\r\n"  # 10 octets
    ok = DataReader(max_size=10)
    result = ok.feed(wire + b".\r\n")
    assert ok.problem is None and result.body == wire

    bad = DataReader(max_size=9)
    result = bad.feed(wire + b".\r\nQUIT\r\n")
    assert result.ended and result.rest == b"QUIT\r\n"
    assert bad.problem == too_big(9)
    assert bad.problem.reply.code == TOO_BIG.code == 552
    assert result.body == b""


def test_size_counts_stuffing_dots():
    """The size limit counts the octets as received, stuffing dots included (as SIZE does)."""
    reader = DataReader(max_size=3)
    reader.feed(b"..\r\n.\r\n")  # 4 octets sent, 3 stored
    assert reader.problem == too_big(3)


def test_too_big_stops_handing_out_body():
    """Once the size is exceeded the rest of the message is read but not handed on."""
    reader = DataReader(max_size=100)
    first = reader.feed(b"a" * 90 + b"\r\n")
    assert first.body  # still within the limit
    second = reader.feed(b"b" * 50 + b"\r\n")
    assert second.body == b"" and reader.problem == too_big(100)
    third = reader.feed(b"c\r\n.\r\nNOOP\r\n")
    assert third.body == b"" and third.ended and third.rest == b"NOOP\r\n"


def test_problem_does_not_depend_on_segmentation():
    """A message with several faults gets the same reply however it is split (the ranked problem)."""
    wire = b"x" * 20 + b"\n" + b"y\r\n.\r\n"
    whole = run([wire], max_line_length=5, max_size=10)
    assert whole.problem == BARE_LF
    for cut in range(1, len(wire)):
        assert run([wire[:cut], wire[cut:]], max_line_length=5, max_size=10).problem == BARE_LF, cut


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20))
@settings(max_examples=80, deadline=None)
def test_hop_counter_counts_header_received_lines_whatever_the_chunks(cuts):
    """HopCounter counts Received: header lines only (not in the body), however the message is split."""
    from tlsmta.smtp._data import HopCounter

    message = (
        b"Received: from a\r\n\tby b\r\nRECEIVED: x\r\nSubject: Received: not a header\r\n"
        b"received:y\r\n\r\nReceived: in the body\r\n"
    )
    counter, position = HopCounter(), 0
    for cut in cuts:
        counter.feed(message[position : position + cut])
        position += cut
    counter.feed(message[position:])
    assert counter.hops == 3 and counter.done


def test_hop_counter_no_headers():
    """A message starting with a blank line has no headers and no hops."""
    from tlsmta.smtp._data import HopCounter

    counter = HopCounter()
    counter.feed(b"\r\nReceived: body\r\n")
    assert (counter.hops, counter.done) == (0, True)


@pytest.mark.parametrize(
    "chunks, expected",
    [
        ([b"Received: x\r\nTLS-Required: No\r\nSubject: s\r\n\r\nbody\r\n"], True),
        ([b"Received: x\r\ntls-required:   nO  \r\n\r\nbody\r\n"], True),
        ([b"Received: x\r\nTLS-Required:\r\n No\r\n\r\nbody\r\n"], True),  # folded value
        ([b"Received: x\r\nTLS-Requ", b"ired: N", b"o\r", b"\n\r\nbody\r\n"], True),  # split anywhere
        ([b"Received: x\r\nSubject: s\r\nTLS-Required: No\r\n"], True),  # all header section, no body
        ([b"Received: x\r\nSubject: s\r\n\r\nTLS-Required: No\r\n"], False),  # in the body
        ([b"Received: x\r\nX-TLS-Required: No\r\n\r\n"], False),
        ([b"Received: x\r\nTLS-Required: Nope\r\n\r\n"], False),
        ([b"Received: x\r\nTLS-Required: No thanks\r\n\r\n"], False),
        ([b"Received: x\r\nSubject: " + b"y" * 5000 + b"\r\nTLS-Required: No\r\n\r\n"], True),  # after a long field
        ([b"Received: x\r\n\r\n"], False),
    ],
)
def test_tls_required_no_detected_while_streaming(chunks, expected):
    """'TLS-Required: No' in the header section (any case, folded, split across writes) is
    found, fed chunk by chunk as the inbound side feeds it; in the body or with another value it is not."""
    scanner = HeaderScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    assert scanner.tls_required_no is expected
    assert says_tls_required_no(b"".join(chunks)) is expected


@pytest.mark.parametrize(
    "chunks, expected",
    [
        ([b"Subject: s\r\nMessage-ID: <a.1@example.org>\r\n\r\nbody\r\n"], "<a.1@example.org>"),
        ([b"message-id:\r\n  <folded@example.org>\r\n\r\n"], "<folded@example.org>"),  # folded, any case
        ([b"Message-I", b"D: <spl", b"it@x>\r", b"\n\r\nbody"], "<split@x>"),  # split anywhere
        ([b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\n"], "<first@x>"),
        ([b"Message-ID: <c@x> (a comment)\r\n\r\n"], "<c@x>"),
        ([b"Message-ID: no-brackets@x\r\n\r\n"], "no-brackets@x"),
        ([b"Subject: s\r\nMessage-ID: <last@x>"], "<last@x>"),  # all header section, no line end
        ([b"Subject: s\r\n\r\nMessage-ID: <in-body@x>\r\n"], ""),
        ([b"Resent-Message-ID: <r@x>\r\n\r\n"], ""),
        ([b"Message-ID: <" + b"l" * 300 + b"@x>\r\n\r\n"], "<" + "l" * 300 + "@x>"),  # longer than 64
    ],
)
def test_message_id_found_while_streaming(chunks, expected):
    """The header section's first Message-ID (its <...>), for the log lines; never the body's."""
    scanner = HeaderScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    assert scanner.message_id == expected


def test_one_header_walk_finds_both_facts():
    """TLS-Required and Message-ID come from the same walk, in either order, split anywhere."""
    message = b"Message-ID: <both@x>\r\nSubject: s\r\ntls-required: no\r\n\r\nMessage-ID: <body@x>\r\n"
    for cut in range(1, len(message)):
        scanner = HeaderScanner()
        scanner.feed(message[:cut])
        scanner.feed(message[cut:])
        scanner.finish()
        assert (scanner.tls_required_no, scanner.message_id) == (True, "<both@x>"), cut
