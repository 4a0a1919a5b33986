"""Real OpenDKIM (Debian ``opendkim``) as a milter on a private UNIX socket.

A signer uses a key made by ``opendkim-genkey`` in the test's directory; a verifier reads the
public key from a ``TestPublicKeys`` file (OpenDKIM's own option for tests), so no DNS query
is made. Each runs in the foreground (``-f``), is waited for by its socket appearing, and is
stopped by its PID.
"""

from __future__ import annotations

import os
import re
import subprocess

from milter_lab import terminate, wait_started

START_TIMEOUT = 30


def generate_key(directory: str, domain: str, selector: str) -> tuple[str, str]:
    """(private key path, the TXT record's text) from opendkim-genkey."""
    subprocess.run(["opendkim-genkey", "-D", directory, "-d", domain, "-s", selector], check=True, timeout=60)
    with open(os.path.join(directory, f"{selector}.txt")) as f:
        record = "".join(re.findall(r'"([^"]*)"', f.read()))
    return os.path.join(directory, f"{selector}.private"), record


class OpenDKIM:
    """``opendkim -f -x CONF`` with ``settings`` (Mode, KeyFile, ...) listening on ``socket``."""

    def __init__(self, directory: str, name: str, settings: dict[str, str]):
        self.directory = directory
        self.socket = os.path.join(directory, f"{name}.sock")
        self.conf = os.path.join(directory, f"{name}.conf")
        self.log_path = os.path.join(directory, f"{name}.log")
        self.settings = {
            "Socket": f"local:{self.socket}",
            "PidFile": os.path.join(directory, f"{name}.pid"),
            "Syslog": "no",
            "UserID": "root",
            "UMask": "007",
            "LogWhy": "yes",
            "AlwaysAddARHeader": "yes",
            "TemporaryDirectory": directory,
            "RequireSafeKeys": "no",  # the key lives under /tmp, which others may write
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> OpenDKIM:
        with open(self.conf, "w") as f:
            f.writelines(f"{key} {value}\n" for key, value in self.settings.items())
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(["opendkim", "-f", "-x", self.conf], stdout=log, stderr=subprocess.STDOUT)
        wait_started(self.process, lambda: os.path.exists(self.socket), START_TIMEOUT, self.log)
        return self

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        terminate(self.process)


def verifier(directory: str, selector: str, domain: str, record: str) -> OpenDKIM:
    """OpenDKIM in Mode v with one public key from TestPublicKeys (no DNS), verifying mail from
    loopback (InternalHosts elsewhere), its results in Authentication-Results."""
    keys = os.path.join(directory, f"{selector}.public-keys")
    with open(keys, "w") as f:
        f.write(f"{selector}._domainkey.{domain} {record}\n")
    return OpenDKIM(directory, f"verifier-{selector}", {
        "Mode": "v", "TestPublicKeys": keys, "InternalHosts": "192.0.2.1", "AuthservID": "mx.example.test",
    })
