"""Unit tests for the ``tlsmta`` command: check-config and policy.

main() is called in-process with an argv list; output is read with capsys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tlsmta.app.cli import EX_CONFIG, EX_DATAERR, EX_OK, EX_USAGE, main
from tlsmta.config._loader import DELIVERY_OPTIONS

SYSEXITS = {"EX_OK": 0, "EX_USAGE": 64, "EX_DATAERR": 65, "EX_CONFIG": 78}

POLICY_CONFIG = """
[global]
tls = "ifavailable"
tls_verify = "optional"
tls_protocols = "+ALL:-SSLv3:-TLSv1.0:-TLSv1.1"

[domain."example.com"]
tls = "required"
tls_verify = "host"

[domain."bücher.example"]
route = "smtp:[::1]:2525"

[binding."out1"]
source_address = "192.0.2.10"
tls_groups = ["X25519MLKEM768", "X25519"]

[binding."out1".domain."example.com"]
tls_verify = "ca"

[binding_group."grp"]
bindings = ["out1"]
max_connections = 5

[binding_group."grp".domain."example.com"]
smtp_port = 2525
"""


def write(tmp_path: Path, text: str) -> str:
    """Write a config file and return its path."""
    path = tmp_path / "tlsmta.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def policy_lines(out: str) -> dict[str, tuple[str, str]]:
    """Parse `tlsmta policy` output into {option: (shown value, scope)}."""
    lines = out.splitlines()
    assert lines[0].startswith("# effective outbound options for domain ")
    table = {}
    for line in lines[1:]:
        if not line:
            break  # the description in words follows the table
        setting, marker, scope = line.partition(" # from ")
        assert marker, f"line without a scope: {line!r}"
        name, equals, value = setting.partition(" = ")
        assert equals, f"line without ' = ': {line!r}"
        assert name.strip() not in table, f"option printed twice: {name.strip()}"
        table[name.strip()] = (value.strip(), scope)
    return table


def test_exit_codes_are_sysexits() -> None:
    """The exit codes are the sysexits.h values scripts and systemd expect."""
    assert {"EX_OK": EX_OK, "EX_USAGE": EX_USAGE, "EX_DATAERR": EX_DATAERR, "EX_CONFIG": EX_CONFIG} == SYSEXITS


# -- check-config ----------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: exit 0, 'ok' with a summary on stdout, nothing on stderr."""
    path = write(tmp_path, POLICY_CONFIG + '\n[[listener]]\nendpoint = "tcp:2525"\ntls = "no"\n')
    assert main(["check-config", path]) == EX_OK
    out, err = capsys.readouterr()
    assert out == f"{path}: ok (1 listener(s), 2 domain scope(s))\n"
    assert err == ""


def test_check_config_ok_with_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A listener with a matching trustme certificate and key passes check-config."""
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    path = write(tmp_path, f"[[listener]]\nendpoint = 'tcp:25'\ntls_certificate = '{cert}'\ntls_key = '{key}'\n")
    assert main(["check-config", path]) == EX_OK
    assert ": ok (" in capsys.readouterr().out


def test_check_config_names_a_bad_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed tls_pins entry: exit 78, the file, table, key and the pin on stderr."""
    path = write(tmp_path, '[domain."example.com"]\ntls_pins = ["sha256:not-a-digest"]\n')
    assert main(["check-config", path]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f'{path}: [domain."example.com"] tls_pins: ') and "'sha256:not-a-digest' is not a pin" in err


def test_check_config_names_an_lmtp_route_without_a_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """lmtp:HOST without a port: exit 78, the file, table and key, and why (LMTP has no well-known port)."""
    path = write(tmp_path, '[domain."example.com"]\nroute = "lmtp:dovecot.example"\n')
    assert main(["check-config", path]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f'{path}: [domain."example.com"] route: ') and "lmtp route needs a port" in err


def test_check_config_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file: exit 78 (EX_CONFIG), every problem on stderr naming file, table and key, nothing on stdout."""
    path = write(
        tmp_path,
        """
[global]
tls_verify = "maybe"

[domain."example.com"]
smtp_port = "25"
route = "smtp:host:99999"

[[listener]]
endpoint = "tcp:25"
tls = "starttls"

[typo]
""",
    )
    assert main(["check-config", path]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    expected_places = [
        "[typo]:",
        "[global] tls_verify:",
        '[domain."example.com"] smtp_port:',
        '[domain."example.com"] route:',
        "[listener.0] tls_certificate:",
    ]
    assert len(lines) == len(expected_places)
    for place in expected_places:
        assert sum(line.startswith(f"{path}: {place}") for line in lines) == 1, place
    assert any("must be one of no, ca, host, optional (got 'maybe')" in line for line in lines)


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file exits 78 and says so on stderr."""
    path = str(tmp_path / "absent.toml")
    assert main(["check-config", path]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: (top level): file not found\n"


def test_check_config_unsupported_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key-exchange group this OpenSSL lacks exits 78, naming the key, the group and the OpenSSL version."""
    path = write(tmp_path, '[binding."out1"]\ntls_groups = ["X25519", "X999MLKEM4096"]\n')
    assert main(["check-config", path]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f'{path}: [binding."out1"] tls_groups: ')
    assert "'X999MLKEM4096' not supported by OpenSSL " in err and "(ML-KEM groups need OpenSSL 3.5 or later)" in err


def test_check_config_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not TOML exits 78 with one line naming the file."""
    path = write(tmp_path, "[global\n")
    assert main(["check-config", path]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: (top level): not valid TOML")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """No command, an unknown command or a missing argument exits 64 (EX_USAGE) with usage on stderr."""
    for argv in ([], ["frobnicate"], ["check-config"], ["policy", "only-a-file"]):
        assert main(argv) == EX_USAGE, argv
        out, err = capsys.readouterr()
        assert "usage: tlsmta" in err


def test_help_exits_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage and exits 0."""
    assert main(["--help"]) == EX_OK
    assert "check-config" in capsys.readouterr().out


# -- policy ------------------------------------------------------------------------------


def test_policy_binding_and_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """policy prints every delivery option once, with its effective value and '# from <scope>'."""
    path = write(tmp_path, POLICY_CONFIG)
    assert main(["policy", path, "Example.COM.", "--binding", "out1"]) == EX_OK
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == "# effective outbound options for domain example.com via binding out1"
    table = policy_lines(out)
    assert set(table) == set(DELIVERY_OPTIONS)
    assert table["tls_verify"] == ("ca", 'binding."out1".domain."example.com"')
    assert table["smtp_port"] == ("2525", 'binding_group."grp".domain."example.com"')
    assert table["source_address"] == ("192.0.2.10", 'binding."out1"')
    assert table["max_connections"] == ("5", 'binding_group."grp"')
    assert table["tls"] == ("required", 'domain."example.com"')
    assert table["tls_protocols"] == ("TLSv1.2:TLSv1.3", "global")
    assert table["route"] == ("mx", "default")
    assert table["tls_ifavailable_fallback"] == ("true", "default")
    assert table["tls_ca"] == ("(unset)", "default")
    assert table["tls_groups"] == ("X25519MLKEM768:X25519", 'binding."out1"')  # in order


def test_policy_default_binding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --binding the default binding is used: binding and group scopes do not apply."""
    path = write(tmp_path, POLICY_CONFIG)
    assert main(["policy", path, "example.com"]) == EX_OK
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "# effective outbound options for domain example.com via binding default"
    table = policy_lines(out)
    assert table["tls_verify"] == ("host", 'domain."example.com"')
    assert table["smtp_port"] == (str(DELIVERY_OPTIONS["smtp_port"].default), "default")
    assert table["source_address"] == ("(unset)", "default")


def test_policy_idna_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A U-label domain on the command line finds the domain scope and is shown as its A-label."""
    path = write(tmp_path, POLICY_CONFIG)
    assert main(["policy", path, "BÜCHER.example"]) == EX_OK
    out = capsys.readouterr().out
    assert "domain xn--bcher-kva.example " in out.splitlines()[0]
    assert policy_lines(out)["route"] == ("smtp:[::1]:2525", 'domain."xn--bcher-kva.example"')


def test_policy_unknown_binding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A binding not defined in the file exits 65 (EX_DATAERR) naming the binding and the file."""
    path = write(tmp_path, POLICY_CONFIG)
    assert main(["policy", path, "example.com", "--binding", "ghost"]) == EX_DATAERR
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tlsmta policy: binding 'ghost' is not defined in {path}\n"


def test_policy_invalid_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A domain argument that is not a domain name exits 65 with a reason on stderr."""
    path = write(tmp_path, POLICY_CONFIG)
    assert main(["policy", path, "exa mple.com"]) == EX_DATAERR
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("tlsmta policy: ")
    assert "not a valid domain name" in err


def test_policy_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """policy on an invalid file exits 78 and reports the problems like check-config does."""
    path = write(tmp_path, '[global]\ntls = "always"\n')
    assert main(["policy", path, "example.com"]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: [global] tls: must be one of no, ifavailable, required")



def test_policy_says_in_words_what_will_happen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After the table, tlsmta policy says what happens, naming the CA file, the domain and the --mx host."""
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))  # a tls_ca file must hold a certificate
    path = tmp_path / "c.toml"
    path.write_text(f'[domain."example.com"]\ntls = "required"\ntls_verify = "host"\ntls_ca = "{ca}"\n')
    assert main(["policy", str(path), "example.com", "--mx", "mx1.example.com"]) == EX_OK
    out = capsys.readouterr().out
    assert "STARTTLS required: not advertised defers with 4.7.6; a failed handshake defers with 4.7.5." in out
    assert f"The certificate must chain to {ca} and name example.com or mx1.example.com" in out
    assert main(["policy", str(path), "example.org"]) == EX_OK
    assert "No STARTTLS: the mail goes in plain text." in capsys.readouterr().out


def test_hash_password_line_loads_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """tlsmta hash-password prints a users-file line that UserDB loads and that checks the password."""
    import io

    from tlsmta.inbound._auth import UserDB

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-password", "alice"]) == EX_OK
    line = capsys.readouterr().out.strip()
    users = tmp_path / "users"
    users.write_text(line + "\n")
    db = UserDB.load(str(users))
    assert db.check("alice", "s3cret") and not db.check("alice", "wrong")


# -- queue output: what a peer sent never reaches the terminal as control characters ----


HOSTILE = "\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\x1b[8m\x9b31m\x7f\u202e"


def _no_controls(text: str) -> None:
    for char in "\x1b\x07\x9b\x7f\r\u202e":
        assert char not in text, repr(char)


def test_queue_show_and_list_escape_peer_controls(capsys: pytest.CaptureFixture[str]) -> None:
    """HELO, addresses, remote replies and header bytes are printed with C0/C1 controls, DEL, ESC
    escaped (as \\x1b ...); UTF-8 text stays readable and header lines keep their layout."""
    from tlsmta.app.cli import print_message, print_queue

    message = {
        "id": "q1", "sender": f"a{HOSTILE}@b.test", "received_at": 0, "size": 10, "attempts": 1,
        "next_attempt": 0, "in_flight": False, "peer": "192.0.2.1", "helo": f"evil{HOSTILE}",
        "tls": {"tls": "tls", "protocol": "TLSv1.3", "cipher": "X", "verified": "no"},
        "recipients": [{"address": f"jörg{HOSTILE}@bücher.example", "route": "mx", "binding": "default",
                        "status": "pending", "last": f"451 4.0.0 remote says {HOSTILE}"}],
        "headers": f"Received: from x\r\n\tby y\r\nSubject: Grüße {HOSTILE}\r\nX-CR: a\rb",
    }
    print_message(message)
    print_queue([message])
    text = capsys.readouterr().out
    _no_controls(text)
    assert "evil\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2J" in text
    assert "\\x9b31m\\x7f\\u202e" in text
    assert "jörg\\x1b" in text and "@bücher.example" in text
    assert "\nReceived: from x\n\tby y\nSubject: Grüße \\x1b" in text  # folding kept, CRLF shown as lines
    assert "X-CR: a\\x0db" in text


def test_printable_leaves_ordinary_text_alone() -> None:
    from tlsmta.app.cli import printable

    assert printable("Grüße, 日本語 <a@b.test> (ok)") == "Grüße, 日本語 <a@b.test> (ok)"
    assert printable("a\nb\tc", keep="\n") == "a\nb\\x09c"
