"""Recipients of a domain's MX, pure: map files, alias expansion at RCPT, per-recipient Maildirs.

No reactor: map files are written under tmp_path and read by the loader's checker;
expansion and mailbox names are plain functions (tlsmta.inbound._recipients).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsmta.app.cli import main
from tlsmta.config import AddressMap, AddressMapError, ConfigError, parse_route
from tlsmta.config._address_maps import address_value, load_address_maps, login_value
from tlsmta.config._routes import RouteError
from tlsmta.inbound._acceptance import Refusal
from tlsmta.inbound._recipients import MAX_ALIAS_DEPTH, check_mailbox_name, expand_recipient
from tlsmta.storage._maildir import LocalSink, maildir_of

LOCAL = frozenset({"example.test", "example.org"})
EX_CONFIG = 78


def aliases(tmp_path: Path, text: str) -> AddressMap:
    path = tmp_path / "virtual"
    path.write_text(text, encoding="utf-8")
    return load_address_maps((str(path),), address_value)


def refusal(maps: AddressMap, address: str) -> Refusal:
    with pytest.raises(Refusal) as info:
        expand_recipient(address, maps, LOCAL)
    return info.value


# -- the map files ------------------------------------------------------------------------------


def test_map_file_keys_values_comments(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; values split on commas and white space; keys lose case."""
    maps = aliases(tmp_path, "# aliases\n\nTeam@Example.TEST  alice@example.test,bob@example.org , carol@x.net\nalice@example.test\n")
    assert maps.lookup("team@example.test") == ("alice@example.test", "bob@example.org", "carol@x.net")
    assert maps.lookup("TEAM@EXAMPLE.test") == maps.lookup("team@example.test")
    assert maps.lookup("alice@example.test") == ()
    assert maps.lookup("nobody@example.test") is None
    assert maps.domains == {"example.test"}


def test_catch_all_is_used_only_for_unlisted_addresses(tmp_path: Path) -> None:
    """``@domain`` answers for any local part the map does not list itself."""
    maps = aliases(tmp_path, "@example.test  postmaster@example.test\nalice@example.test\n")
    assert maps.lookup("alice@example.test") == ()
    assert maps.lookup("anyone@example.test") == ("postmaster@example.test",)


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("alice@example.test\nnot-an-address  alice@example.test\n", 2, "'not-an-address' is not an address"),
        ("team@example.test  alice@example.test, oops\n", 1, "'oops' is not an address"),
        ("alice@example.test\n  bob@example.test\n", 2, "starts with white space"),
        ("alice@example.test\n# two\nALICE@example.test bob@example.test\n", 3, "listed already at"),
        ("x@bad..domain  a@example.test\n", 1, "'x@bad..domain'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, line: int, why: str) -> None:
    """A line that does not parse is refused with the file, its line number and why."""
    with pytest.raises(AddressMapError) as info:
        aliases(tmp_path, text)
    assert str(info.value).startswith(f"{tmp_path / 'virtual'}:{line}: ")
    assert why in str(info.value)


def test_login_values_are_names(tmp_path: Path) -> None:
    """Sender login maps hold login names, not addresses."""
    path = tmp_path / "logins"
    path.write_text("@example.test  admin\nalice@example.test  alice, admin\n")
    maps = load_address_maps((str(path),), login_value)
    assert maps.lookup("alice@example.test") == ("alice", "admin")
    assert maps.lookup("bob@example.test") == ("admin",)


def test_two_files_merge_and_may_not_repeat_a_key(tmp_path: Path) -> None:
    """A list of files is one map; a key in both is an error naming where it was first."""
    first, second = tmp_path / "mailboxes", tmp_path / "virtual"
    first.write_text("alice@example.test\n")
    second.write_text("team@example.test alice@example.test\n")
    maps = load_address_maps((str(first), str(second)), address_value)
    assert maps.lookup("team@example.test") == ("alice@example.test",)
    second.write_text("alice@example.test bob@example.test\n")
    with pytest.raises(AddressMapError, match=rf"{second}:1: .* listed already at {first}:1"):
        load_address_maps((str(first), str(second)), address_value)


def listener_config(tmp_path: Path, name: str, options: str) -> Path:
    """A configuration file with one plain listener and these option lines."""
    config = tmp_path / "tlsmta.toml"
    config.write_text(
        f'[global]\nstate_dir = "{tmp_path}"\n[[listener]]\nname = "{name}"\nendpoint = "tcp:2525"\ntls = "no"\n{options}'
    )
    return config


def test_check_config_names_map_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config: a malformed map line exits 78 naming the config, listener, option, map file and line."""
    virtual = tmp_path / "virtual"
    virtual.write_text("alice@example.test\nteam@example.test alice@example.test, ???\n")
    config = listener_config(tmp_path, "mx", f'local_domains = ["example.test"]\nrecipient_maps = "{virtual}"\n')
    assert main(["check-config", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f'{config}: [listener."mx"] recipient_maps: {virtual}:2: ') and "'???' is not an address" in err


def test_listener_options_need_their_partners(tmp_path: Path) -> None:
    """recipient_maps needs local_domains; role = submission and sender_login_maps need auth_users_file,
    and a submission listener must be able to offer AUTH (TLS, or require_tls_for_auth = false)."""
    from tlsmta.app._preflight import load

    maps = tmp_path / "map"
    maps.write_text("alice@example.test alice\n")
    config = listener_config(tmp_path, "s", f'recipient_maps = "{maps}"\nrole = "submission"\nsender_login_maps = "{maps}"\n')
    with pytest.raises(ConfigError) as info:
        load(str(config))
    assert [(p.table, p.key) for p in info.value.problems] == [
        ('listener."s"', "recipient_maps"),
        ('listener."s"', "role"),
        ('listener."s"', "sender_login_maps"),
    ]
    users = tmp_path / "users"
    users.write_text("")
    config = listener_config(tmp_path, "s", f'role = "submission"\nauth_users_file = "{users}"\n')
    with pytest.raises(ConfigError) as info:
        load(str(config))
    [problem] = info.value.problems
    assert problem.key == "role" and "never offers AUTH" in problem.why


# -- expansion at RCPT ------------------------------------------------------------------------------


def test_mailbox_is_itself(tmp_path: Path) -> None:
    """A listed mailbox expands to itself, as the client wrote it."""
    maps = aliases(tmp_path, "alice@example.test\n")
    assert expand_recipient("Alice@example.test", maps, LOCAL) == ("Alice@example.test",)


def test_unknown_recipient_is_550_5_1_1(tmp_path: Path) -> None:
    """An address the maps do not list, in a domain with no catch-all: 550 5.1.1."""
    maps = aliases(tmp_path, "alice@example.test\n")
    refused = refusal(maps, "nosuchuser@example.test")
    assert (refused.code, refused.text) == (550, "5.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown")
    assert refused.reason == "not in recipient_maps"


def test_alias_expands_nested_and_forwards(tmp_path: Path) -> None:
    """Aliases expand in turn; a target outside the local domains is final (forwarding); each address once."""
    maps = aliases(
        tmp_path,
        "alice@example.test\nbob@example.org\nteam@example.test  dev@example.test, alice@example.test\n"
        "dev@example.test  bob@example.org, alice@example.test, friend@elsewhere.net\n",
    )
    assert expand_recipient("team@example.test", maps, LOCAL) == ("bob@example.org", "alice@example.test", "friend@elsewhere.net")


def test_alias_including_itself_keeps_a_copy(tmp_path: Path) -> None:
    """``alice  alice, archive``: alice's own mailbox and the archive (Postfix's virtual(5))."""
    maps = aliases(tmp_path, "alice@example.test  alice@example.test, archive@example.test\narchive@example.test\n")
    assert expand_recipient("alice@example.test", maps, LOCAL) == ("alice@example.test", "archive@example.test")


def test_catch_all_rewrites_the_domain(tmp_path: Path) -> None:
    """``@example.org  @example.test``: any local part of example.org goes to the same one at example.test."""
    maps = aliases(tmp_path, "@example.org  @example.test\nsales@example.test\n")
    assert expand_recipient("sales@example.org", maps, LOCAL) == ("sales@example.test",)
    assert refusal(maps, "nobody@example.org").reason == "alias target nobody@example.test is not in recipient_maps"


def test_alias_to_unknown_local_address_refuses_the_rcpt(tmp_path: Path) -> None:
    """An alias naming an unknown local address is refused whole (nothing accepted and then lost), the log says which."""
    maps = aliases(tmp_path, "alice@example.test\nteam@example.test alice@example.test, ghost@example.test\n")
    refused = refusal(maps, "team@example.test")
    assert refused.code == 550 and refused.reason == "alias target ghost@example.test is not in recipient_maps"


def test_alias_loop_without_mailbox_is_refused(tmp_path: Path) -> None:
    """a -> b -> a, no mailbox: 550 5.4.6, not an endless walk."""
    maps = aliases(tmp_path, "a@example.test b@example.test\nb@example.test a@example.test\n")
    refused = refusal(maps, "a@example.test")
    assert (refused.code, refused.text.split()[0]) == (550, "5.4.6")
    assert refused.reason == "the aliases loop without reaching a mailbox"


def test_loop_with_a_mailbox_delivers_once(tmp_path: Path) -> None:
    """a -> b, c; b -> a: the walk stops at a and delivers c."""
    maps = aliases(tmp_path, "a@example.test b@example.test, c@example.test\nb@example.test a@example.test\nc@example.test\n")
    assert expand_recipient("a@example.test", maps, LOCAL) == ("c@example.test",)


def test_alias_depth_limit(tmp_path: Path) -> None:
    """A chain deeper than MAX_ALIAS_DEPTH is refused; one level less is delivered."""
    chain = "".join(f"a{n}@example.test a{n + 1}@example.test\n" for n in range(MAX_ALIAS_DEPTH + 1))
    maps = aliases(tmp_path, chain + f"a{MAX_ALIAS_DEPTH + 1}@example.test\n")
    assert refusal(maps, "a0@example.test").reason == f"aliases nested deeper than {MAX_ALIAS_DEPTH}"
    assert expand_recipient("a1@example.test", maps, LOCAL) == (f"a{MAX_ALIAS_DEPTH + 1}@example.test",)


def test_expansion_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An alias wider than MAX_EXPANSION addresses is refused."""
    monkeypatch.setattr("tlsmta.inbound._recipients.MAX_EXPANSION", 3)
    maps = aliases(tmp_path, "all@example.test " + ", ".join(f"u{n}@far.test" for n in range(4)) + "\n")
    assert refusal(maps, "all@example.test").reason == "more than 3 addresses"


def test_postmaster_is_always_accepted(tmp_path: Path) -> None:
    """RFC 5321 4.5.1: postmaster of a local domain is accepted though the maps do not list it."""
    maps = aliases(tmp_path, "alice@example.test\n")
    assert expand_recipient("postmaster@example.test", maps, LOCAL) == ("postmaster@example.test",)
    maps = aliases(tmp_path, "alice@example.test\npostmaster@example.test alice@example.test\n")
    assert expand_recipient("postmaster@example.test", maps, LOCAL) == ("alice@example.test",)


# -- one Maildir per mailbox -----------------------------------------------------------------------------


def test_route_expands_domain_and_user() -> None:
    """``maildir:/var/mail/%d/%u/``: the recipient's domain (A-label) and local part, lower case; %% is %."""
    route = parse_route("maildir:/var/mail/%d/%u/")
    assert maildir_of("Alice@Bücher.Example", route) == "/var/mail/xn--bcher-kva.example/alice"
    assert maildir_of("a@example.test", parse_route("maildir:/var/mail/100%%")) == "/var/mail/100%"
    assert maildir_of("a@example.test", parse_route("maildir:/var/mail/shared")) == "/var/mail/shared"


@pytest.mark.parametrize("spec", ["maildir:/var/mail/%x", "maildir:/var/mail/%"])
def test_route_refuses_unknown_expansions(spec: str) -> None:
    """Only %d, %u and %% may follow a '%': a typo is a configuration error."""
    with pytest.raises(RouteError, match="only %d"):
        parse_route(spec)


@pytest.mark.parametrize("address", ["../x@example.test", "a/b@example.test", "..@example.test", "@example.test"])
def test_address_that_cannot_name_a_mailbox_is_550_5_1_3(address: str) -> None:
    """A local part that would leave the Maildir's directory is refused at RCPT."""
    route = parse_route("maildir:/var/mail/%d/%u")
    with pytest.raises(Refusal) as info:
        check_mailbox_name(address, route)
    assert info.value.code == 550 and info.value.text.startswith("5.1.3 ")
    check_mailbox_name(address, parse_route("maildir:/var/mail/shared"))  # one shared Maildir: nothing to name


def test_one_file_per_mailbox_with_its_delivered_to() -> None:
    """Recipients of one message in two mailboxes: a file in each, Delivered-To naming only its own recipient."""
    route = parse_route("maildir:/m/%d/%u")
    files = LocalSink(disk=None).maildir_files(  # type: ignore[arg-type]  # no write happens
        "s@client.test", [("alice@example.test", route), ("bob@example.test", route)]
    )
    assert [(f.maildir, f.file.prefix) for f in files] == [
        ("/m/example.test/alice", b"Return-Path: <s@client.test>\nDelivered-To: alice@example.test\n"),
        ("/m/example.test/bob", b"Return-Path: <s@client.test>\nDelivered-To: bob@example.test\n"),
    ]
