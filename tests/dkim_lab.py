"""DKIM for tests: keys, their DNS records, and OpenDKIM as the independent verifier.

The verifier is the real ``opendkim`` (Debian ``opendkim``) in its test mode
(``opendkim -t FILE``), with a private configuration whose libunbound asks
only the test's unbound (``unbound_lab``) on 127.0.0.1: nothing goes to the
system resolver.  Keys are made with ``openssl genpkey``, as an operator
makes them.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

VERIFIED = re.compile(r"verification \(s=(?P<selector>[^,]+), d=(?P<domain>[^,]+), (?P<bits>\d+)-bit key\) succeeded")


def make_key(path: str, algorithm: str) -> str:
    """A private key file (``rsa`` 2048 bits or ``ed25519``) written by openssl; returns its path."""
    argv = ["openssl", "genpkey", "-algorithm", algorithm.upper(), "-out", path]
    if algorithm == "rsa":
        argv[4:4] = ["-pkeyopt", "rsa_keygen_bits:2048"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return path


def key_record(selector: str, key_path: str, domain_label: str = "") -> str:
    """The zone-file line publishing the public key of ``key_path`` (``p=`` split in 200-character strings)."""
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        kind, der = "rsa", public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        kind, der = "ed25519", public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    value = f"v=DKIM1; k={kind}; p={base64.b64encode(der).decode()}"
    strings = " ".join(f'"{value[i:i + 200]}"' for i in range(0, len(value), 200))
    owner = f"{selector}._domainkey" + (f".{domain_label}" if domain_label else "")
    return f"{owner} IN TXT {strings}"


class OpenDKIMVerifier:
    """``opendkim -t`` with its DNS pointed at one unbound on 127.0.0.1:``port``."""

    def __init__(self, directory: str, port: int):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        unbound_conf = os.path.join(directory, "libunbound.conf")
        with open(unbound_conf, "w") as f:
            # unbound refuses to ask localhost and answers .test itself unless told otherwise.
            f.write(f'server:\n  do-ip6: no\n  do-not-query-localhost: no\n  local-zone: "test." nodefault\n'
                    f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{port}\n')
        self.conf = os.path.join(directory, "opendkim.conf")
        with open(self.conf, "w") as f:
            f.write(f"Mode v\nSyslog no\nResolverConfiguration {unbound_conf}\n")

    def verify(self, message: bytes) -> str:
        """OpenDKIM's verdict line on ``message`` (``... verification (s=S, d=D, N-bit key) succeeded`` when good)."""
        path = os.path.join(self.directory, "message.eml")
        with open(path, "wb") as f:
            f.write(message)
        done = subprocess.run(["opendkim", "-x", self.conf, "-t", path], capture_output=True, text=True, timeout=60)
        return (done.stdout + done.stderr).strip()
