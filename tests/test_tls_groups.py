"""``tls_groups``: the key-exchange groups each side offers, and the one agreed in logs and probe.

Both ends are tlsmta over loopback: the Debian ``openssl`` here is 3.0,
which has no ML-KEM, while pyOpenSSL runs on cryptography's OpenSSL (3.5 or
later has ``X25519MLKEM768``).  What check-config says of a group that
OpenSSL lacks is asserted in tests/test_config.py and tests/test_cli.py.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import pytest_twisted
from e2e import client_context, in_thread, send_smtplib
from OpenSSL import SSL
from outbound_lab import (
    DOMAIN,
    MX,
    deliver_once,
    deliveries,
    start_receiver,
    start_recording_proxy,
    start_sender,
    submit_and_settle,
)
from twisted.internet import reactor

from tlsmta.app import _preflight as preflight
from tlsmta.app import _probe as probe
from tlsmta.config import _loader as configuration
from tlsmta.discovery._resolver import OfflineBackend, Resolver
from tlsmta.testing import RunningRelay
from tlsmta.tls import CertificateCheck, ClientTLS, unsupported_groups
from tlsmta.tls import _contexts as contexts
from tlsmta.tls._policy import VerifyMode

HYBRID = "X25519MLKEM768"


def received_by_receiver(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The receiving tlsmta's received lines (not the sender's own, of the submission)."""
    return [e for e in events if e["tlsmta_event"] == "received" and e["listener"] == "receiver"]


@pytest_twisted.ensureDeferred
async def test_hybrid_post_quantum_group_is_agreed_and_logged_on_both_sides(tmp_path: Any, pki: Any, events: list) -> None:
    """Sender and listener set tls_groups with X25519MLKEM768 first: the delivery line and the
    received line both say group=X25519MLKEM768."""
    # cryptography's wheels (>= 49, which pyOpenSSL 26 needs) bundle OpenSSL 3.5 or later.
    assert not unsupported_groups([HYBRID]), f"{contexts.openssl_version()} has no {HYBRID}"
    await deliver_once(tmp_path, pki.good, pki.ca_pem, receiver={"tls_groups": [HYBRID, "X25519"]},
                       tls="required", tls_verify="host", tls_groups=[HYBRID, "secp256r1"])
    [line] = deliveries(events)
    assert (line["result"], line["tls"], line["group"]) == ("delivered", "tls", HYBRID), line
    assert [(e["tls"], e["group"]) for e in received_by_receiver(events)] == [("tls", HYBRID)]


@pytest_twisted.ensureDeferred
async def test_a_classical_group_list_is_honoured_in_both_directions(tmp_path: Any, pki: Any, events: list) -> None:
    """A domain scope's tls_groups = ["secp384r1"] to a listener that also takes it: P-384 it is, logged."""
    await deliver_once(tmp_path, pki.good, pki.ca_pem, receiver={"tls_groups": ["X25519", "secp384r1"]},
                       tls="required", domains={DOMAIN: {"tls_groups": ["secp384r1"]}})
    [line] = deliveries(events)
    assert (line["result"], line["group"]) == ("delivered", "secp384r1"), line
    assert [(e["tls"], e["group"]) for e in received_by_receiver(events)] == [("tls", "secp384r1")]


@pytest_twisted.ensureDeferred
async def test_no_shared_group_is_a_failed_handshake(tmp_path: Any, pki: Any, events: list) -> None:
    """Sender offers only secp384r1, the listener only X25519: the handshake fails and tls = required defers 4.7.5."""
    await deliver_once(tmp_path, pki.good, pki.ca_pem, receiver={"tls_groups": ["X25519"]},
                       tls="required", tls_groups=["secp384r1"])
    [line] = deliveries(events)
    assert (line["result"], line["status"], line["group"]) == ("deferred", "4.7.5", None), line
    assert "handshake failure" in line["text"]  # the listener's alert: no group in common
    assert received_by_receiver(events) == []


@pytest_twisted.ensureDeferred
async def test_probe_shows_the_agreed_group(tmp_path: Any, pki: Any) -> None:
    """`tlsmta probe` prints the key-exchange group of its handshake with each MX, under the resolved tls_groups."""
    rx = await start_receiver(tmp_path, pki.good)
    dns = {"mx": {DOMAIN: [MX]}, "hosts": {MX: ["127.0.0.1"]}}
    config = configuration.from_dict({"global": {"tls_ca": pki.ca_pem, "smtp_port": rx.port, "tls_groups": ["secp384r1"]},
                                      "dns": dns})
    options = {k: v.value for k, v in configuration.resolve(config, DOMAIN).items()}
    try:
        results, problem, _ = await probe.run_probe(reactor, Resolver(dns, OfflineBackend()), DOMAIN, options, None, None,
                                                    "probe.test")
    finally:
        await rx.stop()
    assert problem is None
    [result] = results
    assert "  group:    secp384r1" in probe.format_result(result, options["tls"], VerifyMode.HOST)


@pytest_twisted.ensureDeferred
async def test_sighup_applies_a_new_listener_group_list(tmp_path: Any, pki: Any, events: list) -> None:
    """A listener's tls_groups changed in the file and reloaded: the next session agrees on the new group
    (Python's ssl as the client, offering its own defaults)."""
    path = tmp_path / "tlsmta.toml"
    head = (f'[global]\nhostname = "{MX}"\nstate_dir = "{tmp_path}/state"\nroute = "maildir:{tmp_path}/maildir"\n'
            f'[spool]\npath = "{tmp_path}/spool"\n'
            '[[listener]]\nname = "mx"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "starttls"\n'
            f'tls_certificate = "{pki.good.cert}"\ntls_key = "{pki.good.key}"\nlocal_domains = ["example.com"]\n')

    def write(group: str) -> None:
        path.write_text(f'{head}tls_groups = ["{group}"]\n')

    write("secp384r1")
    relay = await RunningRelay(preflight.load(str(path))).start()
    try:
        for group in ("secp384r1", "X25519"):
            write(group)
            assert relay.service.reload() == []
            await relay.service.reloaded()
            await in_thread(send_smtplib, relay.port, starttls=client_context(pki.ca_pem))
            assert [e["group"] for e in events if e["tlsmta_event"] == "received"][-1] == group
    finally:
        await relay.stop()


# -- the key share sent: for the group the server chose last time -----------------------------

# The TLS code points of the groups (RFC 8446 4.2.7, draft-ietf-tls-ecdhe-mlkem).
GROUP_CODES = {0x11EC: HYBRID, 0x001D: "X25519", 0x0017: "secp256r1", 0x0018: "secp384r1"}


def client_hellos(stream: bytes) -> list[list[str]]:
    """The groups of each ClientHello's key shares in a client's TLS bytes (plain-text records only)."""
    hellos, offset = [], 0
    while offset + 5 <= len(stream):
        kind, _, length = struct.unpack_from("!BHH", stream, offset)
        record = stream[offset + 5:offset + 5 + length]
        offset += 5 + length
        if kind != 22 or record[0] != 1:  # a handshake record holding a ClientHello
            continue
        at = 4 + 2 + 32
        at += 1 + record[at]  # session id
        at += 2 + struct.unpack_from("!H", record, at)[0]  # cipher suites
        at += 1 + record[at]  # compression methods
        end = at + 2 + struct.unpack_from("!H", record, at)[0]
        at += 2
        shares: list[str] = []
        while at < end:
            ext, size = struct.unpack_from("!HH", record, at)
            if ext == 51:  # key_share: a length, then (group, key length, key) each
                inner, inner_end = at + 6, at + 4 + size
                while inner < inner_end:
                    group, key_length = struct.unpack_from("!HH", record, inner)
                    shares.append(GROUP_CODES.get(group, hex(group)))
                    inner += 4 + key_length
            at += 4 + size
        hellos.append(shares)
    return hellos


def first_client_hello(creator: ClientTLS) -> list[str]:
    conn = creator.clientConnectionForTLS(None)
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    [shares] = client_hellos(conn.bio_read(65536))
    return shares


def test_a_predicted_key_share_marks_that_group_alone_and_keeps_the_order() -> None:
    groups = (HYBRID, "X25519", "secp256r1", "secp384r1")
    assert contexts.predicted_key_share(groups, "X25519") == f"{HYBRID}:*X25519:secp256r1:secp384r1"
    assert contexts.predicted_key_share(["*X25519", "secp384r1"], "secp384r1") == "X25519:*secp384r1"
    assert contexts.predicted_key_share(groups, "X448") is None  # not offered any more (tls_groups changed)


def test_a_client_hello_carries_a_key_share_for_the_predicted_group_only() -> None:
    """Without a prediction, the hybrid and X25519 shares; with one, that group's share alone."""
    ctx = contexts.client_context(frozenset({"TLSv1.2", "TLSv1.3"}))
    check = CertificateCheck(VerifyMode.NO)
    assert first_client_hello(ClientTLS(ctx, MX, check)) == [HYBRID, "X25519"]
    assert first_client_hello(ClientTLS(ctx, MX, check, key_share="X25519")) == ["X25519"]
    assert first_client_hello(ClientTLS(ctx, MX, check, key_share="secp256r1")) == ["secp256r1"]
    assert first_client_hello(ClientTLS(ctx, MX, check, key_share="X448")) == [HYBRID, "X25519"]


@pytest_twisted.ensureDeferred
async def test_the_next_session_sends_a_key_share_for_the_group_the_server_chose(tmp_path: Any, pki: Any, events: list) -> None:
    """A listener that takes secp256r1 only: the first session's ClientHello has no share for it, so the
    listener asks again (a second ClientHello); the next session's one ClientHello carries that share."""
    rx = await start_receiver(tmp_path, pki.good, tls_groups=["secp256r1"])
    listening, connections = await start_recording_proxy(rx.port)
    sender = await start_sender(tmp_path, listening.getHost().port, pki.ca_pem, tls="required", tls_verify="host",
                                connection_cache_time=0)  # two sessions, two ClientHellos
    try:
        await submit_and_settle(sender)
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await rx.stop()
        await listening.stopListening()
    assert [(e["result"], e["group"]) for e in deliveries(events)] == [("delivered", "secp256r1")] * 2
    first, second = (client_hellos(b"".join(reads).partition(b"STARTTLS\r\n")[2]) for reads in connections)
    assert first == [[HYBRID, "X25519"], ["secp256r1"]]
    assert second == [["secp256r1"]]
