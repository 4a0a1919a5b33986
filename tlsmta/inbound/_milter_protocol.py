"""The milter protocol (Sendmail/Postfix, version 6), sans I/O.

:class:`Conversation` is the MTA's side of one milter connection as a state
machine: the shell feeds it the bytes the milter sent
(:meth:`~Conversation.receive_data`) and takes out packets to write and the
milter's answer to each stage (:meth:`~Conversation.next_event`). A stage is
one step of the SMTP session the milter is asked about (:class:`Connect`,
:class:`Helo`, :class:`Mail`, :class:`Rcpt`, :class:`Message`); it is asked
with :meth:`~Conversation.ask` and ends in one :class:`Answer`.

Commands go one at a time, each waiting for its reply, unless the milter
negotiated not to answer it (``SMFIP_NR_*``) or not to see it
(``SMFIP_NO*``); libmilter is not written for pipelined commands. Anything
the milter sends that the protocol does not allow here (an unknown reply,
a modification it did not negotiate, a malformed packet) raises
:class:`MilterProtocolError`, which the shell turns into the listener's
default action. Reference: libmilter's ``mfdef.h`` and Postfix's
``milter8.c``.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Mapping, Sequence

import attrs

from tlsmta.errors import TlsmtaError
from tlsmta.smtp import Reply

VERSION = 6
MAX_PACKET = 1024 * 1024  # libmilter's largest (SMFIP_MDS_1M); anything bigger is garbage
BODY_CHUNK = 65535  # MILTER_CHUNK_SIZE: what every milter takes without SMFIP_MDS_*

# SMFIC_*: commands, MTA -> milter.
OPTNEG, MACRO, CONNECT, HELO, MAIL, RCPT = b"O", b"D", b"C", b"H", b"M", b"R"
DATA, HEADER, EOH, BODY, BODYEOB, ABORT, QUIT = b"T", b"L", b"N", b"B", b"E", b"A", b"Q"

# SMFIF_*: the modifications we let a milter make (all of version 6's).
ADDHDRS, CHGBODY, ADDRCPT, DELRCPT = 0x01, 0x02, 0x04, 0x08
CHGHDRS, QUARANTINE, CHGFROM, ADDRCPT_PAR, SETSYMLIST = 0x10, 0x20, 0x40, 0x80, 0x100
OFFERED_ACTIONS = 0x1FF

# SMFIP_*: steps a milter may skip (NO*) or not answer (NR_*).
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
NR_HDR, NOUNKNOWN, NODATA, SKIP = 0x80, 0x100, 0x200, 0x400
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_UNKN, NR_EOH, NR_BODY = (
    0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000,
)
# Not offered: SMFIP_RCPT_REJ (we never show rejected recipients), SMFIP_HDR_LEADSPC
# (values lose the one space after the colon, as milters expect), SMFIP_MDS_* (bigger chunks).
OFFERED_PROTOCOL = (
    NOCONNECT | NOHELO | NOMAIL | NORCPT | NOBODY | NOHDRS | NOEOH | NR_HDR | NOUNKNOWN | NODATA | SKIP
    | NR_CONN | NR_HELO | NR_MAIL | NR_RCPT | NR_DATA | NR_UNKN | NR_EOH | NR_BODY
)

# For each command: the SMFIP_ flag that skips it and the one that says it gets no reply.
_SKIP_FLAG = {CONNECT: NOCONNECT, HELO: NOHELO, MAIL: NOMAIL, RCPT: NORCPT, DATA: NODATA,
              HEADER: NOHDRS, EOH: NOEOH, BODY: NOBODY}
_NO_REPLY_FLAG = {CONNECT: NR_CONN, HELO: NR_HELO, MAIL: NR_MAIL, RCPT: NR_RCPT, DATA: NR_DATA,
                  HEADER: NR_HDR, EOH: NR_EOH, BODY: NR_BODY}


class MilterProtocolError(TlsmtaError):
    """The milter sent something the protocol does not allow at this point."""


class Verdict(enum.Enum):
    CONTINUE = "continue"  # go on (SMFIR_CONTINUE; also a stage the milter did not see)
    ACCEPT = "accept"  # no more questions: the connection (connect/helo) or this message
    REJECT = "reject"  # 5xx (SMFIR_REJECT, or SMFIR_REPLYCODE with a 5xx)
    TEMPFAIL = "tempfail"  # 4xx
    DISCARD = "discard"  # answer 250 and drop the message
    SKIP = "skip"  # no more body chunks (SMFIR_SKIP, only to a body chunk)


# -- modifications a milter may make at end of message --------------------------------------


@attrs.frozen
class AddHeader:
    name: str
    value: str


@attrs.frozen
class InsertHeader:
    index: int  # position among all header fields, 0 the first
    name: str
    value: str


@attrs.frozen
class ChangeHeader:
    index: int  # the index-th field of that name, from 1; an empty value deletes it
    name: str
    value: str


@attrs.frozen
class ChangeSender:
    address: str  # without angle brackets
    args: str = ""


@attrs.frozen
class AddRecipient:
    address: str
    args: str = ""


@attrs.frozen
class DeleteRecipient:
    address: str


@attrs.frozen
class ReplaceBody:
    chunk: bytes  # one SMFIR_REPLBODY; the chunks together are the new body


@attrs.frozen
class Quarantine:
    reason: str


Modification = (
    AddHeader | InsertHeader | ChangeHeader | ChangeSender | AddRecipient | DeleteRecipient | ReplaceBody | Quarantine
)


# -- stages ---------------------------------------------------------------------------------


@attrs.frozen
class Connect:
    hostname: str  # the client's name, "[ADDR]" when it has none
    address: str  # IP address, or a UNIX socket path
    port: int = 0
    family: str = "4"  # "4", "6", "L" (UNIX) or "U" (unknown)
    macros: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Helo:
    name: str
    macros: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Mail:
    sender: str  # without angle brackets; "" for the null sender
    args: tuple[str, ...] = ()  # ESMTP parameters, "KEY=VALUE"
    macros: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Rcpt:
    recipient: str
    args: tuple[str, ...] = ()
    macros: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Message:
    """DATA to end of message: the header fields, split as milters see them, and the body."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    macros: Mapping[str, str] = attrs.field(factory=dict)  # for DATA and end of message


Stage = Connect | Helo | Mail | Rcpt | Message


@attrs.frozen
class Answer:
    """The milter's answer to one stage."""

    verdict: Verdict
    reply: Reply | None = None  # the milter's own reply text (SMFIR_REPLYCODE)
    modifications: tuple[Modification, ...] = ()  # end of message only


@attrs.frozen
class Send:
    """Write these bytes to the milter."""

    data: bytes


@attrs.frozen
class Negotiated:
    """SMFIC_OPTNEG was answered: the actions and steps agreed."""

    actions: int
    protocol: int


Event = Send | Negotiated | Answer


def packet(command: bytes, payload: bytes = b"") -> bytes:
    """One packet: 32-bit length (command included), the command byte, its data."""
    return struct.pack("!I", len(payload) + 1) + command + payload


def _strings(*values: str) -> bytes:
    return b"".join(v.encode("utf-8", "surrogateescape") + b"\0" for v in values)


def _macros(command: bytes, macros: Mapping[str, str]) -> bytes:
    if not macros:
        return b""
    return packet(MACRO, command + _strings(*(s for item in macros.items() for s in item)))


def _envelope_address(address: str) -> str:
    return f"<{address}>"


class Conversation:
    """One milter connection, from option negotiation to QUIT, without I/O."""

    def __init__(self, actions: int = OFFERED_ACTIONS, protocol: int = OFFERED_PROTOCOL):
        self.offered_actions = actions
        self.offered_protocol = protocol
        self.actions = 0
        self.protocol = 0
        self.negotiated = False
        self.in_message = False  # MAIL was sent and the message was not ended: ABORT before the next
        self._buffer = b""
        self._outbox: deque[Event] = deque()
        self._commands: deque[tuple[bytes, bytes]] = deque()  # (command, packet) still to send
        self._waiting: bytes | None = None  # the command whose reply is awaited
        self._modifications: list[Modification] = []
        self._stage: Stage | None = None

    # -- the shell's side ---------------------------------------------------------------

    def start(self) -> None:
        """Open with SMFIC_OPTNEG: our version, the modifications and steps we offer."""
        self._waiting = OPTNEG
        self._outbox.append(Send(packet(OPTNEG, struct.pack("!III", VERSION, self.offered_actions, self.offered_protocol))))

    @property
    def busy(self) -> bool:
        """A stage (or the negotiation) is waiting for the milter."""
        return self._waiting is not None or bool(self._commands)

    def ask(self, stage: Stage) -> None:
        """Put one stage to the milter; its Answer comes out of next_event()."""
        if not self.negotiated or self.busy:
            raise RuntimeError("a stage is asked only after negotiation, one at a time")
        self._stage = stage
        self._modifications = []
        self._commands.extend(self._commands_for(stage))
        self._advance()

    def abort(self) -> None:
        """The SMTP transaction ended without a message (RSET, rejected, lost): SMFIC_ABORT, no reply."""
        if self.in_message:
            self.in_message = False
            self._outbox.append(Send(packet(ABORT)))

    def quit(self) -> bytes:
        """The packet that ends the conversation (no reply)."""
        return packet(QUIT)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = struct.unpack("!I", self._buffer[:4])
            if length < 1 or length > MAX_PACKET:
                raise MilterProtocolError(f"packet length {length}")
            if len(self._buffer) < 4 + length:
                return
            command, payload = self._buffer[4:5], self._buffer[5 : 4 + length]
            self._buffer = self._buffer[4 + length :]
            self._reply(command, payload)

    def next_event(self) -> Event | None:
        return self._outbox.popleft() if self._outbox else None

    # -- commands ------------------------------------------------------------------------

    def _commands_for(self, stage: Stage) -> list[tuple[bytes, bytes]]:
        if isinstance(stage, Connect):
            family = stage.family.encode()
            address = family + (struct.pack("!H", stage.port) + _strings(stage.address) if family != b"U" else b"")
            return self._command(CONNECT, _strings(stage.hostname) + address, stage.macros)
        if isinstance(stage, Helo):
            return self._command(HELO, _strings(stage.name), stage.macros)
        if isinstance(stage, Mail):
            self.abort()  # a transaction the milter still thinks is open
            self.in_message = True
            return self._command(MAIL, _strings(_envelope_address(stage.sender), *stage.args), stage.macros)
        if isinstance(stage, Rcpt):
            return self._command(RCPT, _strings(_envelope_address(stage.recipient), *stage.args), stage.macros)
        commands = self._command(DATA, b"", stage.macros)
        for name, value in stage.headers:
            commands += self._command(HEADER, _strings(name, value))
        commands += self._command(EOH)
        body = stage.body
        for start in range(0, len(body), BODY_CHUNK):
            commands += self._command(BODY, body[start : start + BODY_CHUNK])
        return commands + [(BODYEOB, _macros(BODYEOB, stage.macros) + packet(BODYEOB))]

    def _command(self, command: bytes, payload: bytes = b"", macros: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
        if self.protocol & _SKIP_FLAG.get(command, 0):
            return []
        return [(command, _macros(command, macros or {}) + packet(command, payload))]

    def _advance(self) -> None:
        """Send commands until one needs a reply; the stage's Answer when none is left."""
        while self._commands:
            command, data = self._commands.popleft()
            self._outbox.append(Send(data))
            if not self.protocol & _NO_REPLY_FLAG.get(command, 0):
                self._waiting = command
                return
        self._finish(Answer(Verdict.CONTINUE))

    def _finish(self, answer: Answer) -> None:
        self._commands.clear()
        self._waiting = None
        if isinstance(self._stage, Message):
            self.in_message = False  # else an ABORT before the next MAIL tidies up (libmilter takes it anywhere)
        self._stage = None
        self._outbox.append(answer)

    # -- replies -------------------------------------------------------------------------

    def _reply(self, command: bytes, payload: bytes) -> None:
        waiting = self._waiting
        if waiting is None:
            raise MilterProtocolError(f"reply {command!r} when none was asked for")
        if waiting == OPTNEG:
            self._negotiate(command, payload)
            return
        if command == b"p":  # SMFIR_PROGRESS: still working (the shell restarts its timer)
            return
        if waiting == BODYEOB and self._modification(command, payload):
            return
        if command == b"c":
            self._advance()
        elif command == b"s" and waiting == BODY and self.protocol & SKIP:
            self._skip_body()
        else:
            self._finish(self._final(command, payload))

    def _negotiate(self, command: bytes, payload: bytes) -> None:
        if command != OPTNEG or len(payload) < 12:
            raise MilterProtocolError(f"expected OPTNEG, got {command!r}")
        version, actions, protocol = struct.unpack("!III", payload[:12])
        if version < 2:
            raise MilterProtocolError(f"milter protocol version {version}")
        if actions & ~self.offered_actions or protocol & ~self.offered_protocol:
            raise MilterProtocolError(f"milter wants actions {actions:#x} / steps {protocol:#x} beyond what we offer")
        # The macro lists it may append (SMFIR_SETSYMLIST) are not needed: we send what we know.
        self.actions, self.protocol, self.negotiated = actions, protocol, True
        self._waiting = None
        self._outbox.append(Negotiated(actions, protocol))

    def _skip_body(self) -> None:
        while self._commands and self._commands[0][0] == BODY:
            self._commands.popleft()
        self._advance()

    def _final(self, command: bytes, payload: bytes) -> Answer:
        simple = {b"a": Verdict.ACCEPT, b"r": Verdict.REJECT, b"t": Verdict.TEMPFAIL, b"d": Verdict.DISCARD}
        if command in simple:
            return Answer(simple[command], modifications=tuple(self._modifications))
        if command == b"y":
            reply = _reply_code(payload)
            verdict = Verdict.REJECT if reply.code >= 500 else Verdict.TEMPFAIL
            return Answer(verdict, reply)
        if command == b"c" and self._waiting == BODYEOB:
            return Answer(Verdict.CONTINUE, modifications=tuple(self._modifications))
        raise MilterProtocolError(f"reply {command!r} to {self._waiting!r}")

    def _modification(self, command: bytes, payload: bytes) -> bool:
        """An end-of-message modification (False: not one, a final reply)."""
        parse = _MODIFICATIONS.get(command)
        if parse is None:
            return False
        needed, reader = parse
        if not self.actions & needed:
            raise MilterProtocolError(f"modification {command!r} was not negotiated")
        self._modifications.append(reader(payload))
        return True


def _fields(payload: bytes, count: int, at_least: int | None = None) -> list[str]:
    """``count`` NUL-terminated strings (``at_least`` of them required)."""
    parts = payload.split(b"\0")
    if parts[-1] != b"" or not (at_least or count) <= len(parts) - 1 <= count:
        raise MilterProtocolError(f"malformed strings {payload[:80]!r}")
    return [p.decode("utf-8", "surrogateescape") for p in parts[:-1]] + [""] * (count - len(parts) + 1)


def _indexed(payload: bytes) -> tuple[int, str, str]:
    if len(payload) < 4:
        raise MilterProtocolError("short header modification")
    (index,) = struct.unpack("!I", payload[:4])
    name, value = _fields(payload[4:], 2)
    return index, name, value


def _header_name(name: str) -> str:
    if not name or any(c in name for c in ": \t\r\n") or not name.isascii():
        raise MilterProtocolError(f"bad header name {name!r}")
    return name


def _address(payload: bytes, count: int = 1) -> tuple[str, str]:
    values = _fields(payload, count, 1)
    address = values[0].strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address, values[1] if count > 1 else ""


def _reply_code(payload: bytes) -> Reply:
    (text,) = _fields(payload, 1)
    code, rest = text[:3], text[4:]  # "550 5.7.1 text", or multi-line "550-...\r\n550 ..."
    if not code.isdigit() or code[0] not in "45" or text[3:4] not in (" ", "-", ""):
        raise MilterProtocolError(f"SMFIR_REPLYCODE {text[:80]!r}")
    lines = [line.removeprefix(code).lstrip(" -") for line in rest.replace("\r\n", "\n").split("\n")]
    return Reply(int(code), tuple(lines))


def _add(payload: bytes) -> Modification:
    name, value = _fields(payload, 2)
    return AddHeader(_header_name(name), value)


def _insert(payload: bytes) -> Modification:
    index, name, value = _indexed(payload)
    return InsertHeader(index, _header_name(name), value)


def _change(payload: bytes) -> Modification:
    index, name, value = _indexed(payload)
    return ChangeHeader(index, _header_name(name), value)


_MODIFICATIONS = {
    b"h": (ADDHDRS, _add),
    b"i": (ADDHDRS, _insert),
    b"m": (CHGHDRS, _change),
    b"b": (CHGBODY, lambda p: ReplaceBody(p)),
    b"e": (CHGFROM, lambda p: ChangeSender(*_address(p, 2))),
    b"+": (ADDRCPT, lambda p: AddRecipient(_address(p)[0])),
    b"2": (ADDRCPT_PAR, lambda p: AddRecipient(*_address(p, 2))),
    b"-": (DELRCPT, lambda p: DeleteRecipient(_address(p)[0])),
    b"q": (QUARANTINE, lambda p: Quarantine(_fields(p, 1)[0])),
}


# -- the message as milters see it -----------------------------------------------------------


def split_message(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Header fields (name, value without the one space after the colon, folds kept as CRLF)
    and the body, from a message with CRLF line ends. A header section that does not parse
    (no colon) ends there: the rest is body, as Postfix's cleanup does."""
    headers: list[tuple[str, str]] = []
    position = 0
    while position < len(message):
        end = message.find(b"\r\n", position)
        end = len(message) if end < 0 else end
        line = message[position:end]
        if line == b"":
            return headers, message[end + 2 :]
        if line[:1] in (b" ", b"\t") and headers:
            field, value = headers[-1]
            headers[-1] = (field, value + "\r\n" + line.decode("utf-8", "surrogateescape"))
        else:
            name, colon, raw = line.partition(b":")
            if not colon or not name or b" " in name or b"\t" in name:
                return headers, message[position:]
            headers.append((name.decode("ascii", "replace"), raw.removeprefix(b" ").decode("utf-8", "surrogateescape")))
        position = end + 2
    return headers, b""


def join_message(headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """The message again: each field ``Name: value``, CRLF, the blank line, the body."""
    lines = [f"{name}: {value}".encode("utf-8", "surrogateescape") + b"\r\n" for name, value in headers]
    return b"".join(lines) + b"\r\n" + body


@attrs.define
class Edited:
    """A message and its envelope after the modifications of one or more milters."""

    sender: str
    recipients: list[str]
    headers: list[tuple[str, str]]
    body: bytes
    quarantine: str = ""


def apply_modifications(edited: Edited, modifications: Sequence[Modification]) -> None:
    """Carry out one milter's end-of-message modifications, in the order it sent them."""
    new_body: list[bytes] | None = None
    for change in modifications:
        if isinstance(change, AddHeader):
            edited.headers.append((change.name, change.value))
        elif isinstance(change, InsertHeader):
            edited.headers.insert(min(change.index, len(edited.headers)), (change.name, change.value))
        elif isinstance(change, ChangeHeader):
            _change_header(edited.headers, change)
        elif isinstance(change, ReplaceBody):
            new_body = (new_body or []) + [change.chunk]
        elif isinstance(change, ChangeSender):
            edited.sender = change.address
        elif isinstance(change, AddRecipient):
            if change.address.lower() not in (r.lower() for r in edited.recipients):
                edited.recipients.append(change.address)
        elif isinstance(change, DeleteRecipient):
            edited.recipients = [r for r in edited.recipients if r.lower() != change.address.lower()]
        else:
            edited.quarantine = change.reason or "quarantined by a milter"
    if new_body is not None:
        edited.body = b"".join(new_body)


def _change_header(headers: list[tuple[str, str]], change: ChangeHeader) -> None:
    """SMFIR_CHGHEADER: the index-th field named so (from 1) gets the value, or goes when
    the value is empty; no such field: it is added (libmilter's smfi_chgheader)."""
    seen = 0
    for position, (name, _) in enumerate(headers):
        if name.lower() == change.name.lower():
            seen += 1
            if seen == max(change.index, 1):
                if change.value:
                    headers[position] = (name, change.value)
                else:
                    del headers[position]
                return
    if change.value:
        headers.append((change.name, change.value))
