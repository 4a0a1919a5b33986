"""The dev test relay as a newcomer runs it: `twistd -n tlsmta` with no config."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from e2e import client_context, maildir_messages, send_smtplib
from processes import START_TIMEOUT, TWISTD, TlsmtaProcess

from tlsmta.app.tap import dev_relay_path, loopback_unless_named
from tlsmta.config import _loader as configuration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def DevRelay(cwd: str, *extra: str) -> TlsmtaProcess:
    """The embedded default config, on a free port."""
    free = "tcp:0:interface=127.0.0.1"
    return TlsmtaProcess(cwd, "--listen", free, "--http", free, "--pop3", free, "--imap", free, *extra)


def test_embedded_default_is_the_etc_file() -> None:
    """etc/dev-relay.toml is the file the package runs with no --config, and it is valid."""
    assert os.path.samefile(os.path.join(REPO, "etc", "dev-relay.toml"), dev_relay_path())
    config = configuration.load(dev_relay_path())
    [listener] = config.listeners
    assert listener.endpoint == "tcp:2525:interface=127.0.0.1"
    assert listener.tls == "starttls" and listener.tls_certificate == "auto"
    assert config.http["endpoint"] == "tcp:8025:interface=127.0.0.1"  # the web page, loopback only


def test_twistd_finds_the_plugin_from_any_directory(tmp_path: Any) -> None:
    """After the README's install (a plain `pip install -e .`), twistd lists tlsmta run from elsewhere,
    and the plugin it loads is this checkout's twisted/plugins/tlsmta_plugin.py."""
    listed = subprocess.run([TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert re.search(r"^\s+tlsmta\s+A mail transfer agent", listed.stdout, re.M), listed.stdout + listed.stderr
    python = os.path.join(os.path.dirname(TWISTD), "python")
    where = subprocess.run([python, "-c", "import twisted.plugins.tlsmta_plugin as p; print(p.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert os.path.samefile(where.stdout.strip(), os.path.join(REPO, "twisted", "plugins", "tlsmta_plugin.py"))


def test_no_config_relay_accepts_starttls_mail_into_maildir(tmp_path: Any) -> None:
    """With no config: STARTTLS with a generated certificate (ECDSA P-256, from the dev CA), any recipient, ./maildir."""
    relay = DevRelay(str(tmp_path))
    try:
        ca = tmp_path / ".tlsmta" / "dev-ca.pem"
        ctx = client_context(str(ca))  # verifies the chain and the name "localhost"
        import smtplib

        client = smtplib.SMTP("localhost", relay.port, timeout=20)
        client.starttls(context=ctx)
        assert client.sock.version() == "TLSv1.3"
        cert = client.sock.getpeercert()
        client.quit()
        send_smtplib(relay.port, rcpts=("anyone@anywhere.example",), starttls=client_context(str(ca)))
    finally:
        log = relay.stop()
    # twistd re-raises SIGTERM after a clean shutdown (systemd counts that as success).
    assert relay.proc.returncode in (0, -signal.SIGTERM), log
    assert "Server Shut Down." in log
    assert ("commonName", "localhost") in [pair for rdn in cert["subject"] for pair in rdn]
    [msg] = maildir_messages(str(tmp_path / "maildir"))
    assert msg["Delivered-To"] == "anyone@anywhere.example"
    assert re.search(r"received msgid=\S+ .*code=250 .*tls=tls protocol=TLSv1\.3", log), log


def test_generated_key_is_ecdsa_p256_and_reused(tmp_path: Any) -> None:
    """The generated key is ECDSA P-256 and a restart reuses the same certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    DevRelay(str(tmp_path)).stop()
    pem = (tmp_path / ".tlsmta" / "dev-cert.pem").read_bytes()
    first = x509.load_pem_x509_certificates(pem)[0]
    key = first.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    DevRelay(str(tmp_path)).stop()
    again = x509.load_pem_x509_certificates((tmp_path / ".tlsmta" / "dev-cert.pem").read_bytes())[0]
    assert again.serial_number == first.serial_number


def test_maildir_option_overrides_route(tmp_path: Any) -> None:
    """--maildir PATH stores there instead of ./maildir."""
    target = tmp_path / "elsewhere"
    relay = DevRelay(str(tmp_path), "--maildir", str(target))
    try:
        send_smtplib(relay.port)
    finally:
        relay.stop()
    assert len(maildir_messages(str(target))) == 1
    assert not (tmp_path / "maildir").exists()


@pytest.mark.parametrize(
    "toml, expected",
    [
        ('[global]\ntls_verify = "maybe"\n', "[global] tls_verify: must be one of no, ca, host, optional"),
        ("[[listener]]\nendpoint = 'tcp:0'\ntls = 'starttls'\n", "[listener.0] tls_certificate: is required"),
    ],
)
def test_bad_config_refuses_to_start(tmp_path: Any, toml: str, expected: str) -> None:
    """A malformed config: twistd exits non-zero and names file, table and key; nothing listens."""
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    proc = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "tlsmta", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert proc.returncode != 0
    assert f"{path}: {expected}" in proc.stderr + proc.stdout


def test_no_config_relay_serves_the_page_and_prints_the_dev_ca(tmp_path: Any) -> None:
    """The dev relay as `make run` starts it: the web API lists what arrived over SMTP, and the log carries the dev CA's PEM."""
    import json
    import urllib.request

    relay = DevRelay(str(tmp_path))
    try:
        # The web service may log its port a moment after the SMTP listener's.
        http_port = relay.wait_for_log(r"web page and API on http://127\.0\.0\.1:(\d+)/").group(1)
        send_smtplib(relay.port, starttls=client_context(str(tmp_path / ".tlsmta" / "dev-ca.pem")))
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/messages", timeout=20) as response:
            listing = json.load(response)
    finally:
        log = relay.stop()
    [entry] = listing["messages"]
    assert entry["subject"] == "hello" and entry["receipt"]["tls"]["protocol"] == "TLSv1.3"
    pem = (tmp_path / ".tlsmta" / "dev-ca.pem").read_text().strip()
    assert "\n\t".join(pem.splitlines()) in log  # twistd indents continuation lines with a tab


def test_http_option_without_a_maildir_refuses_to_start(tmp_path: Any) -> None:
    """--http on a configuration with no Maildir to show: exit 78, naming [http] maildir; no traceback."""
    path = tmp_path / "mx.toml"
    path.write_text(f'[global]\nstate_dir = "{tmp_path / "state"}"\n[spool]\npath = "{tmp_path / "spool"}"\n')
    proc = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "tlsmta", "--config", str(path), "--http", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=START_TIMEOUT,
    )
    assert proc.returncode == 78
    assert f"{path}: [http] maildir: is required when the global route is not maildir:PATH" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("given, listened", [
    ("tcp:2526", "tcp:2526:interface=127.0.0.1"),
    ("tcp:port=2526", "tcp:port=2526:interface=127.0.0.1"),
    ("tcp6:2526", "tcp6:2526:interface=\\:\\:1"),
    ("tcp:2526:interface=0.0.0.0", "tcp:2526:interface=0.0.0.0"),
    ("unix:/tmp/relay.sock", "unix:/tmp/relay.sock"),
])
def test_dev_listen_without_an_interface_is_loopback(given: str, listened: str) -> None:
    """The README's `--listen tcp:2526` for the dev relay listens on loopback; naming an interface still works."""
    assert loopback_unless_named(given) == listened


def test_dev_relay_listen_tcp_port_only_binds_loopback(tmp_path: Any) -> None:
    """`--listen tcp:0` (no --config, no interface): the relay's listener is on 127.0.0.1."""
    relay = TlsmtaProcess(str(tmp_path), "--listen", "tcp:0")
    try:
        found = relay.wait_for_log(r"listening on ([\d.:\[\]a-f]+?):\d+ ")
    finally:
        relay.stop()
    assert found.group(1) == "127.0.0.1"


def test_queue_commands_find_the_dev_relays_control_socket(tmp_path: Any) -> None:
    """`tlsmta queue list` with no --config and no --socket, in the directory the dev relay runs in,
    on a machine without the system configuration, asks that relay. The system path is pointed at a
    file that does not exist: CI's machine keeps the /etc/tlsmta/tlsmta.toml .ci/check-service installs."""
    without_system_config = ("import sys; from tlsmta.app import cli; cli.DEFAULT_CONFIG = sys.argv[1]; "
                             "sys.exit(cli.main(sys.argv[2:]))")
    relay = DevRelay(str(tmp_path))
    try:
        listed = subprocess.run([sys.executable, "-c", without_system_config, str(tmp_path / "no-system.toml"),
                                 "queue", "--json", "list"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        relay.stop()
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
def logged_port(relay: TlsmtaProcess, what: str) -> int:
    """The port the log says ``what`` listens on (the line may follow the SMTP one by a moment)."""
    deadline = time.monotonic() + START_TIMEOUT
    while (found := re.search(re.escape(what) + r" [\d.]+:(\d+)", relay.log())) is None:
        assert time.monotonic() < deadline, relay.log()
        time.sleep(0.05)
    return int(found.group(1))


def test_dev_relay_serves_its_mail_over_pop3_and_imap(tmp_path: Any) -> None:
    """The embedded default has [dev] pop3 and imap (here on free ports): a message sent to it is in INBOX,
    read with imaplib after STARTTLS with the dev CA, and POP3 answers with STLS offered."""
    import imaplib
    import poplib

    relay = DevRelay(str(tmp_path))
    try:
        pop3_port, imap_port = (logged_port(relay, f"{name} over the captured mail on") for name in ("POP3", "IMAP"))
        ca = str(tmp_path / ".tlsmta" / "dev-ca.pem")
        send_smtplib(relay.port, rcpts=("bob@example.org",), starttls=client_context(ca))
        imap = imaplib.IMAP4("localhost", imap_port, timeout=20)
        try:
            imap.starttls(client_context(ca))
            imap.login("me", "anything")
            assert imap.select("INBOX")[1] == [b"1"]
        finally:
            imap.logout()
        pop = poplib.POP3("localhost", pop3_port, timeout=20)
        try:
            assert "STLS" in pop.capa()
        finally:
            pop.quit()
    finally:
        relay.stop()
