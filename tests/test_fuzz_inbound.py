"""Hypothesis against the inbound protocol: random command streams and bodies, in memory.

Whatever a client sends: no exception escapes, every reply is a well-formed
SMTP reply, a message is stored exactly when it was answered 250, and the
next session (sharing the listener's runtime) is unaffected.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inbound_harness import Session, runtime

from tlsmta.testing import MemorySink

REPLY = re.compile(rb"^[2-5]\d\d[ -]")

COMMANDS = [
    b"EHLO client.test", b"HELO client.test", b"MAIL FROM:<a@client.test>", b"MAIL FROM:<>",
    b"MAIL FROM:<a@client.test> SIZE=10 BODY=8BITMIME", b"RCPT TO:<b@example.com>", b"RCPT TO:<postmaster>",
    b"RCPT TO:<c@ab--cd.example>", b"DATA", b"RSET", b"NOOP", b"VRFY x", b"QUIT", b"STARTTLS", b"AUTH PLAIN",
    b"MAIL FROM:<a@b", b"RCPT TO:x", b"BDAT 10", b".", b"", b"\x00\xff\x16\x03\x01",
]
BODY_PIECES = [b"Subject: x\r\n", b"\r\n", b"line\r\n", b".\r\n", b"..\r\n", b"\n.\n", b"\r.\r", b"x" * 1200 + b"\r\n", b"\r", b"\n"]

line = st.one_of(st.sampled_from(COMMANDS), st.binary(max_size=40)).map(lambda b: b + b"\r\n")
stream = st.lists(st.one_of(line, st.sampled_from(BODY_PIECES), st.binary(max_size=20)), max_size=40)
splits = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream, splits)
def test_random_streams_never_break_the_server(chunks: list[bytes], cuts: list[int]) -> None:
    """Random commands and bytes, split arbitrarily: only well-formed replies, 250 iff stored, next session fine."""
    sink = MemorySink()
    rt = runtime(sink, listener={"max_line_length": 1000})
    first = Session(rt)
    data = b"".join(chunks)
    position, i = 0, 0
    while position < len(data) and not first.closed:
        size = cuts[i % len(cuts)]
        first.proto.dataReceived(data[position : position + size])  # must not raise
        position += size
        i += 1
    output = first.transport.value()
    for reply in output.split(b"\r\n")[:-1]:
        assert REPLY.match(reply), reply
    assert len(sink.stored) == output.count(b"250 2.0.0 Ok: queued as")

    second = Session(rt)
    second.new_replies()
    assert second.codes("EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n") == [250, 250, 250, 354, 250]
    assert sink.stored[-1].data.endswith(b"hi\r\n")
    assert sink.stored[-1].envelope.sender == "a@c.test"
