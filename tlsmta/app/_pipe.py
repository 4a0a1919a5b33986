"""The ``tlsmta`` command's output into a pipe its reader closed early (``tlsmta policy ... | head -1``)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

# What a shell reports for a command killed by SIGPIPE (`yes | head -1`): the reader
# chose to stop, the command did not fail, and `set -o pipefail` scripts know the number.
EX_SIGPIPE = 128 + signal.SIGPIPE


def until_reader_leaves(command: Callable[[], int]) -> int:
    """``command()``'s exit code, or EX_SIGPIPE without a traceback once stdout's reader is gone."""
    try:
        code = command()
        sys.stdout.flush()  # buffered lines meet the closed pipe here, not at interpreter exit
    except BrokenPipeError:
        # Python flushes stdout again at exit; pointing it at /dev/null keeps that quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_SIGPIPE
    return code


Main = Callable[[Any], Coroutine[Any, Any, None]]


def carried_over_react(main: Main) -> tuple[Main, Callable[[], None]]:
    """``main`` for twisted's react(), which logs any exception as a crash with its traceback,
    and a check to call after react(): it raises the BrokenPipeError ``main`` met, if any,
    for :func:`until_reader_leaves`."""
    met: list[BrokenPipeError] = []

    async def guarded(reactor: Any) -> None:
        try:
            await main(reactor)
        except BrokenPipeError as e:
            met.append(e)

    def check() -> None:
        if met:
            raise met[0]

    return guarded, check
