"""The TLS lab: each mode checked by real clients with verification on.

openssl s_client (``-verify_return_error``, the dev CA as the only trust
anchor, ``-verify_hostname localhost``) and Python's smtplib with a default
verifying context must each accept ``good`` and refuse every bad mode for
the expected reason.
"""

from __future__ import annotations

import datetime
import os
import smtplib
import ssl
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from e2e import CLIENT_TIMEOUT, in_thread, run_process, start_relay
from processes import TlsmtaProcess

from tlsmta.config import _loader as configuration
from tlsmta.devrelay._devcert import CERTIFICATE_LAB_MODES, LAB_MODES, WRONG_NAME, dev_ca_path, lab_certificate
from tlsmta.devrelay._tlslab import LabError
from tlsmta.reporting import _events
from tlsmta.testing import build_config, dev_listener

# mode -> (what openssl s_client reports, what smtplib raises: class and message part)
EXPECTED: dict[str, tuple[str, type[Exception], str]] = {
    "expired": ("verify error:num=10:certificate has expired", ssl.SSLCertVerificationError, "certificate has expired"),
    "wrong-name": ("verify error:num=62:hostname mismatch", ssl.SSLCertVerificationError, "Hostname mismatch"),
    "untrusted": ("verify error:num=20:unable to get local issuer certificate", ssl.SSLCertVerificationError,
                  "unable to get local issuer certificate"),
    "self-signed": ("verify error:num=18:self-signed certificate", ssl.SSLCertVerificationError, "self-signed certificate"),
    "handshake-fail": ("sslv3 alert handshake failure", ssl.SSLError, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    "no-starttls": ("Didn't find STARTTLS in server response", smtplib.SMTPNotSupportedError, "STARTTLS extension not supported"),
}


async def lab_relay(tmp_path: Any, mode: str) -> Any:
    return await start_relay(tmp_path, [dev_listener(name="dev", tls="starttls", tls_lab=mode)], hostname="localhost")


def s_client(port: int, ca: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-verify_return_error", "-CAfile", ca, "-verify_hostname", "localhost", "-brief"],
        input=b"QUIT\r\n", capture_output=True, timeout=CLIENT_TIMEOUT,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


def smtplib_starttls(port: int, ca: str) -> str:
    """STARTTLS to "localhost" with a default (verifying) context; returns the protocol."""
    client = smtplib.SMTP("localhost", port, timeout=CLIENT_TIMEOUT)
    try:
        client.starttls(context=ssl.create_default_context(cafile=ca))
        version = client.sock.version()
        client.quit()
        return str(version)
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_good_verifies_with_openssl_and_smtplib(tmp_path: Any) -> None:
    """good: the dev certificate verifies against the dev CA, name localhost, in both clients."""
    relay = await lab_relay(tmp_path, "good")
    try:
        ca = dev_ca_path(str(tmp_path / "state"))
        code, out = await in_thread(s_client, relay.port, ca)
        assert code == 0, out
        assert "Verification: OK" in out and "Verified peername: localhost" in out
        assert await in_thread(smtplib_starttls, relay.port, ca) == "TLSv1.3"
    finally:
        await relay.stop()


@pytest.mark.parametrize("mode", sorted(EXPECTED))
@pytest_twisted.ensureDeferred
async def test_bad_mode_is_refused_for_its_reason(tmp_path: Any, mode: str) -> None:
    """Each bad mode: s_client fails with the expected verify error or alert, and smtplib raises the expected error."""
    relay = await lab_relay(tmp_path, mode)
    try:
        ca = dev_ca_path(str(tmp_path / "state"))
        report, error, message = EXPECTED[mode]
        code, out = await in_thread(s_client, relay.port, ca)
        assert code != 0 and report in out, out
        with pytest.raises(error) as caught:
            await in_thread(smtplib_starttls, relay.port, ca)
        assert message in str(caught.value)
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_no_starttls_is_not_advertised_and_refused(tmp_path: Any) -> None:
    """no-starttls: EHLO does not list STARTTLS and the command gets 502; mail is still accepted in plain text."""
    relay = await lab_relay(tmp_path, "no-starttls")

    def session() -> tuple[Any, Any]:
        client = smtplib.SMTP("127.0.0.1", relay.port, timeout=CLIENT_TIMEOUT)
        try:
            client.ehlo("app.test")
            features = dict(client.esmtp_features)
            return features, client.docmd("STARTTLS")
        finally:
            client.close()

    try:
        features, reply = await in_thread(session)
        assert "starttls" not in features and "pipelining" in features
        assert reply[0] == 502
    finally:
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_switch_at_run_time_affects_new_sessions(tmp_path: Any) -> None:
    """TlsmtaService.switch_tls_lab (what PUT /api/tls-lab and Relay.set_tls_lab use) changes what new sessions get, and back."""
    relay = await start_relay(tmp_path, [dev_listener(name="dev", tls="starttls", tls_certificate="auto")], hostname="localhost")
    try:
        ca = dev_ca_path(str(tmp_path / "state"))
        assert await in_thread(smtplib_starttls, relay.port, ca) == "TLSv1.3"
        relay.service.switch_tls_lab("dev", "self-signed")
        with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate"):
            await in_thread(smtplib_starttls, relay.port, ca)
        relay.service.switch_tls_lab("dev", None)
        assert await in_thread(smtplib_starttls, relay.port, ca) == "TLSv1.3"
        with pytest.raises(LabError, match="unknown TLS lab mode"):
            relay.service.switch_tls_lab("dev", "broken")
        with pytest.raises(LabError, match="no listener named"):
            relay.service.switch_tls_lab("other", "good")
    finally:
        await relay.stop()


def test_lab_certificates_are_broken_in_one_way_each(tmp_path: Any) -> None:
    """The lab certificates: expired before now, named only wrong-name.invalid, issued by another CA, self-issued."""
    state = str(tmp_path)
    names = ["localhost", "127.0.0.1"]

    def chain(mode: str) -> list[x509.Certificate]:
        with open(lab_certificate(state, mode, names).cert_path, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())

    good, expired, wrong, untrusted, self_signed = (chain(m) for m in CERTIFICATE_LAB_MODES)
    with open(dev_ca_path(state), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    now = datetime.datetime.now(datetime.timezone.utc)
    assert good[1] == ca and good[0].issuer == ca.subject and good[0].not_valid_after_utc > now
    assert expired[0].not_valid_after_utc < now and expired[0].issuer == ca.subject
    expired[0].verify_directly_issued_by(ca)
    san = wrong[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [WRONG_NAME]
    assert len(untrusted) == 1 and untrusted[0].issuer != ca.subject  # its CA is not sent
    assert len(self_signed) == 1 and self_signed[0].issuer == self_signed[0].subject
    self_signed[0].verify_directly_issued_by(self_signed[0])


@pytest.mark.parametrize(
    "listener, message",
    [
        ({"tls": "no", "tls_lab": "good"}, "tls_lab: needs tls = 'starttls', 'required' or 'implicit'"),
        ({"tls": "implicit", "tls_lab": "no-starttls"}, "tls_lab: 'no-starttls' needs tls = 'starttls'"),
        ({"tls": "starttls", "tls_lab": "broken"}, "tls_lab: must be one of " + ", ".join(LAB_MODES)),
    ],
)
def test_bad_tls_lab_config_names_table_and_key(listener: dict[str, Any], message: str) -> None:
    """A tls_lab that cannot work is a config error naming the listener (by its name) and tls_lab."""
    with pytest.raises(configuration.ConfigError) as caught:
        build_config({"listener": [dev_listener(**listener)]}, "lab.toml")
    assert f'lab.toml: [listener."test"] {message}' in str(caught.value)


def test_tls_lab_needs_no_certificate_file() -> None:
    """A lab listener serves dev CA certificates: tls_certificate may be left out (it becomes "auto")."""
    config = build_config({"listener": [dev_listener(tls="starttls", tls_lab="expired")]})
    assert config.listeners[0].tls_certificate == "auto"


def test_twistd_tls_lab_option_applies_per_run(tmp_path: Any) -> None:
    """`twistd tlsmta --tls-lab wrong-name` serves the wrong-name certificate on the dev relay's listener."""
    free = "tcp:0:interface=127.0.0.1"
    relay = TlsmtaProcess(str(tmp_path), "--listen", free, "--http", free, "--pop3", free, "--imap", free,
                          "--tls-lab", "wrong-name")
    try:
        code, out = s_client(relay.port, str(tmp_path / ".tlsmta" / "dev-ca.pem"))
    finally:
        log = relay.stop()
    assert code != 0 and "hostname mismatch" in out, out
    assert "TLS lab: listener dev serves" in log and "-----BEGIN CERTIFICATE-----" in log


@pytest_twisted.ensureDeferred
async def test_dev_ca_command_prints_path_and_pem(tmp_path: Any) -> None:
    """`tlsmta dev-ca --config FILE` prints the dev CA's path (creating it); --pem prints the certificate."""
    config = tmp_path / "relay.toml"
    config.write_text(f'[global]\nstate_dir = "{tmp_path / "state"}"\n')
    tlsmta = os.path.join(os.path.dirname(sys.executable), "tlsmta")
    code, out, err = await run_process(tlsmta, "dev-ca", "--config", str(config))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "state" / "dev-ca.pem")
    code, pem, err = await run_process(tlsmta, "dev-ca", "--config", str(config), "--pem")
    assert code == 0 and pem == (tmp_path / "state" / "dev-ca.pem").read_text()
    assert x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string() == "CN=tlsmta dev CA,O=tlsmta dev"


def send_unverified(port: int, subject: str) -> None:
    """What a careless application does: STARTTLS without verifying, then sends."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = smtplib.SMTP("localhost", port, timeout=CLIENT_TIMEOUT)
    try:
        client.starttls(context=context)
        client.sendmail("app@example.com", ["bob@example.org"], f"Subject: {subject}\r\n\r\nbody\r\n")
        client.quit()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_accepts_the_bad_certificate_is_recorded(tmp_path: Any) -> None:
    """In expired mode an unverifying client delivers: the received line, the API and the receipt
    say lab=expired and that the client accepted a bad certificate; with the good certificate it did not."""
    from test_webui import get_json, web_relay

    relay = await web_relay(tmp_path)
    received: list[dict[str, Any]] = []
    relay.service.events.add_sink(lambda event, fields: received.append(fields) if event == "received" else None)
    try:
        await in_thread(send_unverified, relay.port, "before")
        relay.service.switch_tls_lab("dev", "expired")
        await in_thread(send_unverified, relay.port, "careless")
        listing = await in_thread(get_json, relay.http_port, "/api/messages")
    finally:
        await relay.stop()
    by_subject = {m["subject"]: m["receipt"]["tls"] for m in listing["messages"]}
    assert by_subject["careless"]["lab"] == "expired" and by_subject["careless"]["client_accepted_bad_certificate"] is True
    assert by_subject["before"]["lab"] is None and by_subject["before"]["client_accepted_bad_certificate"] is False
    assert "lab=expired" in _events.kv_line("received", received[-1]) and "lab" not in received[0]


def test_fixture_tells_the_test_its_client_accepted_a_bad_certificate(tmp_path: Any) -> None:
    """msg.tls["lab"] and msg.tls["client_accepted_bad_certificate"] in tlsmta.testing (in a subprocess:
    the synchronous Relay runs its own reactor thread)."""
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_tls_lab import send_unverified\n"
        "from tlsmta.testing import Relay, stop_reactor_thread\n"
        "with Relay(%r, tls_lab='self-signed') as relay:\n"
        "    send_unverified(relay.port, 'hi')\n"
        "    msg = relay.wait_for(subject='hi')\n"
        "    print(msg.tls['lab'], msg.tls['client_accepted_bad_certificate'])\n"
        "stop_reactor_thread()\n"
    ) % (os.path.dirname(__file__), str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["self-signed", "True"]
