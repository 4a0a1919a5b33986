"""One small file written so that a crash leaves either the old file or the whole new one.

Blocking (run it on the disk thread): a temporary name beside the target,
fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import os

from tlsmta.storage._diskio import fsync_directory
from tlsmta.storage._filewriter import remove_if_present, write_all


def write_durably(path: str, data: bytes, mode: int = 0o640) -> None:
    """``data`` at ``path``, durable when this returns; the directories are made if missing."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_if_present(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
    fsync_directory(directory)
