"""``tlsmta log trace KEY [FILE...]``: print every log line of one message's life.

The files are read in the order given (oldest first, as logrotate numbers
them backwards: ``tlsmta.log.2.gz tlsmta.log.1 tlsmta.log``); ``.gz`` files
are read through gzip; no file, or ``-``, is standard input
(``journalctl -u tlsmta -o cat | tlsmta log trace ID``). The matching is
``reporting.trace_message``'s.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator, Sequence
from typing import IO

from tlsmta.reporting import parse_log_lines, trace_message

EX_OK, EX_NOT_FOUND, EX_NOINPUT = 0, 1, 66  # 1 as grep says "no line matched"


def _lines(name: str) -> Iterator[str]:
    if name == "-":
        yield from sys.stdin
        return
    opened: IO[str] = (gzip.open(name, "rt", encoding="utf-8", errors="replace") if name.endswith(".gz")
                       else open(name, encoding="utf-8", errors="replace"))
    with opened:
        yield from opened


def run_trace(key: str, files: Sequence[str], out: IO[str], err: IO[str]) -> int:
    """Print the lines of ``key``'s life to ``out``; 1 when there are none, 66 when a file cannot be read."""
    records = []
    for name in files or ["-"]:
        try:
            records.extend(parse_log_lines(_lines(name)))
        except (OSError, EOFError) as e:
            print(f"tlsmta log trace: {name}: {getattr(e, 'strerror', None) or e}", file=err)
            return EX_NOINPUT
    found = trace_message(records, key)
    if not found:
        print(f"tlsmta log trace: no log line names {key!r}", file=err)
        return EX_NOT_FOUND
    for record in found:
        out.write(record.line + "\n")
    return EX_OK
