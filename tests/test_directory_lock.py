"""One tlsmta per spool and state directory: the lock, and a second instance that exits 78."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from processes import START_TIMEOUT, TWISTD, TlsmtaProcess
from test_lifecycle import write_config

from tlsmta.storage import DirectoryInUse, DirectoryLock


def test_a_held_directory_names_its_holder_and_frees_when_released(tmp_path: Any) -> None:
    directory = str(tmp_path / "spool")
    lock = DirectoryLock.acquire(directory)  # creates the directory
    with pytest.raises(DirectoryInUse) as refused:
        DirectoryLock.acquire(directory)
    assert refused.value.pid == os.getpid() and f"PID {os.getpid()}" in str(refused.value)
    lock.release()
    DirectoryLock.acquire(directory).release()


def test_a_second_instance_exits_78_and_touches_nothing_of_the_first(tmp_path: Any) -> None:
    """Started on the same configuration, the second process neither cleans the spool's tmp/
    (a message being received) nor its orphan bodies, and says which PID has the spool."""
    config = write_config(tmp_path, 'tls = "no"')
    first = TlsmtaProcess(str(tmp_path), "--config", config)
    try:
        in_flight = tmp_path / "spool" / "tmp" / "M1.eml"
        orphan = tmp_path / "spool" / "q" / "M2.eml"  # a body whose metadata is not written yet
        in_flight.write_bytes(b"Subject: being received\r\n")
        orphan.write_bytes(b"Subject: being committed\r\n")
        second = subprocess.run([TWISTD, "-n", "--pidfile=", "tlsmta", "--config", config], cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=START_TIMEOUT)
        assert second.returncode == 78, second.stdout + second.stderr
        assert f"[spool] path: {tmp_path / 'spool'} is in use by tlsmta PID {first.proc.pid}" in second.stderr
        assert in_flight.exists() and orphan.exists()
        assert first.proc.poll() is None  # the first goes on
    finally:
        first.stop()


def test_a_spool_that_cannot_be_created_exits_78_naming_the_key(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, 'tls = "no"')
    with open(config) as f:
        text = f.read().replace(f'path = "{tmp_path}/spool"', f'path = "{blocker}/spool"')
    with open(config, "w") as f:
        f.write(text)
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "tlsmta", "--config", config], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"{config}: [spool] path: cannot use {blocker}/spool" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_spool_that_is_the_state_dir_is_locked_once(tmp_path: Any) -> None:
    from tlsmta.app.tap import lock_directories
    from tlsmta.testing import build_config, dev_listener

    state = str(tmp_path / "state")
    config = build_config({"global": {"hostname": "mx.test", "state_dir": state, "route": "discard"},
                           "listener": [dev_listener()], "spool": {"path": state + "/"}})
    locks = lock_directories(config)
    try:
        assert len(locks) == 1 and os.path.realpath(locks[0].directory) == os.path.realpath(state)
        with pytest.raises(DirectoryInUse):
            DirectoryLock.acquire(state)
    finally:
        for lock in locks:
            lock.release()
