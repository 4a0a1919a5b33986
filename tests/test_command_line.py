"""`twistd tlsmta`'s overrides go through the loader, and a reload reads each users file once."""

from __future__ import annotations

from typing import Any

import pytest

from tlsmta.app import tap
from tlsmta.app._service import TlsmtaService
from tlsmta.config._loader import with_overrides
from tlsmta.inbound._auth import UserDB, hash_password

HTTP = "tcp:0:interface=127.0.0.1"
NO_MAILDIR = "[http] maildir: is required when the global route is not maildir:PATH"


def write_config(tmp_path: Any, extra: str = "") -> str:
    path = tmp_path / "mx.toml"
    path.write_text(f'[global]\nstate_dir = "{tmp_path / "state"}"\n[spool]\npath = "{tmp_path / "spool"}"\n' + extra)
    return str(path)


def options(*argv: str) -> tap.Options:
    parsed = tap.Options()
    parsed.parseOptions(list(argv))
    return parsed


@pytest.mark.parametrize(
    "in_file, argv",
    [(f'[http]\nendpoint = "{HTTP}"\n', ()), ("", ("--http", HTTP))],
    ids=["config-file", "command-line"],
)
def test_http_without_a_maildir_is_the_same_refusal_from_file_or_command_line(
    tmp_path: Any, capsys: Any, in_file: str, argv: tuple[str, ...]
) -> None:
    """[http] endpoint with no Maildir to show: exit 78 with the loader's line naming the file, whether the
    file sets the endpoint or --http does."""
    path = write_config(tmp_path, in_file)
    with pytest.raises(SystemExit) as exit_:
        tap.makeService(options("--config", path, *argv))
    assert exit_.value.code == 78
    assert capsys.readouterr().err == f"tlsmta: configuration refused:\n{path}: {NO_MAILDIR}\n"


def test_overrides_set_keys_over_the_files_tables() -> None:
    """Override keys win over the file's, other keys stay, a missing table is made; a table the
    file wrote as something else is left for the validator to report."""
    raw = {"http": {"endpoint": "tcp:1", "allowed_hosts": ["a"]}, "global": "oops"}
    merged = with_overrides(raw, {"http": {"endpoint": "tcp:2"}, "global": {"route": "mx"}, "spool": {"path": "/s"}})
    assert merged == {"http": {"endpoint": "tcp:2", "allowed_hosts": ["a"]}, "global": "oops", "spool": {"path": "/s"}}
    assert raw["http"]["endpoint"] == "tcp:1"  # the file's document is not changed


def test_maildir_override_gives_http_its_maildir(tmp_path: Any) -> None:
    """--maildir is checked with the file too, so --maildir with --http is a valid configuration."""
    path = write_config(tmp_path)
    parsed = options("--config", path, "--maildir", str(tmp_path / "mail"), "--http", HTTP)
    config = tap.command_line_reader(parsed, path)(path).config
    assert config.global_options["route"].path == str(tmp_path / "mail")
    assert config.http["endpoint"] == HTTP


def test_users_file_is_read_once_at_start_and_once_per_reload(tmp_path: Any, monkeypatch: Any) -> None:
    """Checking the configuration reads the users file; the listener runs with what was read,
    at start and on a reload (SIGHUP calls reload), which takes a changed file."""
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('one')}\n")
    listener = (f'[[listener]]\nname = "sub"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "no"\n'
                f'auth_users_file = "{users}"\nrequire_tls_for_auth = false\n')
    path = write_config(tmp_path, listener)
    loads: list[str] = []
    load = UserDB.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[UserDB], file: str) -> UserDB:
        loads.append(file)
        return load(cls, file)  # type: ignore[no-any-return]

    monkeypatch.setattr(UserDB, "load", classmethod(counted))
    from twisted.internet import reactor

    read = tap.command_line_reader(options("--config", path), path)
    checked = read(path)
    service = TlsmtaService(checked.config, reactor, read_config=read, users=checked.users)
    assert loads == [str(users)]
    assert service.listeners["sub"].inbound.runtime.users is checked.users[str(users)]

    users.write_text(f"bob:{hash_password('two')}\n")
    assert service.reload() == []
    assert loads == [str(users)] * 2
    assert set(service.listeners["sub"].inbound.runtime.users.users) == {"bob"}
