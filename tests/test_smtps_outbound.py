"""Outbound implicit TLS (``smtps:HOST[:PORT]`` routes, Postfix ``smtp_tls_wrappermode``).

The handshake comes before the greeting; ``tls_verify`` judges the
certificate exactly as after STARTTLS, a failure is 4.7.5 and never plain
text.  Peers: tlsmta's own ``tls = "implicit"`` listener and a private
Postfix with ``smtpd_tls_wrappermode = yes``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, maildir_messages
from outbound_lab import DOMAIN, MX, deliveries, send_once, start_receiver, start_sender, submit_and_settle
from postfix_lab import PrivatePostfix

TLSMTA = [os.path.join(os.path.dirname(sys.executable), "tlsmta")]


async def smtps_delivery(tmp_path: Any, pki: Any, pair: Any, ca: str, **sender_opts: Any) -> Any:
    """One message from a sender routing DOMAIN to ``smtps:MX:PORT`` of a tlsmta implicit-TLS listener
    (``pair``: its certificate; None: a plain-text listener); returns the receiver, both stopped."""
    listener = {"tls": "implicit", "tls_certificate": pair.cert, "tls_key": pair.key} if pair else {}
    rx = await start_receiver(tmp_path, None, **listener)
    await send_once(tmp_path, rx, ca, domains={DOMAIN: {"route": f"smtps:{MX}:{rx.port}"}}, **sender_opts)
    return rx


@pytest.mark.parametrize("verify", ["no", "ca", "host", "optional"])
@pytest_twisted.ensureDeferred
async def test_smtps_route_delivers_over_implicit_tls(tmp_path: Any, pki: Any, events: list, verify: str) -> None:
    """Each tls_verify mode against a good certificate: delivered, TLS from the first byte, logged tls_mode=implicit."""
    await smtps_delivery(tmp_path, pki, pki.good, pki.ca_pem, tls="required", tls_verify=verify)
    [event] = deliveries(events)
    assert event["result"] == "delivered", event
    assert (event["tls"], event["tls_mode"], event["route"]) == ("tls", "implicit", f"smtps:{MX}:{event['port']}")
    assert event["verified"] == ("no" if verify == "no" else "yes")
    [copy] = maildir_messages(str(tmp_path / "receiver-maildir"))
    assert "TLS" in copy["Received"]


@pytest_twisted.ensureDeferred
async def test_smtps_uses_tls_even_when_the_domain_says_tls_no(tmp_path: Any, pki: Any, events: list) -> None:
    """The route asks for TLS: with the default tls = no the hop is still encrypted (and tls_verify applies)."""
    await smtps_delivery(tmp_path, pki, pki.good, pki.ca_pem, tls_verify="host")
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["verified"], event["tls_policy"]) == ("delivered", "tls", "yes", "local")


@pytest.mark.parametrize(
    ("pair", "ca", "reason"),
    [("wrong_name", "ca_pem", "4.7.5 certificate name does not match"),
     ("good", "other_ca_pem", "4.7.5 certificate not signed by a trusted CA")],
)
@pytest_twisted.ensureDeferred
async def test_smtps_certificate_failure_defers_like_starttls(tmp_path: Any, pki: Any, events: list, pair: str, ca: str,
                                                            reason: str) -> None:
    """tls_verify = host and a certificate that fails it: 4.7.5, queued, nothing delivered, no plain-text retry."""
    await smtps_delivery(tmp_path, pki, getattr(pki, pair), getattr(pki, ca), tls="ifavailable", tls_verify="host")
    [event] = deliveries(events)
    assert (event["result"], event["code"]) == ("deferred", 451), event
    assert event["text"].startswith(reason) and event["tls_mode"] == "implicit"
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest_twisted.ensureDeferred
async def test_smtps_to_a_plain_text_server_never_falls_back(tmp_path: Any, pki: Any, events: list) -> None:
    """A server that answers the ClientHello with a plain banner: 4.7.5 TLS negotiation failed, even under
    ifavailable with fallback (port 465 has no plain text to fall back to)."""
    await smtps_delivery(tmp_path, pki, None, pki.ca_pem, tls="ifavailable", tls_ifavailable_fallback=True)
    [event] = deliveries(events)
    assert (event["result"], event["code"]) == ("deferred", 451), event
    assert event["text"].startswith("4.7.5 TLS negotiation failed"), event
    assert maildir_messages(str(tmp_path / "receiver-maildir")) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root (CI runs as root)")
@pytest_twisted.ensureDeferred
async def test_smtps_route_delivers_into_postfix_wrappermode(tmp_path: Any, pki: Any, events: list) -> None:
    """Real Postfix with smtpd_tls_wrappermode = yes: delivered over verified implicit TLS, Postfix logs the TLS session."""
    postfix = PrivatePostfix(
        {
            "smtpd_tls_wrappermode": "yes",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_cert_file": "$queue_directory/../cert.pem",
            "smtpd_tls_key_file": "$queue_directory/../key.pem",
            "smtpd_tls_loglevel": "1",
            "smtpd_client_restrictions": "check_client_access static:HOLD",
        },
        files={"cert.pem": pki.good.cert, "key.pem": pki.good.key},
    ).start()
    try:
        sender = await start_sender(tmp_path, postfix.port, pki.ca_pem,
                                    domains={DOMAIN: {"route": f"smtps:{MX}:{postfix.port}", "tls_verify": "host"}})
        try:
            await submit_and_settle(sender)
        finally:
            await sender.stop()
        await in_thread(postfix.wait_for_log, "TLS connection established from")
        await in_thread(postfix.wait_for_log, "from=<app@client.test>")
        assert len(postfix.queue_files()) == 1
    finally:
        postfix.remove()
    [event] = deliveries(events)
    assert (event["result"], event["tls"], event["verified"], event["tls_mode"]) == ("delivered", "tls", "yes", "implicit")


def tlsmta(*args: str) -> str:
    done = subprocess.run([*TLSMTA, *args], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_policy_and_probe_speak_implicit_tls(tmp_path: Any, pki: Any) -> None:
    """`tlsmta policy` says implicit TLS and the port; `tlsmta probe` does the handshake first, shows the
    chain and judges it: delivered over TLS, verified (tls_verify = host)."""
    rx = await start_receiver(tmp_path, None, tls="implicit", tls_certificate=pki.good.cert, tls_key=pki.good.key)
    path = tmp_path / "sender.toml"
    path.write_text(f'[global]\nstate_dir = "{tmp_path}/state"\ntls_verify = "host"\ntls_ca = "{pki.ca_pem}"\n'
                    f'[domain."{DOMAIN}"]\nroute = "smtps:{MX}:{rx.port}"\n[dns.hosts]\n"{MX}" = ["127.0.0.1"]\n')
    try:
        policy = await in_thread(tlsmta, "policy", str(path), DOMAIN)
        probe = await in_thread(tlsmta, "probe", "--config", str(path), DOMAIN)
    finally:
        await rx.stop()
    assert f"Sent over SMTP to the smarthost {MX}, port {rx.port}." in policy and "Implicit TLS (smtps:)" in policy, policy
    assert "No STARTTLS" not in policy
    assert "TLS mode: implicit" in probe and "certificate chain:" in probe, probe
    assert f"verdict for {DOMAIN} (tls=required, tls_verify=host, policy local): deliver over TLS, certificate verified" in probe
