"""A private Postfix instance for interoperability tests (root only, loopback only).

Everything lives in one temporary directory: its own config_directory
(main.cf, master.cf), queue and data directories, and log file.  The
system Postfix is never touched; every command runs with ``-c DIR/etc``
and the instance is stopped by its own master's PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping

POSTFIX = "/usr/sbin/postfix"
START_TIMEOUT = 30

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
biff = no
notify_classes =
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
"""

MASTER_CF = """\
127.0.0.1:{port} inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def read_log(path: str) -> str:
    """A log file's text so far; empty before the daemon wrote it."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_for_text(read: Callable[[], str], text: str, timeout: float, count: int, name: str) -> str:
    """Wait (bounded) until ``read()`` holds ``text`` ``count`` times; return it (``name``: whose log, for the error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = read()
        if log.count(text) >= count:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not {count} time(s) in the {name} log within {timeout}s:\n{read()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostfix:
    """One throw-away Postfix; ``settings`` are extra main.cf lines."""

    def __init__(self, settings: Mapping[str, str] | None = None, files: Mapping[str, str] | None = None):
        # Not under pytest's tmp_path: its parents are 0700 root, and Postfix's
        # unprivileged processes must traverse to their queue and data.
        self.dir = tempfile.mkdtemp(prefix="tlsmta-postfix-")
        self.port = free_port()
        self.master_pid: int | None = None
        os.makedirs(f"{self.dir}/etc")
        os.makedirs(f"{self.dir}/queue")
        os.makedirs(f"{self.dir}/data")
        for path in (self.dir, f"{self.dir}/etc", f"{self.dir}/queue"):
            os.chown(path, 0, 0)
            os.chmod(path, 0o755)
        shutil.chown(f"{self.dir}/data", "postfix", "postfix")
        open(f"{self.dir}/maillog", "w").close()
        shutil.chown(f"{self.dir}/maillog", "postfix", "postfix")
        for name, source in (files or {}).items():  # certificates and CAs, readable by Postfix
            shutil.copy(source, f"{self.dir}/{name}")
            os.chmod(f"{self.dir}/{name}", 0o644)
        # A setting replaces the default line rather than following it: a repeated key makes every
        # daemon warn "overriding earlier entry" at start, postlogd too, which sends its warning to
        # its own socket; once other daemons' warnings have filled that queue, postlogd blocks on
        # itself, every daemon then blocks on logging, and smtpd never answers (a hang, seen under load).
        settings = dict(settings or {})
        lines = []
        for line in MAIN_CF.format(dir=self.dir).splitlines():
            key = line.partition(" =")[0]
            lines.append(f"{key} = {settings.pop(key)}" if key in settings else line)
        main = "\n".join(lines) + "\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(f"{self.dir}/etc/main.cf", "w") as f:
            f.write(main)
        with open(f"{self.dir}/etc/master.cf", "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        self._postfix("check")

    def _postfix(self, command: str) -> None:
        proc = subprocess.run([POSTFIX, "-c", f"{self.dir}/etc", command], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"postfix {command} failed: {proc.stdout}{proc.stderr}\n{self.log()}")

    def start(self) -> PrivatePostfix:
        """Start and wait (bounded) until smtpd accepts connections."""
        self._postfix("start")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"postfix did not listen on {self.port}\n{self.log()}")
        with open(f"{self.dir}/queue/pid/master.pid") as f:
            self.master_pid = int(f.read().strip())
        return self

    def stop(self) -> None:
        """Stop this instance only; wait for its master to exit, kill it by PID if it must."""
        if self.master_pid is None:
            return
        subprocess.run([POSTFIX, "-c", f"{self.dir}/etc", "stop"], capture_output=True, timeout=60)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.kill(self.master_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(self.master_pid, 9)
        self.master_pid = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return read_log(f"{self.dir}/maillog")

    def queue_files(self) -> list[str]:
        """Queue files in incoming/active/deferred/hold."""
        found = []
        for sub in ("incoming", "active", "deferred", "hold"):
            for root, _, files in os.walk(f"{self.dir}/queue/{sub}"):
                found += [os.path.join(root, name) for name in files]
        return found

    def wait_for_log(self, text: str, timeout: float = 60, count: int = 1) -> str:
        """Wait (bounded) for ``text`` to appear in the log (``count`` times); return the log.

        Postfix's daemons log through postlogd (a datagram service), so a line can reach the
        file some time after the SMTP reply that followed it: never read the log without this."""
        return wait_for_text(self.log, text, timeout, count, "Postfix")
