"""Unit tests for :mod:`tlsmta.smtp._client_codec`: the SMTP client's wire format.

No reactor, no sockets.  Replies are parsed from bytes; DATA bodies are
dot-stuffed and then read back with the server-side
:class:`tlsmta.smtp._data.DataReader`, so the two halves of the DATA
transparency rule (RFC 5321 4.5.2) are checked against each other.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.mail.smtp import SMTPClient

from tlsmta.smtp._client_codec import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    DotStuffer,
    Reply,
    ReplyError,
    ReplyParser,
    parse_ehlo,
)
from tlsmta.smtp._data import NUL, DataReader

# -- helpers --------------------------------------------------------------------------


def replies_in(parser: ReplyParser, data: bytes) -> list[Reply]:
    """Every reply ``data`` completes, popped one at a time as the client does."""
    parser.push(data)
    replies = []
    while (reply := parser.pop()) is not None:
        replies.append(reply)
    return replies


def stuff(*chunks: bytes) -> bytes:
    """Everything a DotStuffer sends for ``chunks``, the end-of-data line included."""
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


def normalised(body: bytes) -> bytes:
    """An independent model: every CRLF, lone CR and lone LF becomes CRLF; a
    non-empty body gets a final CRLF if it lacks one."""
    lines = re.split(rb"\r\n|\r|\n", body)
    out = b"".join(line + b"\r\n" for line in lines[:-1])
    if lines[-1]:
        out += lines[-1] + b"\r\n"
    return out


def unstuff(wire: bytes):
    """Read ``wire`` as a server would after 354."""
    reader = DataReader(max_line_length=10**6, max_size=10**9)
    result = reader.feed(wire)
    return reader, result


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


class _StockClient:
    """Just enough of an SMTPClient for its transformChunk to run."""

    def resetTimeout(self) -> None:
        pass


# Bodies made mostly of the bytes that matter: dots, CR, LF.
_atoms = st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"x.", b".\r\n", b"\r\n.\r\n"])
bodies = st.one_of(st.lists(_atoms, max_size=30).map(b"".join), st.binary(max_size=200))
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


# -- ReplyParser ----------------------------------------------------------------------


def test_single_line_reply():
    """A one-line reply becomes one Reply with its code and text."""
    replies = replies_in(ReplyParser(), b"250 2.0.0 Ok: queued\r\n")
    assert replies == [Reply(250, ("2.0.0 Ok: queued",))]
    assert replies[0].text == "2.0.0 Ok: queued"
    assert str(replies[0]) == "250 2.0.0 Ok: queued"


def test_multi_line_reply_is_one_reply():
    """Continuation lines (code followed by '-') are gathered into one Reply."""
    data = b"250-mx.example.test hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    assert replies_in(ReplyParser(), data) == [Reply(250, ("mx.example.test hello", "PIPELINING", "SIZE 1000"))]


def test_reply_split_byte_by_byte():
    """A reply that arrives one byte at a time parses exactly as when it arrives whole."""
    data = b"250-first\r\n250-second\r\n250 last\r\n354 go ahead\r\n"
    parser = ReplyParser()
    replies = []
    for i in range(len(data)):
        replies += replies_in(parser, data[i : i + 1])
    assert replies == replies_in(ReplyParser(), data)
    assert [r.code for r in replies] == [250, 354]


def test_pipelined_replies_in_one_read():
    """Several replies in one read (PIPELINING) come back in order."""
    replies = replies_in(ReplyParser(), b"250 sender ok\r\n250 rcpt ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
    assert [r.code for r in replies] == [250, 250, 550, 354]


def test_partial_line_waits_for_its_end():
    """A line without its line ending yields nothing until the rest arrives."""
    parser = ReplyParser()
    assert replies_in(parser, b"250 o") == []
    assert replies_in(parser, b"k\r") == []
    assert replies_in(parser, b"\n") == [Reply(250, ("ok",))]


def test_bare_lf_line_ending_and_code_only_line_accepted():
    """A reply ended by a bare LF is read, and a line that is only a code has empty text."""
    assert replies_in(ReplyParser(), b"250 ok\n221\r\n") == [Reply(250, ("ok",)), Reply(221, ("",))]


@pytest.mark.parametrize(
    "garbage",
    [b"hello there\r\n", b"25x ok\r\n", b"2500 ok\r\n", b"250_ok\r\n", b"\r\n", b"25\r\n"],
)
def test_garbage_is_reply_error(garbage):
    """Bytes that are not an SMTP reply line raise ReplyError."""
    with pytest.raises(ReplyError):
        replies_in(ReplyParser(), garbage)


def test_multi_line_reply_changing_code_is_error():
    """A continuation with a different code than the first line is not SMTP."""
    with pytest.raises(ReplyError):
        replies_in(ReplyParser(), b"250-one\r\n550 two\r\n")


def test_over_long_unterminated_line_is_error():
    """A line that grows beyond MAX_REPLY_LINE without a line end raises ReplyError
    (the parser does not buffer without bound); one byte less is still waited for."""
    parser = ReplyParser()
    assert replies_in(parser, b"250 " + b"x" * (MAX_REPLY_LINE - 4)) == []
    with pytest.raises(ReplyError):
        replies_in(parser, b"x")


def test_over_long_terminated_line_is_cut():
    """A long but complete line is cut to MAX_REPLY_LINE octets rather than kept whole."""
    [reply] = replies_in(ReplyParser(), b"250 " + b"y" * (3 * MAX_REPLY_LINE) + b"\r\n")
    assert reply.code == 250
    assert len(reply.lines[0]) == MAX_REPLY_LINE - 4


def test_too_many_continuation_lines_is_error():
    """A reply with more than MAX_REPLY_LINES lines raises ReplyError."""
    data = b"250-x\r\n" * (MAX_REPLY_LINES + 1) + b"250 end\r\n"
    with pytest.raises(ReplyError):
        replies_in(ReplyParser(), data)


def test_discard_buffered_drops_unparsed_bytes():
    """After a 220 to STARTTLS, bytes that came with it are dropped, never parsed later
    (the client-side STARTTLS injection defence)."""
    parser = ReplyParser()
    assert replies_in(parser, b"220 2.0.0 ready for TLS\r\n250 injected") == [Reply(220, ("2.0.0 ready for TLS",))]
    assert parser.discard_buffered() == b"250 injected"
    assert replies_in(parser, b"250 real\r\n") == [Reply(250, ("real",))]
    assert parser.discard_buffered() == b""


# -- Reply ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, enhanced",
    [
        (("2.1.5 Ok",), "2.1.5"),
        (("5.7.1 relay denied",), "5.7.1"),
        (("4.4.2 timeout", "5.0.0 later line"), "4.4.2"),
        (("Ok 2.0.0",), None),  # not at the start
        (("25.1.1 no",), None),
        (("3.0.0 wrong class",), None),
        (("",), None),
        ((), None),
    ],
)
def test_enhanced_status(lines, enhanced):
    """Reply.enhanced is the RFC 3463 code at the start of the first line, or None."""
    assert Reply(250, lines).enhanced == enhanced


@pytest.mark.parametrize(
    "code, positive, permanent",
    [(220, True, False), (250, True, False), (354, True, False), (421, False, False), (451, False, False),
     (500, False, True), (554, False, True)],
)
def test_positive_and_permanent(code, positive, permanent):
    """2xx/3xx are positive, 5xx permanent, 4xx neither."""
    reply = Reply(code, ("x",))
    assert (reply.positive, reply.permanent) == (positive, permanent)


def test_parse_ehlo():
    """EHLO keywords are upper-cased and mapped to their parameters; the greeting line is not a keyword."""
    [reply] = replies_in(ReplyParser(), 
        b"250-mx.example.test greets you\r\n250-pipelining\r\n250-SIZE 10240000\r\n"
        b"250-AUTH PLAIN LOGIN\r\n250-\r\n250 STARTTLS\r\n"
    )
    assert parse_ehlo(reply) == {"PIPELINING": "", "SIZE": "10240000", "AUTH": "PLAIN LOGIN", "STARTTLS": ""}


def test_parse_ehlo_single_line():
    """An EHLO reply of one line advertises nothing (the greeting is not STARTTLS even if it says so)."""
    assert parse_ehlo(Reply(250, ("STARTTLS",))) == {}


# -- DotStuffer: the fixed faults --------------------------------------------------------


def test_stock_twisted_client_faults():
    """The stock SMTPClient.transformChunk does not stuff the first line and turns
    CRLF into CR CR LF; DotStuffer gets both right."""
    stock = SMTPClient.transformChunk(_StockClient(), b".first\r\nx\r\n")
    assert stock.startswith(b".first")  # not stuffed: a lone "." first line would end DATA
    assert b"\r\r\n" in stock
    assert SMTPClient.transformChunk(_StockClient(), b"a\r\nb") == b"a\r\r\nb"
    assert stuff(b".first\r\nx\r\n") == b"..first\r\nx\r\n.\r\n"
    assert stuff(b"a\r\nb") == b"a\r\nb\r\n.\r\n"


def test_first_line_dot_is_stuffed():
    """A leading dot on the very first line is doubled."""
    assert stuff(b".\r\nrest\r\n") == b"..\r\nrest\r\n.\r\n"


def test_dot_lines_inside_body_are_stuffed():
    """Every line that starts with a dot is doubled, not only the first."""
    assert stuff(b"a\r\n.\r\n..b\r\nc.d\r\n") == b"a\r\n..\r\n...b\r\nc.d\r\n.\r\n"


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a\r\n", b".\r\nb\r\n"],  # line start at the chunk start
        [b"a\r", b"\n.\r\nb\r\n"],  # CRLF split across chunks
        [b"a\r\n.", b"\r\nb\r\n"],  # the dot at the end of a chunk
        [b"a", b"\r", b"\n", b".", b"\r", b"\n", b"b", b"\r\n"],  # byte by byte
        [b"a\r\n", b"", b".\r\nb\r\n"],  # an empty chunk in between
    ],
)
def test_dot_line_crossing_chunk_boundary_is_stuffed(chunks):
    """A "." line is stuffed however the chunks split it or the line ending before it."""
    assert stuff(*chunks) == b"a\r\n..\r\nb\r\n.\r\n"


def test_dot_in_middle_of_line_across_chunks_not_stuffed():
    """A dot that continues a line begun in an earlier chunk is not at a line start."""
    assert stuff(b"abc", b".def\r\n") == b"abc.def\r\n.\r\n"


def test_crlf_split_across_chunks_is_one_line_ending():
    """A CR at the end of one chunk and LF at the start of the next make one CRLF, not two."""
    assert stuff(b"a\r", b"\nb\r\n") == b"a\r\nb\r\n.\r\n"


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\rb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"\n.", b"\r\n..\r\n.\r\n"),
    ],
)
def test_bare_line_endings_become_crlf(body, wire):
    """Lone LF and lone CR are sent as CRLF; the next hop never sees a bare line ending."""
    assert stuff(body) == wire


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"", b".\r\n"),
        (b"x\r\n", b"x\r\n.\r\n"),
        (b"x", b"x\r\n.\r\n"),
        (b"x\r", b"x\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
    ],
)
def test_finish_adds_crlf_only_when_needed(body, wire):
    """finish() ends the last line if it is open, then sends the lone "." line."""
    assert stuff(body) == wire


# -- DotStuffer: properties ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=bodies, cuts=cut_lists)
def test_chunking_does_not_change_output(body, cuts):
    """Any split of the body into chunks produces the same bytes as the whole body at once."""
    assert stuff(*split_at(body, cuts)) == stuff(body)


@settings(max_examples=300, deadline=None)
@given(body=bodies, cuts=cut_lists)
def test_server_reads_back_the_body(body, cuts):
    """What DotStuffer sends, read by the server's DataReader, is the body with every
    line ending made CRLF: no problem, DATA ends exactly at the end (a body line "."
    never ends DATA early) and nothing is left over."""
    if body[:1] in (b" ", b"\t"):
        # The server refuses a message whose first line is a continuation line
        # (it would fold into our Received: header; see test_smtp_data).
        body = b"X" + body
    wire = stuff(*split_at(body, cuts))
    reader, result = unstuff(wire)
    assert result.ended
    assert result.rest == b""
    if b"\x00" in body:
        # The server refuses NUL (a smuggling aid; see test_smtp_data), wherever DATA ends.
        assert reader.problem == NUL
        return
    assert reader.problem is None
    assert result.body == normalised(body)


@settings(max_examples=200, deadline=None)
@given(body=bodies)
def test_output_has_no_bare_line_endings(body):
    """The output is lines ending in CRLF and nothing else; no line of the body part is a lone "."."""
    wire = stuff(body)
    assert wire.endswith(b".\r\n")
    content = wire[:-3]
    lines = content.split(b"\r\n")
    assert lines[-1] == b""  # every line terminated
    for line in lines[:-1]:
        assert b"\r" not in line and b"\n" not in line
        assert line != b"."


def test_reply_control_characters_are_neutralised():
    """A bare CR (or other control character) in a server's reply cannot forge lines in our logs or DSNs."""
    from tlsmta.smtp._client_codec import ReplyParser

    [reply] = replies_in(ReplyParser(), b"550 5.1.1 no such user\rFinal-Recipient: rfc822; ceo@victim.example\x00\r\n")
    assert "\r" not in reply.text and "\x00" not in reply.text
    assert reply.text == "5.1.1 no such user?Final-Recipient: rfc822; ceo@victim.example?"
