"""A validating resolver for DANE tests: unbound serving one DNSSEC-signed zone.

The zone is signed with fresh ECDSA keys (ldns-keygen, ldns-signzone) and
loaded as an unbound ``auth-zone`` for upstream use, with its KSK as the
trust anchor: unbound validates the answers and sets the AD bit, exactly
as a real validating resolver would for a signed domain.  Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

from postfix_lab import free_port

READY = "start of service"


class SignedZone:
    """unbound on 127.0.0.1:``port`` answering for ``origin`` from ``records`` (zone-file lines)."""

    def __init__(self, directory: str, origin: str, records: list[str], trusted: bool = True,
                 unsigned: dict[str, list[str]] | None = None):
        self.directory = directory
        self.unsigned = unsigned or {}  # more zones, served unsigned (insecure answers)
        self.trusted = trusted  # False: no trust anchor, so the answers are insecure (no AD bit)
        self.origin = origin
        self.records = records
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def _run(self, *argv: str) -> str:
        return subprocess.run(argv, cwd=self.directory, check=True, capture_output=True, text=True, timeout=60).stdout.strip()

    def start(self) -> SignedZone:
        os.makedirs(self.directory, exist_ok=True)
        ksk = self._run("ldns-keygen", "-a", "ECDSAP256SHA256", "-k", self.origin)
        zsk = self._run("ldns-keygen", "-a", "ECDSAP256SHA256", self.origin)
        zone = os.path.join(self.directory, f"{self.origin}.zone")
        with open(zone, "w") as f:
            f.write(f"$ORIGIN {self.origin}.\n$TTL 300\n")
            f.write(f"@ IN SOA ns.{self.origin}. hostmaster.{self.origin}. 1 3600 600 86400 300\n")
            f.write(f"@ IN NS ns.{self.origin}.\nns IN A 127.0.0.1\n")
            f.write("\n".join(self.records) + "\n")
        self._run("ldns-signzone", zone, zsk, ksk)
        extra = ""
        for origin, records in self.unsigned.items():
            path = os.path.join(self.directory, f"{origin}.zone")
            with open(path, "w") as f:
                f.write(f"$ORIGIN {origin}.\n$TTL 300\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n")
                f.write(f"@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n" + "\n".join(records) + "\n")
            extra += (f'auth-zone:\n  name: "{origin}"\n  zonefile: "{path}"\n'
                      "  for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n")
        conf = os.path.join(self.directory, "unbound.conf")
        with open(conf, "w") as f:
            f.write(f"""server:
  interface: 127.0.0.1
  port: {self.port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{self.directory}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-ip6: no
  module-config: "validator iterator"
  {"" if self.trusted else "# "}trust-anchor-file: "{self.directory}/{ksk}.key"
  access-control: 127.0.0.0/8 allow
  local-zone: "test." nodefault
  qname-minimisation: no
auth-zone:
  name: "{self.origin}"
  zonefile: "{zone}.signed"
  for-upstream: yes
  for-downstream: no
  fallback-enabled: no
""" + extra)
        self.process = subprocess.Popen(["unbound", "-d", "-c", conf], stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                if READY in line:
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError("unbound did not start:\n" + "".join(self.log))
        return self

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.port)]

    def twisted_backend(self) -> Any:
        """A twisted.names resolver asking only this unbound (MX and address lookups)."""
        from twisted.names import client

        return client.Resolver(servers=self.nameservers)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self._reader.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
