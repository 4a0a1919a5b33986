"""Helpers for end-to-end tests: a relay on a loopback port, clients in threads."""

from __future__ import annotations

import mailbox
import os
import smtplib
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tlsmta.testing import RunningRelay, build_config, dev_listener

T = TypeVar("T")
HOSTNAME = "mx.example.test"
CLIENT_TIMEOUT = 20
# aiosmtpd's Controller.start() gives its thread 5 s (default) to listen and answer a first
# connection, and says "the system is too busy" past that: a loaded CI machine gets 30.
AIOSMTPD_READY_TIMEOUT = 30


def open_names_under(directory: Any) -> list[str]:
    """What this process's open descriptors point to inside ``directory`` (an unnamed file,
    O_TMPFILE, shows as ``<dir>/#<inode> (deleted)``)."""
    prefix = str(directory) + os.sep
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(prefix):
            found.append(target)
    return found


async def start_relay(
    tmp_path: Any,
    listeners: list[dict[str, Any]] | None = None,
    hooks: dict[str, str] | None = None,
    dns: dict[str, Any] | None = None,
    **global_opts: Any,
) -> RunningRelay:
    """A relay storing into tmp_path/maildir, on free loopback ports."""
    raw = {
        "global": {
            "hostname": HOSTNAME,
            "state_dir": str(tmp_path / "state"),
            "route": f"maildir:{tmp_path / 'maildir'}",
            **global_opts,
        },
        "listener": listeners or [dev_listener()],
        "spool": {"path": str(tmp_path / "spool")},
        "hooks": hooks or {},
        "dns": dns or {},
    }
    return await RunningRelay(build_config(raw)).start()


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """Run a blocking client (smtplib, subprocess) without blocking the reactor."""
    return deferToThread(fn, *args, **kwargs)


def read_reply(f: Any) -> bytes:
    """The last line of one (possibly multi-line) SMTP reply from a socket file."""
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    return line


def maildir_messages(path: str) -> list[Any]:
    """Messages in the Maildir, read with the standard library's reader."""
    if not os.path.isdir(os.path.join(path, "new")):
        return []
    return list(mailbox.Maildir(path, create=False))


def client_context(ca: str | None = None, cert: Any = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def send_smtplib(
    port: int,
    sender: str = "app@client.test",
    rcpts: tuple[str, ...] = ("someone@example.com",),
    body: str = "Subject: hello\r\n\r\nHello from smtplib.\r\n",
    starttls: ssl.SSLContext | None = None,
    implicit: ssl.SSLContext | None = None,
    ehlo: str = "client.test",
    login: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Send one message with Python's smtplib; returns smtplib's refused dict."""
    if implicit is not None:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            "127.0.0.1", port, local_hostname=ehlo, timeout=CLIENT_TIMEOUT, context=implicit
        )
    else:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname=ehlo, timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo()
        if starttls is not None:
            client.starttls(context=starttls)
            client.ehlo()
        if login is not None:
            client.login(*login)
        return client.sendmail(sender, list(rcpts), body.encode("utf-8"))
    finally:
        try:
            client.quit()
        except smtplib.SMTPServerDisconnected:
            pass


async def eventually(check: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    """Wait until ``check()`` holds (an event we cannot subscribe to), bounded by ``timeout``."""
    waited = 0.0
    while not check():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await deferLater(reactor, step, lambda: None)
        waited += step


async def run_process(
    *argv: str, stdin: bytes = b"", timeout: float = 60, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a real peer (swaks, openssl) in a thread; returns (exit code, stdout, stderr).

    ``env``: variables to add to (or replace in) this process's environment.
    """

    def run() -> tuple[int, str, str]:
        import subprocess

        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env})
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")

    return await in_thread(run)



def partial_request(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    """An HTTP request head and only part of its body: all the server answers before it closes
    the connection (a socket timeout, in a thread, when it waits for the rest instead)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(head)
        for chunk in body_chunks:
            conn.sendall(chunk)
        answer = b""
        while data := conn.recv(65536):
            answer += data
        return answer
