"""The milter conversation's own cost, with no sockets or reactor: one message's stages
(CONNECT, HELO, MAIL, RCPT, DATA, headers, body, end of message) through
tlsmta.inbound._milter_protocol against a milter that answers "continue" to everything,
plus splitting the message into header fields and joining it again.

    .venv/bin/python bench/milter_codec.py [MESSAGES] [BODY_BYTES]

Prints microseconds per message; run each checkout's copy to compare.
"""

from __future__ import annotations

import struct
import sys
import time

from tlsmta.inbound import _milter_protocol as mp

CONTINUE = mp.packet(b"c")


def one_message(message: bytes) -> None:
    conversation = mp.Conversation()
    conversation.start()
    conversation.next_event()
    conversation.receive_data(mp.packet(b"O", struct.pack("!III", 6, mp.OFFERED_ACTIONS, 0)))
    conversation.next_event()
    headers, body = mp.split_message(message)
    stages: list[mp.Stage] = [mp.Connect("[127.0.0.1]", "127.0.0.1", 40000), mp.Helo("client.test"),
                              mp.Mail("a@client.test"), mp.Rcpt("b@example.com"), mp.Message(tuple(headers), body)]
    for stage in stages:
        conversation.ask(stage)
        while True:
            event = conversation.next_event()
            if isinstance(event, mp.Answer):
                break
            if event is None:  # waiting for the milter's reply to the last packet sent
                conversation.receive_data(CONTINUE)  # also a final answer to the end of message
    mp.join_message(headers, body)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    message = (b"Received: from client.test\r\n\tby mx.test\r\nFrom: a@client.test\r\nTo: b@example.com\r\n"
               b"Subject: x\r\n\r\n" + (b"y" * 76 + b"\r\n") * (size // 78))
    started = time.perf_counter()
    for _ in range(count):
        one_message(message)
    elapsed = time.perf_counter() - started
    print(f"{count} messages of {len(message)} bytes: {elapsed / count * 1e6:.1f} us per message")
    print(f"RESULT milter_codec us_per_message={elapsed / count * 1e6:.1f} bytes={len(message)}")


if __name__ == "__main__":
    main()
