"""A private Dovecot LMTP server for delivery tests (root only, loopback only).

Everything lives in one temporary directory: the configuration
(``dovecot.conf``), base_dir (sockets, the master's PID file), state_dir,
a passwd-file of users, their Maildirs and the log.  It listens for LMTP on
a unix socket and on a loopback TCP port with STARTTLS (``ssl = yes``, the
test's certificate); the quota plugin gives each user ``quota_rule`` if its
users line sets one, and a full mailbox answers 452 4.2.2 after DATA
(``quota_full_tempfail``).  Started in the foreground (``dovecot -F -c``),
stopped by that process's PID.  The system Dovecot is never touched.
"""

from __future__ import annotations

import email
import email.message
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping

from postfix_lab import free_port, read_log, wait_for_text

DOVECOT = "/usr/sbin/dovecot"
START_TIMEOUT = 30
MAIL_USER = "nobody"  # the uid the mailboxes belong to (lmtp switches to it per delivery)

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = tlsmta-test-{port}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
ssl = yes
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
ssl_dh = </usr/share/dovecot/dh.pem
auth_mechanisms = plain
mail_location = maildir:{dir}/mail/%d/%n
mail_plugins = quota
quota_full_tempfail = yes
lmtp_rcpt_check_quota = no
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


class PrivateDovecot:
    """One throw-away Dovecot; ``users`` maps an address to its quota rule (None: no quota)."""

    def __init__(self, users: Mapping[str, str | None], cert: str, key: str):
        # Not under pytest's tmp_path (0700 parents): lmtp runs as the mail user and must reach the Maildirs.
        self.dir = tempfile.mkdtemp(prefix="tlsmta-dovecot-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._probes_logged = 0  # characters of log written before start() returned
        mail_user = pwd.getpwnam(MAIL_USER)
        os.makedirs(f"{self.dir}/mail")
        os.chown(f"{self.dir}/mail", mail_user.pw_uid, mail_user.pw_gid)
        shutil.copy(cert, f"{self.dir}/cert.pem")
        shutil.copy(key, f"{self.dir}/key.pem")
        with open(f"{self.dir}/users", "w") as f:
            for address, quota in users.items():
                extra = f"userdb_quota_rule=*:storage={quota}" if quota else ""
                f.write(f"{address}:{{PLAIN}}unused:{mail_user.pw_uid}:{mail_user.pw_gid}::{self.dir}/mail::{extra}\n")
        self.config = f"{self.dir}/dovecot.conf"
        with open(self.config, "w") as f:
            f.write(CONF.format(dir=self.dir, port=self.port))

    @property
    def socket_path(self) -> str:
        return f"{self.dir}/run/lmtp"

    def start(self) -> PrivateDovecot:
        """Start in the foreground and wait (bounded) until both LMTP listeners accept connections."""
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", self.config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited {self.process.returncode}: {self.process.stderr.read()!r}\n{self.log()}")
            if self._accepts(socket.AF_INET, ("127.0.0.1", self.port)) and self._accepts(socket.AF_UNIX, self.socket_path):
                # Those two connections are in the log before start() returns: tests count the ones after.
                self.wait_for_log("state=GREETING", count=2)
                self._probes_logged = len(self.log())
                return self
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen within {START_TIMEOUT}s\n{self.log()}")

    @staticmethod
    def _accepts(family: int, address: object) -> bool:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(address)
                return True
            except OSError:
                return False

    def stop(self) -> None:
        """Stop this instance by its PID; kill it if it does not exit in time."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        """The log since start() returned (the readiness checks' connections left out)."""
        return read_log(f"{self.dir}/dovecot.log")[self._probes_logged:]

    def wait_for_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> str:
        """Wait (bounded) for ``text`` to be in the log ``count`` times; return the log.
        Dovecot's processes log through its log service, a moment after they answered."""
        return wait_for_text(self.log, text, timeout, count, "Dovecot")

    def mailbox(self, address: str) -> list[email.message.Message]:
        """The messages in ``address``'s INBOX (new/ and cur/)."""
        local, _, domain = address.partition("@")
        found = []
        for sub in ("new", "cur"):
            directory = f"{self.dir}/mail/{domain}/{local}/{sub}"
            if os.path.isdir(directory):
                for name in sorted(os.listdir(directory)):
                    with open(os.path.join(directory, name), "rb") as f:
                        found.append(email.message_from_bytes(f.read()))
        return found
