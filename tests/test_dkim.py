"""Built-in DKIM signing: what is signed, with which key, and OpenDKIM verifying what a receiver got."""

from __future__ import annotations

import email
import re
import subprocess
from typing import Any

import pytest
import pytest_twisted
from dkim_lab import VERIFIED, OpenDKIMVerifier, key_record, make_key
from e2e import eventually, in_thread, maildir_messages, send_smtplib, start_relay
from unbound_lab import SignedZone

from tlsmta.app import _preflight as preflight
from tlsmta.app.cli import main
from tlsmta.config import DkimDomain
from tlsmta.delivery import DkimSigner, load_signing_key
from tlsmta.testing import RunningRelay, dev_listener

EX_CONFIG = 78
MESSAGE = (
    b"Received: from client.test by mx.example.test\r\n"
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: signed\r\n"
    b"Date: Thu, 03 Dec 2026 14:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> dict[str, str]:
    """An RSA and an Ed25519 key made by openssl, and a second RSA key for rotation."""
    directory = tmp_path_factory.mktemp("dkim-keys")
    return {name: make_key(str(directory / f"{name}.key"), kind)
            for name, kind in (("rsa", "rsa"), ("ed", "ed25519"), ("rsa2", "rsa"))}


def _tags(signature: bytes) -> dict[str, str]:
    value = re.sub(r"\s+", "", signature.decode().split(":", 1)[1])
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


# -- the signer, without a reactor ---------------------------------------------------------------


def test_signature_covers_the_recommended_headers_and_oversigns_from(keys: dict[str, str]) -> None:
    """h= lists RFC 6376's headers the message has, From once more than it occurs; never Received or X-Mailer."""
    signature = DkimSigner({"example.test": DkimDomain("r1", keys["rsa"])}).signature(MESSAGE)
    assert signature.startswith(b"DKIM-Signature: ") and signature.endswith(b"\r\n")
    tags = _tags(signature)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == ("example.test", "r1", "rsa-sha256", "relaxed/relaxed")
    signed = tags["h"].split(":")
    assert signed.count("from") == 2
    assert {"to", "subject", "date", "message-id", "mime-version", "content-type"} <= set(signed)
    assert "received" not in signed and "x-mailer" not in signed


def test_ed25519_keys_sign_with_ed25519_sha256(keys: dict[str, str]) -> None:
    """A PEM Ed25519 key (openssl genpkey) signs with a=ed25519-sha256 (RFC 8463)."""
    signature = DkimSigner({"example.test": DkimDomain("e1", keys["ed"])}).signature(MESSAGE)
    assert _tags(signature)["a"] == "ed25519-sha256"


def test_the_key_follows_the_from_domain(keys: dict[str, str]) -> None:
    """From's domain picks the key, or the nearest parent domain with one; no key, no From: unsigned."""
    signer = DkimSigner({"example.test": DkimDomain("r1", keys["rsa"]), "ed.example.test": DkimDomain("e1", keys["ed"])})
    for sender, domain in (("a@ed.example.test", "ed.example.test"), ("a@news.example.test", "example.test"),
                           ("a@Example.Test", "example.test")):
        message = MESSAGE.replace(b"alice@example.test", sender.encode())
        assert _tags(signer.signature(message))["d"] == domain
    assert signer.signature(MESSAGE.replace(b"alice@example.test", b"alice@other.example")) == b""
    assert signer.signature(MESSAGE.replace(b"From: Alice <alice@example.test>\r\n", b"")) == b""


def test_key_files_that_cannot_sign_say_why(tmp_path: Any) -> None:
    """Missing, not a key, a P-256 key, a 512-bit RSA key: each refused with its reason."""
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    ec_path = tmp_path / "ec.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(ec_path)],
                   check=True, capture_output=True, timeout=60)
    small = tmp_path / "small.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", "-out", str(small)],
                   check=True, capture_output=True, timeout=60)
    with pytest.raises(OSError):
        load_signing_key(str(tmp_path / "missing.key"))
    for path, why in ((garbage, "neither a PEM private key"), (ec_path, "signs with RSA or Ed25519"), (small, "512-bit")):
        with pytest.raises(ValueError, match=why):
            load_signing_key(str(path))


def test_check_config_names_file_table_and_key(tmp_path: Any, capsys: Any) -> None:
    """A key file that does not parse, a missing one, a missing selector: exit 78, each under its table and key."""
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    path = tmp_path / "tlsmta.toml"
    path.write_text(
        f'[dkim."example.test"]\nselector = "r1"\nkey_file = "{garbage}"\n'
        f'[dkim."other.test"]\nselector = "r1"\nkey_file = "{tmp_path}/missing.key"\n'
        f'[dkim."third.test"]\nkey_file = "{garbage}"\n'
    )
    assert main(["check-config", str(path)]) == EX_CONFIG
    out = capsys.readouterr()
    text = out.out + out.err
    assert str(path) in text
    assert re.search(r'dkim\."example\.test".*key_file.*neither a PEM private key', text)
    assert re.search(r'dkim\."other\.test".*key_file.*does not exist', text)
    assert re.search(r'dkim\."third\.test".*selector.*is required', text)


# -- end to end: tlsmta signs, a second tlsmta receives, OpenDKIM verifies -------------------------


def _sender_config(tmp_path: Any, receiver_port: int, zone: SignedZone, keys: dict[str, str], rsa_selector: str,
                   rsa_key: str) -> str:
    return (
        f'[global]\nhostname = "out.example.test"\nstate_dir = "{tmp_path}/out-state"\n'
        f'route = "smtp:127.0.0.1:{receiver_port}"\n'
        f'[spool]\npath = "{tmp_path}/out-spool"\n'
        f'[dns]\nnameservers = ["127.0.0.1:{zone.port}"]\n'
        f'[[listener]]\nname = "submit"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\n'
        f'relay_networks = ["127.0.0.0/8"]\n'
        f'[dkim."example.test"]\nselector = "{rsa_selector}"\nkey_file = "{rsa_key}"\n'
        f'[dkim."ed.example.test"]\nselector = "e1"\nkey_file = "{keys["ed"]}"\n'
    )


def _as_received(message: Any) -> bytes:
    """The message as the receiver stored it, with CRLF line ends as it came over SMTP."""
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_mail_leaving_tlsmta_verifies_with_opendkim_and_a_reload_rotates_the_key(
        tmp_path: Any, keys: dict[str, str]) -> None:
    """RSA and Ed25519 signatures on what a second tlsmta received verify with OpenDKIM against keys in a
    local unbound zone; after SIGHUP's reload with a new selector and key, the next message carries those."""
    zone = SignedZone(str(tmp_path / "zone"), "example.test", [
        key_record("r1", keys["rsa"]), key_record("r2", keys["rsa2"]), key_record("e1", keys["ed"], "ed"),
    ]).start()
    receiver = await start_relay(tmp_path / "rx", [dev_listener(local_domains=["example.org"])])
    path = tmp_path / "out.toml"
    path.write_text(_sender_config(tmp_path, receiver.port, zone, keys, "r1", keys["rsa"]))
    sender = await RunningRelay(preflight.load(str(path))).start()
    verifier = OpenDKIMVerifier(str(tmp_path / "opendkim"), zone.port)
    inbox = str(tmp_path / "rx" / "maildir")
    try:
        for author in ("alice@example.test", "bob@ed.example.test"):
            body = f"From: <{author}>\r\nTo: <carol@example.org>\r\nSubject: from {author}\r\n\r\nHello.\r\n"
            await in_thread(send_smtplib, sender.port, sender=author, rcpts=("carol@example.org",), body=body)
        await eventually(lambda: len(maildir_messages(inbox)) == 2, timeout=60)
        verdicts = {}
        for message in maildir_messages(inbox):
            line = await in_thread(verifier.verify, _as_received(message))
            match = VERIFIED.search(line)
            assert match is not None, line
            verdicts[match["domain"]] = (match["selector"], message["DKIM-Signature"])
        assert verdicts["example.test"][0] == "r1" and "a=rsa-sha256" in verdicts["example.test"][1]
        assert verdicts["ed.example.test"][0] == "e1" and "a=ed25519-sha256" in verdicts["ed.example.test"][1]

        path.write_text(_sender_config(tmp_path, receiver.port, zone, keys, "r2", keys["rsa2"]))
        assert sender.service.reload() == []
        await sender.service.reloaded()
        body = "From: <alice@example.test>\r\nTo: <carol@example.org>\r\nSubject: rotated\r\n\r\nHello again.\r\n"
        await in_thread(send_smtplib, sender.port, sender="alice@example.test", rcpts=("carol@example.org",), body=body)
        await eventually(lambda: len(maildir_messages(inbox)) == 3, timeout=60)
        rotated = next(m for m in maildir_messages(inbox) if m["Subject"] == "rotated")
        match = VERIFIED.search(await in_thread(verifier.verify, _as_received(rotated)))
        assert match is not None and match["selector"] == "r2"
        tampered = _as_received(rotated).replace(b"Hello again.", b"Hello agai n.")
        assert VERIFIED.search(await in_thread(verifier.verify, tampered)) is None  # the verifier can fail
        assert email.message_from_bytes(_as_received(rotated))["DKIM-Signature"].count("s=r2") == 1
    finally:
        await sender.stop()
        await receiver.stop()
        zone.stop()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_reload_with_a_key_that_does_not_parse_is_refused_and_the_old_key_signs_on(
        tmp_path: Any, keys: dict[str, str]) -> None:
    """SIGHUP's reload with a broken key file: refused naming the table and key_file; the running signer stays."""
    path = tmp_path / "tlsmta.toml"
    table = f'[global]\nhostname = "out.example.test"\nstate_dir = "{tmp_path}/state"\n[spool]\npath = "{tmp_path}/spool"\n'
    path.write_text(table + f'[dkim."example.test"]\nselector = "r1"\nkey_file = "{keys["rsa"]}"\n')
    relay = await RunningRelay(preflight.load(str(path))).start()
    try:
        running = relay.service.pool.dkim
        assert running is not None and _tags(running.signature(MESSAGE))["s"] == "r1"
        broken = tmp_path / "broken.key"
        broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        path.write_text(table + f'[dkim."example.test"]\nselector = "r2"\nkey_file = "{broken}"\n')
        problems = relay.service.reload()
        assert any('dkim."example.test"' in str(p) and "key_file" in str(p) for p in problems), problems
        assert relay.service.pool.dkim is running
    finally:
        await relay.stop()
