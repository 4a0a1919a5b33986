"""Unit tests for :mod:`tlsmta.inbound._auth`: scrypt password hashes, the users file, SASL decoding."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsmta.inbound import _auth as auth
from tlsmta.inbound._auth import (
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    AuthFileError,
    UserDB,
    check_password,
    hash_password,
)
from tlsmta.smtp._sasl import decode_b64_text, decode_plain


@pytest.fixture(scope="module")
def stored() -> str:
    """One hash of 'correct horse' (scrypt is slow: compute it once)."""
    return hash_password("correct horse")


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


# -- hashes -------------------------------------------------------------------------------------


def test_hash_format(stored):
    """The hash is scrypt$N$r$p$salt$digest with the module's cost parameters and a 16-octet salt."""
    scheme, n, r, p, salt, digest = stored.split("$")
    assert scheme == "scrypt"
    assert (int(n), int(r), int(p)) == (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32


def test_round_trip(stored):
    """check_password accepts the password a hash was made from."""
    assert check_password("correct horse", stored) is True


def test_wrong_password(stored):
    """A different password (or a case change, or empty) is refused."""
    assert check_password("correct horsE", stored) is False
    assert check_password("", stored) is False


def test_salt_is_random():
    """Two hashes of the same password differ (random salt), and a fixed salt is reproducible."""
    assert hash_password("pw", b"0123456789abcdef") == hash_password("pw", b"0123456789abcdef")
    assert hash_password("pw") != hash_password("pw")


def test_non_ascii_password():
    """Passwords are UTF-8: a non-ASCII password round-trips."""
    stored = hash_password("pässwörd ✓")
    assert check_password("pässwörd ✓", stored)
    assert not check_password("passwort", stored)


def _tamper(stored: str, index: int, value: str) -> str:
    parts = stored.split("$")
    parts[index] = value
    return "$".join(parts)


def _flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: _tamper(s, 5, _flip_b64(s.split("$")[5])),  # digest changed
        lambda s: _tamper(s, 4, _flip_b64(s.split("$")[4])),  # salt changed
        lambda s: _tamper(s, 0, "bcrypt"),  # scheme changed
        lambda s: _tamper(s, 1, "8192"),  # cost changed
        lambda s: _tamper(s, 1, "x"),  # cost not a number
        lambda s: _tamper(s, 1, "3"),  # N not a power of two
        lambda s: _tamper(s, 1, "-16384"),  # negative N
        lambda s: _tamper(s, 1, str(10**30)),  # N too big for the C type
        lambda s: _tamper(s, 2, "0"),  # r = 0
        lambda s: _tamper(s, 3, str(2**70)),  # p too big for the C type
        lambda s: _tamper(s, 5, ""),  # no digest
        lambda s: _tamper(s, 5, "!!!"),  # digest not base64
        lambda s: s + "$extra",
        lambda s: s.rsplit("$", 1)[0],
        lambda s: "",
        lambda s: "scrypt",
    ],
)
def test_tampered_hash_is_false(stored, tamper):
    """A damaged or altered stored hash never verifies, and never raises."""
    assert check_password("correct horse", tamper(stored)) is False


# -- the users file ------------------------------------------------------------------------


def test_userdb_load_with_comments(tmp_path, stored):
    """Comments, blank lines and surrounding whitespace are ignored; each user:hash line is an account."""
    other = hash_password("s3cret")
    path = tmp_path / "users"
    path.write_text(f"# tlsmta users\n\n   \nalice:{stored}\n  # indented comment\nbob@example.com:{other}  \n", encoding="utf-8")
    db = UserDB.load(str(path))
    assert set(db.users) == {"alice", "bob@example.com"}
    assert db.check("alice", "correct horse")
    assert not db.check("alice", "s3cret")
    assert db.check("bob@example.com", "s3cret")


@pytest.mark.parametrize(
    "line",
    ["alice", "alice:", ":scrypt$1$2$3$4$5", "alice:bcrypt$x", "alice plain-password", "alice:plaintext"],
)
def test_userdb_bad_line_names_path_and_line(tmp_path, stored, line):
    """A malformed line is AuthFileError naming the file and the line number."""
    path = tmp_path / "users"
    path.write_text(f"# header\nalice:{stored}\n{line}\n", encoding="utf-8")
    with pytest.raises(AuthFileError) as info:
        UserDB.load(str(path))
    assert str(info.value).startswith(f"{path}:3:")
    assert isinstance(info.value, ValueError)


def test_userdb_empty_file(tmp_path):
    """An empty users file is no accounts: every login fails."""
    path = tmp_path / "users"
    path.write_text("# nobody yet\n", encoding="utf-8")
    db = UserDB.load(str(path))
    assert db.users == {}
    assert not db.check("alice", "x")


def test_unknown_user_is_false(stored):
    """An unknown user is refused, even with a password that is someone's."""
    db = UserDB({"alice": stored})
    assert db.check("mallory", "correct horse") is False
    assert db.check("Alice", "correct horse") is False  # names are exact


def test_unknown_user_costs_the_same_as_a_known_one(stored, monkeypatch):
    """Refusing an unknown user runs scrypt exactly as many times as checking a known one (no timing oracle)."""
    db = UserDB({"alice": stored})
    db.check("nobody", "warm-up")  # allow a one-off decoy hash to be made ahead of time
    calls = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(auth.hashlib, "scrypt", counting)
    db.check("alice", "wrong")
    known = len(calls)
    calls.clear()
    db.check("mallory", "wrong")
    assert len(calls) == known == 1


# -- SASL decoding ------------------------------------------------------------------------------


def test_decode_plain_without_authzid():
    """PLAIN ``\\0user\\0pass`` gives (user, pass)."""
    assert decode_plain(b64(b"\0alice\0correct horse")) == ("alice", "correct horse")


def test_decode_plain_with_matching_authzid():
    """An authzid equal to the authcid is fine."""
    assert decode_plain(b64(b"alice\0alice\0pw")) == ("alice", "pw")


def test_decode_plain_mismatching_authzid():
    """Proxy authorization (authzid different from authcid) is refused."""
    assert decode_plain(b64(b"admin\0alice\0pw")) is None


def test_decode_plain_utf8():
    """User and password are UTF-8 (RFC 4616)."""
    assert decode_plain(b64("\0jøran\0pässwörd".encode())) == ("jøran", "pässwörd")


@pytest.mark.parametrize(
    "response",
    [
        b"not base64!",
        b"AGFsaWNl AHB3",  # embedded space
        b"AGFsaWNlAHB",  # bad padding
        b64(b"alice\0pw"),  # only one NUL
        b64(b"\0alice\0pw\0extra"),  # too many parts
        b64(b"\0alice\0\xff\xfe"),  # not UTF-8
        b"",
    ],
)
def test_decode_plain_malformed(response):
    """Bad base64, the wrong number of NULs, or non-UTF-8 all give None."""
    assert decode_plain(response) is None


def test_decode_b64_text():
    """LOGIN responses are base64 UTF-8 text; anything else is None."""
    assert decode_b64_text(b64(b"alice")) == "alice"
    assert decode_b64_text(b64("jøran".encode())) == "jøran"
    assert decode_b64_text(b"") == ""
    assert decode_b64_text(b"@@@") is None
    assert decode_b64_text(b64(b"\xff")) is None
    assert decode_b64_text(b"YWxpY2U") is None  # missing padding


@given(st.binary(max_size=64))
def test_decoders_never_raise(response):
    """Whatever the client sends as an AUTH response, the decoders return a value or None."""
    plain = decode_plain(response)
    assert plain is None or (isinstance(plain, tuple) and len(plain) == 2)
    text = decode_b64_text(response)
    assert text is None or isinstance(text, str)


@given(st.text(alphabet=st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=20), st.text(alphabet=st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=20))
def test_decode_plain_round_trip(user, password):
    """Any NUL-free user and password encoded as PLAIN decode back to themselves."""
    assert decode_plain(b64(f"\0{user}\0{password}".encode())) == (user, password)


@pytest.mark.parametrize(
    "stored",
    [
        "scrypt$16384$8$1$c2FsdA==",  # too few parts
        "scrypt$-16384$8$1$c2FsdA==$" + "A" * 44,  # negative cost
        "scrypt$1000$8$1$c2FsdA==$" + "A" * 44,  # N not a power of two
        "scrypt$16384$8$99999$c2FsdA==$" + "A" * 44,  # p that would make every check take minutes
        "scrypt$16384$8$1$!!!$" + "A" * 44,  # salt not base64
    ],
)
def test_users_file_with_damaged_hash_refused_at_load(tmp_path, stored):
    """A damaged or absurd hash is an error when the users file loads, not a silent never-match."""
    path = tmp_path / "users"
    path.write_text(f"alice:{stored}\n")
    with pytest.raises(AuthFileError) as info:
        UserDB.load(str(path))
    assert f"{path}:1:" in str(info.value)
