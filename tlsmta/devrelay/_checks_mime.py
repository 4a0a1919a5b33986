"""A message's size, MIME structure and header problems, sans I/O.

Read from the message as received (the Maildir's ``Return-Path:`` and
``Delivered-To:`` lines left out).  Each problem has a ``severity``
(``error``: a rule of RFC 5322/2045-2049 broken, which receivers may reject
or mangle; ``warning``: legal but likely to cause trouble), a stable
``code`` and a sentence.
"""

from __future__ import annotations

import codecs
import email.utils
import itertools
import re
from collections import Counter
from email.message import Message
from typing import Any

from tlsmta.devrelay._mailview import local_envelope, parse_message

MAX_LINE = 998  # octets, without CRLF (RFC 5322 section 2.1.1)
# Fields RFC 5322 section 3.6 allows at most once.
SINGLE_FIELDS = ("date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to",
                 "references", "subject")
KNOWN_ENCODINGS = frozenset({"7bit", "8bit", "binary", "quoted-printable", "base64"})


def _problem(severity: str, code: str, message: str) -> dict[str, str]:
    return {"severity": severity, "code": code, "message": message}


def _long_lines(data: bytes) -> list[dict[str, str]]:
    long = [number for number, line in enumerate(data.split(b"\n"), 1) if len(line.rstrip(b"\r")) > MAX_LINE]
    if not long:
        return []
    return [_problem("error", "line-too-long", f"{len(long)} line(s) longer than {MAX_LINE} octets "
                                                f"(first: line {long[0]}); relays may break or reject them")]


def _header_problems(message: Message, header_bytes: bytes) -> list[dict[str, str]]:
    problems = []
    names = Counter(name.lower() for name in message.keys())
    if not names["date"]:
        problems.append(_problem("error", "missing-date", "no Date: header (RFC 5322 requires one)"))
    elif not _parses_as_date(str(message.get("Date"))):
        problems.append(_problem("error", "bad-date", f"Date: {message.get('Date')!s} is not an RFC 5322 date"))
    if not names["from"]:
        problems.append(_problem("error", "missing-from", "no From: header (RFC 5322 requires one)"))
    if not names["message-id"]:
        problems.append(_problem("warning", "missing-message-id",
                                 "no Message-ID: header; replies cannot thread and some filters score it as spam"))
    if not names["subject"]:
        problems.append(_problem("warning", "missing-subject", "no Subject: header"))
    for name in SINGLE_FIELDS:
        if names[name] > 1:
            problems.append(_problem("error", "duplicate-header", f"{names[name]} {name.title()}: headers; "
                                                                   "RFC 5322 allows one"))
    if any(byte > 0x7F for byte in header_bytes):
        problems.append(_problem("warning", "8bit-header", "raw 8-bit bytes in the header section: needs SMTPUTF8 "
                                                           "end to end; RFC 2047 encoded-words work everywhere"))
    for name, value in message.items():
        if name.lower() == "date":
            continue  # judged above, in a sentence of our own
        for defect in getattr(value, "defects", ()):
            problems.append(_problem("error", "header-defect", f"{name}: {defect}"))
    return problems


def _parses_as_date(value: str) -> bool:
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    return True


def _part_name(index: int, part: Message) -> str:
    return f"part {index} ({part.get_content_type()})"


def _part_problems(index: int, part: Message) -> list[dict[str, str]]:
    problems = []
    where = _part_name(index, part)
    encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if encoding not in KNOWN_ENCODINGS:
        problems.append(_problem("error", "unknown-encoding", f"{where}: Content-Transfer-Encoding {encoding!r} "
                                                              "is not one RFC 2045 defines"))
    for defect in part.defects:
        problems.append(_problem("error", "mime-defect", f"{where}: {type(defect).__name__}: {defect}"))
    if part.is_multipart():
        return problems
    payload = part.get_payload()
    raw_8bit = isinstance(payload, str) and any(ord(char) > 0x7F for char in payload)
    if raw_8bit and encoding in ("7bit", "quoted-printable", "base64"):
        problems.append(_problem("error", "8bit-in-7bit", f"{where}: 8-bit bytes in a part declared {encoding}"))
    if part.get_content_maintype() == "text":
        problems += _charset_problems(where, part, raw_8bit)
    return problems


def _charset_problems(where: str, part: Message, raw_8bit: bool) -> list[dict[str, str]]:
    charset = part.get_content_charset()
    if charset is None:
        return [_problem("warning", "missing-charset", f"{where}: 8-bit text without a charset parameter")] if raw_8bit else []
    try:
        codecs.lookup(charset)
    except LookupError:
        return [_problem("error", "unknown-charset", f"{where}: unknown charset {charset!r}")]
    body = part.get_payload(decode=True)
    try:
        (body if isinstance(body, bytes) else b"").decode(charset)
    except UnicodeDecodeError as e:
        return [_problem("error", "bad-charset", f"{where}: not valid {charset} (byte {e.start})")]
    return []


def _structure(message: Message) -> dict[str, Any]:
    """The MIME tree: each part's type, charset, encoding, disposition, file name and size."""
    counter = itertools.count()  # numbers as message.walk() (and the API's parts/N) count them

    def node(part: Message) -> dict[str, Any]:
        index = next(counter)
        out: dict[str, Any] = {
            "index": index,
            "content_type": part.get_content_type(),
            "charset": part.get_content_charset(),
            "encoding": str(part.get("Content-Transfer-Encoding", "")).lower() or None,
            "disposition": part.get_content_disposition(),
            "filename": part.get_filename(),
        }
        if part.is_multipart():
            children = part.get_payload()
            out["parts"] = [node(child) for child in children if isinstance(child, Message)] if isinstance(children, list) else []
        else:
            payload = part.get_payload(decode=True)
            out["size"] = len(payload) if isinstance(payload, bytes) else 0
        return out

    return node(message)


def mime_report(stored: bytes) -> dict[str, Any]:
    """Size, MIME structure and problems of a captured message (JSON-ready)."""
    data = stored[local_envelope(stored).end :]
    message = parse_message(data)
    blank = re.search(rb"\r?\n\r?\n", data)
    header_bytes = data[: blank.start()] if blank else data
    problems = _long_lines(data) + _header_problems(message, header_bytes)
    parts = list(message.walk())
    for index, part in enumerate(parts):
        problems += _part_problems(index, part)
    types = {part.get_content_type() for part in parts}
    if "text/html" in types and "text/plain" not in types:
        problems.append(_problem("warning", "html-only", "HTML without a text/plain alternative: spam filters "
                                                         "score it and text-only clients show nothing"))
    problems.sort(key=lambda p: p["severity"] != "error")
    return {"size": len(data), "structure": _structure(message), "problems": problems}
