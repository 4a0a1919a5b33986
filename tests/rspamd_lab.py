"""Real rspamd (Debian ``rspamd``) as a milter: its proxy worker in milter mode, scanning itself
(``self_scan``), on a loopback port, from a private configuration written here (not /etc/rspamd).

Only what the tests need is configured: the actions, the GTUBE test patterns, and the
dkim_signing module with a key file. DNS goes to a closed loopback port (every lookup fails at
once), so nothing leaves 127.0.0.1 and no Redis is needed. Started in the foreground (``-f``),
waited for by its log saying the proxy listens, stopped by its PID.
"""

from __future__ import annotations

import os
import socket
import subprocess

from milter_lab import terminate, wait_started
from postfix_lab import free_port

START_TIMEOUT = 120  # rspamd compiles its TLD list at start: seconds on a loaded machine

CONFIG = """
modules {{ path = "${{PLUGINSDIR}}"; }}
options {{
  pidfile = "{dir}/rspamd.pid";
  dbdir = "{dir}";
  hs_cache_dir = "{dir}";
  tempdir = "{dir}";
  filters = "dkim";
  local_addrs = [127.0.0.0/8, ::1];
  enable_test_patterns = true;
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.1s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; }}
dkim {{ }}
dkim_signing {{
  path = "{key}";
  selector = "{selector}";
  sign_local = true;
  allow_hdrfrom_mismatch = true;
  allow_username_mismatch = true;
  use_esld = false;
}}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{port}";
  milter = yes;
  timeout = 120s;
  count = 1;
  upstream "local" {{ default = yes; self_scan = yes; }}
  spam_header = "X-Spam";
  reject_message = "Spam message rejected";
}}
"""


class Rspamd:
    def __init__(self, directory: str, key: str, selector: str):
        self.directory = directory
        self.port = free_port()
        self.conf = os.path.join(directory, "rspamd.conf")
        with open(self.conf, "w") as f:
            f.write(CONFIG.format(dir=directory, key=key, selector=selector, port=self.port))
        self.log_path = os.path.join(directory, "rspamd.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> Rspamd:
        self.process = subprocess.Popen(
            ["rspamd", "-f", "-i", "-u", "root", "-g", "root", "-c", self.conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_started(self.process, self._listening, START_TIMEOUT, self.log)
        return self

    def _listening(self) -> bool:
        """The proxy worker is up (its log line), and takes connections."""
        if "starting rspamd_proxy process" not in self.log():
            return False
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        terminate(self.process)
