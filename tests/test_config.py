"""Unit tests for tlsmta.config: loading, validation, scope resolution, binding rules.

Pure tests: files are written under tmp_path, certificates come from trustme,
and nothing listens or connects.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme

# What tlsmta itself loads with: syntax and data, plus this machine's checks (OpenSSL, key pairs,
# hooks, users files); tlsmta.config alone is syntax and data (test_syntax_only_loader).
from tlsmta.app._preflight import from_dict, load
from tlsmta.config import _loader as configuration
from tlsmta.config._loader import (
    DELIVERY_OPTIONS,
    LISTENER_OPTIONS,
    QUEUE_OPTIONS,
    SPOOL_OPTIONS,
    TLS_VERSIONS,
    BindingRule,
    Config,
    ConfigError,
    Problem,
    Resolved,
    parse_protocols,
    resolve,
    select_binding,
)
from tlsmta.config._routes import Route, parse_route
from tlsmta.tls import openssl_version

CONFIG_NAME = "tlsmta.toml"
DOMAIN = "example.com"
BINDING = "out1"
GROUP = "grp"
# An importable module:function, standing in for an operator's hook.
IMPORTABLE_HOOK = "json:dumps"


# -- helpers -------------------------------------------------------------------------


@attrs.frozen
class Pki:
    """PEM files made by trustme for one test."""

    ca: str  # CA certificate (trust anchor / tls_client_ca)
    cert: str  # leaf certificate for mx.example
    key: str  # its key
    other_key: str  # the key of a different leaf: does not match ``cert``
    garbage_key: str  # a file that is not a key at all


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A trustme CA, one leaf with its key, another leaf's key, and a garbage key file."""
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example")
    other = ca.issue_cert("other.example")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "other_key", "garbage_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    paths["garbage_key"].write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n")
    return Pki(**{name: str(path) for name, path in paths.items()})


def write(tmp_path: Path, text: str, name: str = CONFIG_NAME) -> str:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(path: str) -> list[Problem]:
    """Load path, which must be invalid, and return the problems reported."""
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def only_problem(path: str) -> Problem:
    """The single problem loading path reports."""
    problems = problems_of(path)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def assert_names(problem: Problem, path: str, table: str, key: str | None) -> None:
    """The problem, and its text, name the file, the table and the key."""
    assert (problem.file, problem.table, problem.key) == (path, table, key)
    text = str(problem)
    assert text.startswith(f"{path}: ")
    assert f"[{table}]" in text
    if key is not None:
        assert f"[{table}] {key}: " in text


def assert_mismatch(problem: Problem, pki: Pki) -> None:
    """The problem says, naming both files, that the key does not match the certificate
    (not that the key cannot be loaded: it loads fine, it is just another key)."""
    assert problem.why == f"key {pki.other_key!r} does not match certificate {pki.cert!r}"


def q(path: str) -> str:
    """A TOML literal string for a file path."""
    return f"'{path}'"


def complete_config(pki: Pki, tmp_path: Path) -> str:
    """A configuration that uses every table and scope."""
    return f"""
[global]
hostname = "mx.example.net"
state_dir = {q(str(tmp_path / "state"))}
tls = "ifavailable"
tls_verify = "optional"
tls_ca = {q(pki.ca)}
tls_certificate = {q(pki.cert)}
tls_key = {q(pki.key)}
tls_protocols = "+ALL:-SSLv3:-TLSv1.0:-TLSv1.1"
tls_ciphers = "HIGH:!aNULL"
tlsv13_ciphersuites = "TLS_AES_256_GCM_SHA384"
tls_ifavailable_fallback = false
route = "mx"
smtp_port = 25
max_connections = 10
max_messages_per_connection = 50

[spool]
path = {q(str(tmp_path / "spool"))}

[queue]
retry_schedule = [60, 300, 900, 1800, 3600]
max_queue_lifetime = 432000

[hooks]
outbound_tls_verify_callback = "{IMPORTABLE_HOOK}"
inbound_tls_verify_callback = "{IMPORTABLE_HOOK}"
outbound_tls_parameters = "{IMPORTABLE_HOOK}"
outbound_binding = "{IMPORTABLE_HOOK}"

[domain."Example.COM."]
tls = "required"
tls_verify = "host"

[domain."bücher.example"]
route = "smtp:[::1]:2525"

[domain."discard.example"]
route = "discard"

[binding."out1"]
source_address = "192.0.2.10"
ehlo_hostname = "out1.example.net"

[binding."out1".domain."example.org"]
tls_verify = "ca"

[binding."out2"]
source_address = "2001:db8::10"

[binding_group."grp"]
bindings = ["out1", "out2"]
max_connections = 5

[binding_group."grp".domain."example.org"]
smtp_port = 2525

[[listener]]
name = "mx"
endpoint = "tcp:25"
tls = "starttls"
tls_certificate = {q(pki.cert)}
tls_key = {q(pki.key)}
tls_client_ca = {q(pki.ca)}
tls_verify = "optional"
tls_protocols = "+TLSv1.2:+TLSv1.3"
local_domains = ["Example.COM", "bücher.example"]
relay_networks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]
tls_verified_peer_can_relay = true
require_tls_for_auth = true
max_message_size = 10485760
max_recipients = 100
max_connections = 200
max_line_length = 998
idle_timeout = 60
data_timeout = 120

[[listener]]
name = "submission"
endpoint = "tcp:465"
tls = "implicit"
tls_certificate = "auto"

[[listener]]
endpoint = "tcp:2525:interface=127.0.0.1"
tls = "no"

[dns.mx]
"Example.Test." = ["mx1.example.test", "mx2.example.test"]
[dns.hosts]
"mx1.example.test" = ["127.0.0.1"]
[dns.txt]
"_mta-sts.example.test" = ["v=STSv1; id=20261125"]
[dns.tlsa]
"_25._tcp.mx1.example.test" = ["3 1 1 0f3a"]

[[binding_rule]]
listener = "submission"
binding = "out2"

[[binding_rule]]
recipient_domain = ["Example.org"]
sender_domain = ["example.net"]
binding = "out1"
"""


# -- a complete valid file -----------------------------------------------------------


def test_complete_config_loads(pki: Pki, tmp_path: Path) -> None:
    """A file using every scope and table loads, and each value arrives validated and normalised."""
    path = write(tmp_path, complete_config(pki, tmp_path))
    config = load(path)

    assert config.path == path
    assert config.hostname == "mx.example.net"
    assert config.state_dir == str(tmp_path / "state")
    assert config.global_options["tls"] == "ifavailable"
    assert config.global_options["tls_verify"] == "optional"
    assert config.global_options["tls_protocols"] == frozenset({"TLSv1.2", "TLSv1.3"})
    assert config.global_options["tls_ifavailable_fallback"] is False
    assert config.global_options["route"] == Route("mx")
    assert "hostname" not in config.global_options  # global-only options are taken out

    assert set(config.domains) == {"example.com", "xn--bcher-kva.example", "discard.example"}
    assert config.domains["example.com"] == {"tls": "required", "tls_verify": "host"}
    assert config.domains["xn--bcher-kva.example"]["route"] == Route("smtp", host="::1", port=2525)

    assert set(config.bindings) == {"out1", "out2"}
    assert config.bindings["out1"].options == {"source_address": "192.0.2.10", "ehlo_hostname": "out1.example.net"}
    assert config.bindings["out1"].domains == {"example.org": {"tls_verify": "ca"}}
    assert config.bindings["out2"].options["source_address"] == "2001:db8::10"
    assert config.binding_groups["grp"].bindings == ("out1", "out2")
    assert config.binding_groups["grp"].options == {"max_connections": 5}
    assert config.binding_groups["grp"].domains == {"example.org": {"smtp_port": 2525}}
    assert config.group_of("out2") == "grp"
    assert config.group_of("default") is None

    assert config.spool == {"path": str(tmp_path / "spool"), "min_free": 64 * 1024 * 1024, "commit": "fsync"}
    assert config.queue == {"retry_schedule": (60, 300, 900, 1800, 3600), "max_queue_lifetime": 432000, "max_connections": 200,
                            "delay_warning_time": None, "soft_bounce": False}
    assert config.hooks == {name: IMPORTABLE_HOOK for name in configuration.HOOK_OPTIONS}

    mx, submission, plain = config.listeners
    assert mx.name == "mx"
    assert mx.tls == "starttls"
    assert (mx.tls_certificate, mx.tls_key, mx.tls_client_ca) == (pki.cert, pki.key, pki.ca)
    assert mx.tls_verify == "optional"
    assert mx.local_domains == frozenset({"example.com", "xn--bcher-kva.example"})
    assert ipaddress.ip_network("192.0.2.0/24") in mx.relay_networks
    assert mx.tls_verified_peer_can_relay is True
    assert (mx.max_message_size, mx.max_recipients, mx.idle_timeout, mx.data_timeout) == (10485760, 100, 60, 120)
    assert submission.tls == "implicit"
    assert submission.tls_certificate == "auto"
    assert plain.name == "listener2"  # unnamed listeners are named by position
    assert plain.tls == "no"

    assert config.dns["mx"] == {"example.test": ("mx1.example.test", "mx2.example.test")}
    assert config.dns["hosts"] == {"mx1.example.test": ("127.0.0.1",)}
    assert config.dns["tlsa"]["_25._tcp.mx1.example.test"] == ("3 1 1 0f3a",)

    assert config.binding_rules == (
        BindingRule(binding="out2", listener="submission"),
        BindingRule(binding="out1", sender_domain=frozenset({"example.net"}), recipient_domain=frozenset({"example.org"})),
    )


def test_empty_file_gets_defaults(tmp_path: Path) -> None:
    """An empty file is valid: no listeners, and spool and queue take their built-in defaults."""
    config = load(write(tmp_path, ""))
    assert config.listeners == ()
    assert config.spool == {k: o.default for k, o in SPOOL_OPTIONS.items()}
    assert config.queue == {k: o.default for k, o in QUEUE_OPTIONS.items()}
    assert config.hostname is None
    assert config.state_dir == configuration.GLOBAL_ONLY_OPTIONS["state_dir"].default
    assert config.binding_rules == ()


def test_listener_defaults(pki: Pki, tmp_path: Path) -> None:
    """A listener gets its documented defaults, including a TLS floor of 1.2."""
    path = write(
        tmp_path,
        f"""
[[listener]]
endpoint = "tcp:25"
tls_certificate = {q(pki.cert)}
tls_key = {q(pki.key)}
""",
    )
    (listener,) = load(path).listeners
    for name, option in LISTENER_OPTIONS.items():
        if name not in ("endpoint", "tls_certificate", "tls_key", "name"):
            assert getattr(listener, name) == option.default, name
    assert listener.tls == "starttls"
    assert listener.tls_protocols == frozenset({"TLSv1.2", "TLSv1.3"})


def test_enum_values_are_case_insensitive(tmp_path: Path) -> None:
    """Enum words are accepted in any case and stored lower-case."""
    config = load(write(tmp_path, '[global]\ntls = "Required"\ntls_verify = "HOST"\n'))
    assert config.global_options["tls"] == "required"
    assert config.global_options["tls_verify"] == "host"


def test_certificate_none_unsets_inherited(pki: Pki, tmp_path: Path) -> None:
    """tls_certificate/tls_key = "none" in a domain unsets the client certificate set globally."""
    path = write(
        tmp_path,
        f"""
[global]
tls_certificate = {q(pki.cert)}
tls_key = {q(pki.key)}

[domain."example.com"]
tls_certificate = "none"
tls_key = "none"
""",
    )
    config = load(path)
    here = resolve(config, DOMAIN)
    assert here["tls_certificate"] == Resolved(None, 'domain."example.com"')
    assert here["tls_key"] == Resolved(None, 'domain."example.com"')
    elsewhere = resolve(config, "example.org")
    assert elsewhere["tls_certificate"] == Resolved(pki.cert, "global")


# -- resolve(): the seven levels ------------------------------------------------------

LEVELS = (
    f'binding."{BINDING}".domain."{DOMAIN}"',
    f'binding_group."{GROUP}".domain."{DOMAIN}"',
    f'binding."{BINDING}"',
    f'binding_group."{GROUP}"',
    f'domain."{DOMAIN}"',
    "global",
    "default",
)
# A distinct smtp_port per level, so the value proves which level won.
PORT_AT_LEVEL = {level: 2000 + index for index, level in enumerate(LEVELS[:-1])}
DEFAULT_PORT = DELIVERY_OPTIONS["smtp_port"].default


def config_with_levels(levels: set[str]) -> Config:
    """A config where exactly ``levels`` set smtp_port, with binding out1 in group grp."""

    def port(level: str) -> dict[str, Any]:
        """smtp_port for this level, if the level is one that sets it."""
        return {"smtp_port": PORT_AT_LEVEL[level]} if level in levels else {}

    raw = {
        "global": port("global"),
        "domain": {DOMAIN: port(LEVELS[4])},
        "binding": {BINDING: {**port(LEVELS[2]), "domain": {DOMAIN: port(LEVELS[0])}}},
        "binding_group": {
            GROUP: {"bindings": [BINDING], **port(LEVELS[3]), "domain": {DOMAIN: port(LEVELS[1])}},
        },
    }
    return from_dict(raw)


@pytest.mark.parametrize("winner", LEVELS)
def test_resolve_precedence_level(winner: str) -> None:
    """An option set at one level and every lower level (none higher) comes from that level,
    and resolve() reports that scope."""
    index = LEVELS.index(winner)
    config = config_with_levels(set(LEVELS[index:-1]))
    resolved = resolve(config, DOMAIN, BINDING)["smtp_port"]
    expected_value = PORT_AT_LEVEL.get(winner, DEFAULT_PORT)
    assert resolved == Resolved(expected_value, winner)


@pytest.mark.parametrize("only", LEVELS[:-1])
def test_resolve_single_level(only: str) -> None:
    """An option set at just one level is taken from it, whatever its rank."""
    resolved = resolve(config_with_levels({only}), DOMAIN, BINDING)["smtp_port"]
    assert resolved == Resolved(PORT_AT_LEVEL[only], only)


def test_resolve_full_order() -> None:
    """Removing the winning level each time walks the documented order exactly, down to the default."""
    levels = set(LEVELS[:-1])
    seen = []
    while True:
        resolved = resolve(config_with_levels(levels), DOMAIN, BINDING)["smtp_port"]
        seen.append(resolved.scope)
        if resolved.scope == "default":
            break
        levels.discard(resolved.scope)
    assert tuple(seen) == LEVELS


def test_resolve_returns_every_delivery_option() -> None:
    """resolve() answers for every delivery option, each with its built-in default when nothing is set."""
    resolved = resolve(from_dict({}), DOMAIN)
    assert set(resolved) == set(DELIVERY_OPTIONS)
    for name, option in DELIVERY_OPTIONS.items():
        assert resolved[name] == Resolved(option.default, "default"), name


def test_resolve_ignores_other_domains_and_bindings() -> None:
    """Scopes for another domain, another binding or another group never apply."""
    config = from_dict(
        {
            "domain": {"other.example": {"tls": "required"}},
            "binding": {
                BINDING: {"domain": {"other.example": {"tls_verify": "host"}}},
                "out2": {"smtp_port": 2525},
            },
            "binding_group": {"g2": {"bindings": ["out2"], "tls_verify": "ca"}},
        }
    )
    resolved = resolve(config, DOMAIN, BINDING)
    assert resolved["tls"] == Resolved("no", "default")
    assert resolved["tls_verify"] == Resolved("no", "default")
    assert resolved["smtp_port"] == Resolved(DEFAULT_PORT, "default")


def test_resolve_binding_without_group() -> None:
    """A binding in no group resolves straight from binding to domain scopes."""
    config = from_dict({"binding": {BINDING: {"tls": "required"}}, "domain": {DOMAIN: {"tls": "ifavailable"}}})
    assert resolve(config, DOMAIN, BINDING)["tls"] == Resolved("required", f'binding."{BINDING}"')
    assert resolve(config, DOMAIN, "default")["tls"] == Resolved("ifavailable", f'domain."{DOMAIN}"')


def test_resolve_default_binding_may_be_grouped() -> None:
    """The implicit binding 'default' may be listed in a group and then gets the group's options."""
    config = from_dict({"binding_group": {GROUP: {"bindings": ["default"], "tls": "required"}}})
    assert resolve(config, DOMAIN)["tls"] == Resolved("required", f'binding_group."{GROUP}"')


def test_resolve_mixes_scopes_per_option() -> None:
    """Each option is resolved on its own: one message can take options from several scopes."""
    config = from_dict(
        {
            "global": {"tls": "ifavailable", "tls_verify": "optional"},
            "domain": {DOMAIN: {"tls_verify": "host"}},
            "binding": {BINDING: {"source_address": "192.0.2.10"}},
        }
    )
    resolved = resolve(config, DOMAIN, BINDING)
    assert resolved["tls"] == Resolved("ifavailable", "global")
    assert resolved["tls_verify"] == Resolved("host", f'domain."{DOMAIN}"')
    assert resolved["source_address"] == Resolved("192.0.2.10", f'binding."{BINDING}"')


# -- domain names are normalised -----------------------------------------------------


@pytest.mark.parametrize("written", ["EXAMPLE.com", "example.com.", "Example.Com."])
@pytest.mark.parametrize("asked", ["example.com", "EXAMPLE.COM", "example.com."])
def test_domain_keys_normalised_case_and_dot(written: str, asked: str) -> None:
    """Domain table keys and the domain asked about compare without case or trailing dot."""
    config = from_dict({"domain": {written: {"tls": "required"}}})
    assert set(config.domains) == {DOMAIN}
    assert resolve(config, asked)["tls"] == Resolved("required", f'domain."{DOMAIN}"')


@pytest.mark.parametrize("written", ["bücher.example", "BÜCHER.example.", "xn--bcher-kva.example"])
@pytest.mark.parametrize("asked", ["bücher.example", "xn--bcher-kva.example", "Bücher.Example"])
def test_domain_keys_normalised_idna(written: str, asked: str) -> None:
    """U-label and A-label spellings of a domain are the same scope, keyed by the A-label."""
    config = from_dict(
        {
            "domain": {written: {"tls": "required"}},
            "binding": {BINDING: {"domain": {written: {"tls_verify": "ca"}}}},
        }
    )
    assert set(config.domains) == {"xn--bcher-kva.example"}
    resolved = resolve(config, asked, BINDING)
    assert resolved["tls"] == Resolved("required", 'domain."xn--bcher-kva.example"')
    assert resolved["tls_verify"] == Resolved("ca", f'binding."{BINDING}".domain."xn--bcher-kva.example"')


def test_same_domain_written_twice_is_an_error(tmp_path: Path) -> None:
    """Two domain tables that normalise to one domain are reported, not silently merged or dropped."""
    path = write(tmp_path, '[domain."example.com"]\ntls = "required"\n[domain."EXAMPLE.com."]\ntls = "no"\n')
    problem = only_problem(path)
    assert_names(problem, path, 'domain."EXAMPLE.com."', None)
    assert "example.com" in problem.why


def test_invalid_domain_key(tmp_path: Path) -> None:
    """A domain table whose name is not a domain is a problem naming that table."""
    path = write(tmp_path, '[domain."exa mple.com"]\ntls = "required"\n')
    assert_names(only_problem(path), path, 'domain."exa mple.com"', None)


# -- errors: each names file, table and key ----------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file."""
    path = str(tmp_path / "nope.toml")
    problem = only_problem(path)
    assert problem == Problem(path, "", None, "file not found")
    assert str(problem) == f"{path}: (top level): file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A path that cannot be read as a file is a ConfigError naming it, not a traceback."""
    path = str(tmp_path)
    problem = only_problem(path)
    assert problem.file == path
    assert problem.why.startswith("cannot read")


def test_invalid_toml(tmp_path: Path) -> None:
    """A syntax error is reported with the file and TOML's own description."""
    path = write(tmp_path, '[global]\ntls = "no\n')
    problem = only_problem(path)
    assert problem.file == path
    assert problem.why.startswith("not valid TOML")
    assert "line 2" in problem.why


def test_unknown_top_level_table(tmp_path: Path) -> None:
    """A misspelt top-level table is reported by name."""
    path = write(tmp_path, '[globl]\ntls = "no"\n')
    problem = only_problem(path)
    assert_names(problem, path, "globl", None)
    assert problem.why == "unknown table"


@pytest.mark.parametrize(
    ("text", "table", "key"),
    [
        ('[global]\ntls_verfy = "ca"\n', "global", "tls_verfy"),
        ('[domain."example.com"]\nhostname = "x"\n', 'domain."example.com"', "hostname"),
        ('[binding."out1"]\nbindings = ["x"]\n', 'binding."out1"', "bindings"),
        ('[binding."out1".domain."example.com"]\nsmtp_prot = 1\n', 'binding."out1".domain."example.com"', "smtp_prot"),
        ('[spool]\npaht = "/x"\n', "spool", "paht"),
        ('[queue]\nretries = 3\n', "queue", "retries"),
        ('[hooks]\non_verify = "json:dumps"\n', "hooks", "on_verify"),
        ('[[listener]]\nendpoint = "tcp:25"\ntls = "no"\nport = 25\n', "listener.0", "port"),
        ('[dns]\nsrv = {}\n', "dns", "srv"),
        ('[[binding_rule]]\nbinding = "default"\nsender = ["a.example"]\n', "binding_rule.0", "sender"),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, table: str, key: str) -> None:
    """An unknown key in any table is a problem naming the file, that table and the key."""
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert_names(problem, path, table, key)
    assert "unknown" in problem.why


@pytest.mark.parametrize(
    ("text", "table", "key", "why"),
    [
        ('[global]\nsmtp_port = "25"\n', "global", "smtp_port", "must be an integer (got '25')"),
        ("[global]\nsmtp_port = true\n", "global", "smtp_port", "must be an integer (got True)"),
        ("[global]\nsmtp_port = 70000\n", "global", "smtp_port", "must be at least 1 and at most 65535 (got 70000)"),
        ('[global]\ntls_ifavailable_fallback = "yes"\n', "global", "tls_ifavailable_fallback", "must be true or false (got 'yes')"),
        ("[global]\ntls = 1\n", "global", "tls", "must be one of no, ifavailable, required (got 1)"),
        ('[global]\nhostname = ""\n', "global", "hostname", "must be a non-empty string (got '')"),
        ('[binding."b"]\nsource_address = "not-an-ip"\n', 'binding."b"', "source_address", "'not-an-ip' is not an IP address"),
        ("[queue]\nretry_schedule = []\n", "queue", "retry_schedule", "must be a non-empty list of seconds"),
        ("[queue]\nmax_queue_lifetime = 5\n", "queue", "max_queue_lifetime", "must be at least 60 (got 5)"),
        ('[[listener]]\nendpoint = "tcp:25"\ntls = "no"\nrelay_networks = "127.0.0.1"\n', "listener.0", "relay_networks", "must be a list of non-empty strings (got '127.0.0.1')"),
        ('[[listener]]\nendpoint = "tcp:25"\ntls = "no"\nrelay_networks = ["10.0.0.0/33"]\n', "listener.0", "relay_networks", "'10.0.0.0/33' is not an IP network"),
        ('[dns.mx]\n"example.test" = "mx.example.test"\n', "dns.mx", "example.test", "must be a list of non-empty strings (got 'mx.example.test')"),
    ],
)
def test_wrong_type_or_value(tmp_path: Path, text: str, table: str, key: str, why: str) -> None:
    """A value of the wrong type or out of range is a problem naming file, table and key, and what was expected."""
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert_names(problem, path, table, key)
    assert problem.why == why


def test_table_that_is_not_a_table(tmp_path: Path) -> None:
    """A scope given as a plain value instead of a table is reported."""
    path = write(tmp_path, 'global = "x"\n')
    problem = only_problem(path)
    assert_names(problem, path, "global", None)
    assert problem.why == "must be a table"


@pytest.mark.parametrize(
    ("table_header", "table"),
    [
        ("[global]", "global"),
        ('[domain."example.com"]', 'domain."example.com"'),
        ('[binding."out1"]', 'binding."out1"'),
        ('[binding_group."g"]', 'binding_group."g"'),
        ('[binding_group."g".domain."example.com"]', 'binding_group."g".domain."example.com"'),
    ],
)
def test_bad_enum_tls_verify(tmp_path: Path, table_header: str, table: str) -> None:
    """tls_verify = "maybe" is rejected in every scope, listing the four valid words."""
    path = write(tmp_path, f'{table_header}\ntls_verify = "maybe"\n')
    problem = only_problem(path)
    assert_names(problem, path, table, "tls_verify")
    assert problem.why == "must be one of no, ca, host, optional (got 'maybe')"


def test_bad_listener_enums(tmp_path: Path) -> None:
    """Listener tls and tls_verify take their own words: 'ifavailable' is not a listener tls value."""
    path = write(tmp_path, '[[listener]]\nendpoint = "tcp:25"\ntls = "ifavailable"\ntls_verify = "maybe"\n')
    problems = problems_of(path)
    keys = {(p.table, p.key) for p in problems}
    assert ("listener.0", "tls") in keys
    assert ("listener.0", "tls_verify") in keys
    tls_problem = next(p for p in problems if p.key == "tls")
    assert tls_problem.why == "must be one of no, starttls, required, implicit (got 'ifavailable')"


@pytest.mark.parametrize(
    "route",
    ["smtp:", "smtp:host:99999", "maildir:", "mx:foo", "lmtp:/var/run/sock", "smtp:[::1", "lmtp:dovecot.example",
     "lmtp:unix:"],
)
def test_bad_route(tmp_path: Path, route: str) -> None:
    """A route that does not parse is a problem naming the domain table and the route key."""
    path = write(tmp_path, f'[domain."example.com"]\nroute = "{route}"\n')
    problem = only_problem(path)
    assert_names(problem, path, 'domain."example.com"', "route")
    assert route in problem.why or "needs" in problem.why


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("tls_protocols", '"-ALL"', "allows no protocol version"),
        ("tls_protocols", '"+ALL:-TLSv9"', "unknown protocol 'TLSv9'"),
        ("tls_protocols", '"+SSLv2"', "unknown protocol 'SSLv2'"),
        ("tls_protocols", '""', "must be a non-empty string"),
        ("tls_groups", '"X25519:secp256r1"', "must be a list of non-empty strings"),
        ("tls_groups", '["X25519:secp256r1"]', "is not a group name"),
        ("tls_groups", "[]", "at least one key-exchange group"),
    ],
)
def test_bad_protocols_and_groups(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    """A tls_protocols string that names an unknown protocol or allows nothing, a tls_groups that is
    not a list of names: a problem naming the key."""
    path = write(tmp_path, f"[global]\n{key} = {value}\n")
    problem = only_problem(path)
    assert_names(problem, path, "global", key)
    assert fragment in problem.why


def test_missing_certificate_file_global(tmp_path: Path) -> None:
    """A client certificate path that does not exist is a problem naming tls_certificate."""
    missing = str(tmp_path / "missing.pem")
    path = write(tmp_path, f"[global]\ntls_certificate = {q(missing)}\ntls_key = {q(missing)}\n")
    problems = problems_of(path)
    assert {(p.table, p.key) for p in problems} == {("global", "tls_certificate"), ("global", "tls_key")}
    for problem in problems:
        assert_names(problem, path, "global", problem.key)
        assert problem.why == f"file {missing!r} does not exist"


def test_missing_tls_ca(tmp_path: Path) -> None:
    """A tls_ca that is neither a file nor a directory is a problem naming tls_ca."""
    missing = str(tmp_path / "ca-missing")
    path = write(tmp_path, f'[domain."example.com"]\ntls_ca = {q(missing)}\n')
    problem = only_problem(path)
    assert_names(problem, path, 'domain."example.com"', "tls_ca")
    assert missing in problem.why


def test_tls_ca_may_be_a_directory(tmp_path: Path) -> None:
    """tls_ca accepts a directory of CA certificates."""
    config = load(write(tmp_path, f"[global]\ntls_ca = {q(str(tmp_path))}\n"))
    assert config.global_options["tls_ca"] == str(tmp_path)


def test_missing_listener_certificate(pki: Pki, tmp_path: Path) -> None:
    """A listener certificate path that does not exist is one problem naming the listener and tls_certificate."""
    missing = str(tmp_path / "missing.pem")
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(missing)}\ntls_key = {q(pki.key)}\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_certificate")
    assert missing in problem.why


def test_missing_listener_key(pki: Pki, tmp_path: Path) -> None:
    """A listener key path that does not exist is exactly one problem, naming tls_key and the path."""
    missing = str(tmp_path / "missing.key")
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(pki.cert)}\ntls_key = {q(missing)}\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_key")
    assert problem.why == f"file {missing!r} does not exist"


def test_garbage_key_listener(pki: Pki, tmp_path: Path) -> None:
    """A key file that is not a key is a problem naming the listener's tls_key."""
    path = write(
        tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(pki.cert)}\ntls_key = {q(pki.garbage_key)}\n'
    )
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_key")
    assert problem.why.startswith(f"cannot load key {pki.garbage_key!r}")


def test_garbage_key_global(pki: Pki, tmp_path: Path) -> None:
    """An unloadable client key in a delivery scope is a problem naming that scope's tls_key."""
    path = write(tmp_path, f"[global]\ntls_certificate = {q(pki.cert)}\ntls_key = {q(pki.garbage_key)}\n")
    problem = only_problem(path)
    assert_names(problem, path, "global", "tls_key")
    assert problem.why.startswith("cannot load key")


def test_garbage_certificate(pki: Pki, tmp_path: Path) -> None:
    """A certificate file that is not a certificate is a problem naming tls_certificate."""
    path = write(
        tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(pki.garbage_key)}\ntls_key = {q(pki.key)}\n'
    )
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_certificate")
    assert problem.why.startswith("cannot load certificate")


def test_keypair_mismatch_listener(pki: Pki, tmp_path: Path) -> None:
    """A listener certificate with another certificate's key is a problem naming tls_key and both files."""
    path = write(
        tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(pki.cert)}\ntls_key = {q(pki.other_key)}\n'
    )
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_key")
    assert_mismatch(problem, pki)


@pytest.mark.parametrize(
    ("header", "table"),
    [
        ("[global]", "global"),
        ('[domain."example.com"]', 'domain."example.com"'),
        ('[binding."out1"]', 'binding."out1"'),
        ('[binding."out1".domain."example.com"]', 'binding."out1".domain."example.com"'),
        ('[binding_group."g"]', 'binding_group."g"'),
        ('[binding_group."g".domain."example.com"]', 'binding_group."g".domain."example.com"'),
    ],
)
def test_keypair_mismatch_every_scope(pki: Pki, tmp_path: Path, header: str, table: str) -> None:
    """A client certificate with the wrong key is caught in every delivery scope, naming it and tls_key."""
    path = write(tmp_path, f"{header}\ntls_certificate = {q(pki.cert)}\ntls_key = {q(pki.other_key)}\n")
    problem = only_problem(path)
    assert_names(problem, path, table, "tls_key")
    assert_mismatch(problem, pki)


@pytest.mark.parametrize(
    ("header", "table"),
    [("[global]", "global"), ('[binding."out1"]', 'binding."out1"'), ('[binding_group."g".domain."x.example"]', 'binding_group."g".domain."x.example"')],
)
def test_certificate_without_key(pki: Pki, tmp_path: Path, header: str, table: str) -> None:
    """A client certificate set in a scope without its key there is a problem naming tls_key."""
    path = write(tmp_path, f"{header}\ntls_certificate = {q(pki.cert)}\n")
    problem = only_problem(path)
    assert_names(problem, path, table, "tls_key")


def test_matching_keypair_loads(pki: Pki, tmp_path: Path) -> None:
    """A certificate with its own key loads in a binding scope."""
    config = load(write(tmp_path, f'[binding."out1"]\ntls_certificate = {q(pki.cert)}\ntls_key = {q(pki.key)}\n'))
    assert config.bindings["out1"].options["tls_certificate"] == pki.cert


@pytest.mark.parametrize("tls", ["starttls", "required", "implicit"])
def test_listener_tls_needs_certificate(tmp_path: Path, tls: str) -> None:
    """A listener offering TLS without tls_certificate is a problem naming the listener and tls_certificate."""
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls = "{tls}"\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_certificate")
    assert f"tls = {tls!r}" in problem.why


def test_listener_certificate_needs_key(pki: Pki, tmp_path: Path) -> None:
    """A listener certificate file without tls_key is a problem naming tls_key."""
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(pki.cert)}\n')
    assert_names(only_problem(path), path, "listener.0", "tls_key")


def test_listener_needs_endpoint(tmp_path: Path) -> None:
    """A listener without an endpoint is a problem naming endpoint."""
    path = write(tmp_path, '[[listener]]\ntls = "no"\n')
    assert_names(only_problem(path), path, "listener.0", "endpoint")


def test_listener_names_unique(tmp_path: Path) -> None:
    """Two listeners with the same name are a problem naming the second one's name key."""
    path = write(tmp_path, '[[listener]]\nname = "a"\nendpoint = "tcp:25"\ntls = "no"\n' * 2)
    assert_names(only_problem(path), path, "listener.1", "name")


@pytest.mark.parametrize("mode", ["ca", "host", "optional"])
def test_listener_verify_needs_client_ca(tmp_path: Path, mode: str) -> None:
    """A listener asking for client certificates without tls_client_ca is a problem naming tls_client_ca."""
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = "auto"\ntls_verify = "{mode}"\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_client_ca")
    assert f"tls_verify = {mode!r}" in problem.why


def test_listener_verify_needs_tls(pki: Pki, tmp_path: Path) -> None:
    """Client certificate verification on a listener without TLS is a problem naming tls_verify."""
    path = write(
        tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls = "no"\ntls_verify = "ca"\ntls_client_ca = {q(pki.ca)}\n'
    )
    assert_names(only_problem(path), path, "listener.0", "tls_verify")


def test_listener_must_be_array(tmp_path: Path) -> None:
    """[listener] written as a single table instead of [[listener]] is reported."""
    path = write(tmp_path, '[listener]\nendpoint = "tcp:25"\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener", None)
    assert "[[listener]]" in problem.why


def test_binding_in_two_groups(tmp_path: Path) -> None:
    """A binding listed in two groups is a problem naming the second group's bindings key."""
    path = write(
        tmp_path,
        '[binding."out1"]\n[binding_group."a"]\nbindings = ["out1"]\n[binding_group."b"]\nbindings = ["out1"]\n',
    )
    problem = only_problem(path)
    assert_names(problem, path, 'binding_group."b"', "bindings")
    assert problem.why == "binding 'out1' is already in group 'a'"


def test_group_lists_undefined_binding(tmp_path: Path) -> None:
    """A group listing a binding that is not defined is a problem naming its bindings key."""
    path = write(tmp_path, '[binding_group."a"]\nbindings = ["ghost"]\n')
    problem = only_problem(path)
    assert_names(problem, path, 'binding_group."a"', "bindings")
    assert problem.why == "binding 'ghost' is not defined"


def test_binding_rule_undefined_binding(tmp_path: Path) -> None:
    """A binding_rule naming an undefined binding is a problem naming that rule and its binding key."""
    path = write(tmp_path, '[[binding_rule]]\nlistener = "mx"\nbinding = "ghost"\n')
    problem = only_problem(path)
    assert_names(problem, path, "binding_rule.0", "binding")
    assert problem.why == "binding 'ghost' is not defined"


def test_binding_rule_needs_binding(tmp_path: Path) -> None:
    """A binding_rule without a binding is a problem naming its binding key."""
    path = write(tmp_path, '[[binding_rule]]\nlistener = "mx"\n')
    assert_names(only_problem(path), path, "binding_rule.0", "binding")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_for_tlsmta_tests:hook", "cannot import 'no_such_module_for_tlsmta_tests'"),
        ("json:no_such_function", "has no 'no_such_function'"),
        ("json:__doc__", "is not callable"),
        ("json.dumps", "must look like 'package.module:function'"),
    ],
)
def test_hook_that_cannot_be_loaded(tmp_path: Path, spec: str, fragment: str) -> None:
    """A hook that cannot be imported or called is a problem naming [hooks] and the hook's key."""
    path = write(tmp_path, f'[hooks]\noutbound_tls_verify_callback = "{spec}"\n')
    problem = only_problem(path)
    assert_names(problem, path, "hooks", "outbound_tls_verify_callback")
    assert fragment in problem.why


def test_unknown_dns_table(tmp_path: Path) -> None:
    """[dns] accepts only the pinned answer kinds; another one is reported by name."""
    path = write(tmp_path, '[dns.srv]\n"_x._tcp.example" = ["0 0 25 mx.example"]\n')
    problem = only_problem(path)
    assert_names(problem, path, "dns", "srv")


def test_dns_service_owner_names(tmp_path: Path) -> None:
    """Pinned TXT and TLSA owner names keep their service labels (_mta-sts, _25._tcp) and are normalised."""
    path = write(
        tmp_path,
        '[dns.txt]\n"_MTA-STS.Example.Test." = ["v=STSv1; id=1"]\n'
        '[dns.tlsa]\n"_25._TCP.bücher.example" = ["3 1 1 00"]\n',
    )
    config = load(path)
    assert config.dns["txt"] == {"_mta-sts.example.test": ("v=STSv1; id=1",)}
    assert config.dns["tlsa"] == {"_25._tcp.xn--bcher-kva.example": ("3 1 1 00",)}


def test_dns_nameservers(tmp_path: Path) -> None:
    """[dns] nameservers: IPv4 and IPv6, port 53 unless given; beside the pinned tables."""
    path = write(tmp_path, '[dns]\nnameservers = ["127.0.0.1:5353", "::1", "[::1]:54", "192.0.2.53"]\n'
                           '[dns.mx]\n"example.test" = ["mx.example.test"]\n')
    config = load(path)
    assert config.dns_nameservers == (("127.0.0.1", 5353), ("::1", 53), ("::1", 54), ("192.0.2.53", 53))
    assert config.dns == {"mx": {"example.test": ("mx.example.test",)}}
    assert load(write(tmp_path, "", "empty.toml")).dns_nameservers == ()


@pytest.mark.parametrize("value", ['["ns.example.test"]', '["127.0.0.1:0"]', '["127.0.0.1:"]', '["[::1]x"]', '["127.0.0.1:99999"]', '"127.0.0.1"', "[]"])
def test_dns_bad_nameservers(tmp_path: Path, value: str) -> None:
    """A nameserver that is not an IP address (with an optional port) names dns / nameservers."""
    path = write(tmp_path, f"[dns]\nnameservers = {value}\n")
    assert_names(only_problem(path), path, "dns", "nameservers")


@pytest.mark.parametrize("name", ["_2 5._tcp.mx.example", "_25._tcp", "mx..example", "_25.__.mx.example"])
def test_dns_bad_owner_name(tmp_path: Path, name: str) -> None:
    """A pinned DNS name that is not a DNS name is a problem naming the dns table and the name."""
    path = write(tmp_path, f'[dns.tlsa]\n"{name}" = ["3 1 1 00"]\n')
    assert_names(only_problem(path), path, "dns.tlsa", name)


def test_listener_missing_certificate_and_key(tmp_path: Path) -> None:
    """A listener whose certificate and key files both do not exist gets one problem for each, in file order."""
    cert, key = str(tmp_path / "no-cert.pem"), str(tmp_path / "no-key.pem")
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {q(cert)}\ntls_key = {q(key)}\n')
    problems = problems_of(path)
    assert [(p.table, p.key) for p in problems] == [("listener.0", "tls_certificate"), ("listener.0", "tls_key")]
    assert cert in problems[0].why
    assert key in problems[1].why


def test_every_problem_reported_at_once(pki: Pki, tmp_path: Path) -> None:
    """Several problems across tables are all reported in one ConfigError, each naming its place."""
    path = write(
        tmp_path,
        f"""
[globl]

[global]
tls_verify = "maybe"
smtp_port = "25"

[domain."example.com"]
route = "smtp:"
bogus = 1

[[listener]]
endpoint = "tcp:25"
tls = "starttls"

[[listener]]
endpoint = "tcp:26"
tls_certificate = {q(pki.cert)}
tls_key = {q(pki.other_key)}

[hooks]
outbound_tls_parameters = "no_such_module_for_tlsmta_tests:f"

[[binding_rule]]
binding = "ghost"
""",
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    places = [(p.table, p.key) for p in info.value.problems]
    assert sorted(places, key=str) == sorted(
        [
            ("globl", None),
            ("global", "tls_verify"),
            ("global", "smtp_port"),
            ('domain."example.com"', "route"),
            ('domain."example.com"', "bogus"),
            ("listener.0", "tls_certificate"),
            ("listener.1", "tls_key"),
            ("hooks", "outbound_tls_parameters"),
            ("binding_rule.0", "binding"),
        ],
        key=str,
    )
    assert all(p.file == path for p in info.value.problems)
    # The exception's text is every problem, one per line.
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]


def test_from_dict_default_path() -> None:
    """from_dict without a path labels problems with <config>."""
    with pytest.raises(ConfigError) as info:
        from_dict({"global": {"tls": "sometimes"}})
    assert str(info.value.problems[0]).startswith("<config>: [global] tls: ")


# -- parse_protocols ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("+ALL:-SSLv3:-TLSv1.0:-TLSv1.1", {"TLSv1.2", "TLSv1.3"}),
        ("+ALL", set(TLS_VERSIONS)),
        ("ALL", set(TLS_VERSIONS)),
        ("TLSv1.3", {"TLSv1.3"}),
        ("+TLSv1.2:+TLSv1.3", {"TLSv1.2", "TLSv1.3"}),
        ("+ALL:-TLSv1", {"TLSv1.1", "TLSv1.2", "TLSv1.3"}),
        ("-ALL:+TLSv1.2", {"TLSv1.2"}),
        ("+TLSv1.2:-ALL:+TLSv1.3", {"TLSv1.3"}),  # terms apply left to right
        ("+ALL:-TLSv1.3:+TLSv1.3", set(TLS_VERSIONS)),
        (" +ALL : -TLSv1.0 ", {"TLSv1.1", "TLSv1.2", "TLSv1.3"}),
        ("+ALL::-TLSv1.0", {"TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    ],
)
def test_parse_protocols(spec: str, expected: set[str]) -> None:
    """Momentum-style protocol strings give the set of allowed TLS versions."""
    assert parse_protocols(spec) == frozenset(expected)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("-ALL", "allows no protocol version"),
        ("+SSLv3", "allows no protocol version"),
        ("+ALL:-ALL", "allows no protocol version"),
        ("", "allows no protocol version"),
        ("+TLSv1.4", "unknown protocol 'TLSv1.4'"),
        ("+ALL:-tlsv1.0", "unknown protocol 'tlsv1.0'"),
        ("+ALL:-SSLv2", "unknown protocol 'SSLv2'"),
        ("+", "unknown protocol ''"),
        ("+ALL,-TLSv1.0", "unknown protocol 'ALL,-TLSv1.0'"),
    ],
)
def test_parse_protocols_errors(spec: str, fragment: str) -> None:
    """Unknown protocol names and strings that allow nothing are errors that quote the string."""
    with pytest.raises(ValueError) as info:
        parse_protocols(spec)
    assert fragment in str(info.value)


def test_default_protocols() -> None:
    """Outbound allows every version by default; listeners default to TLS 1.2 and up."""
    assert DELIVERY_OPTIONS["tls_protocols"].default == frozenset(TLS_VERSIONS)
    assert LISTENER_OPTIONS["tls_protocols"].default == frozenset({"TLSv1.2", "TLSv1.3"})


# -- select_binding ----------------------------------------------------------------------


def rules_config(rules: list[Mapping[str, Any]]) -> Config:
    """A config with bindings a, b, c and the given binding rules."""
    return from_dict({"binding": {"a": {}, "b": {}, "c": {}}, "binding_rule": list(rules)})


def test_select_binding_default_without_rules() -> None:
    """With no rules every message leaves through 'default'."""
    assert select_binding(rules_config([]), "mx", "example.net", "example.com") == "default"


def test_select_binding_by_listener() -> None:
    """A listener rule matches mail received on that listener only."""
    config = rules_config([{"listener": "submission", "binding": "a"}])
    assert select_binding(config, listener="submission") == "a"
    assert select_binding(config, listener="mx") == "default"
    assert select_binding(config) == "default"


def test_select_binding_by_sender_domain() -> None:
    """A sender_domain rule matches any of its listed domains."""
    config = rules_config([{"sender_domain": ["Sender.Example", "bücher.example"], "binding": "b"}])
    assert select_binding(config, sender_domain="sender.example") == "b"
    assert select_binding(config, sender_domain="xn--bcher-kva.example") == "b"
    assert select_binding(config, sender_domain="other.example") == "default"
    assert select_binding(config, recipient_domain="sender.example") == "default"


def test_select_binding_by_recipient_domain() -> None:
    """A recipient_domain rule matches mail for its domains."""
    config = rules_config([{"recipient_domain": ["example.org"], "binding": "c"}])
    assert select_binding(config, recipient_domain="example.org") == "c"
    assert select_binding(config, recipient_domain="example.com") == "default"


def test_select_binding_all_conditions_must_match() -> None:
    """A rule with several conditions matches only when every one of them does."""
    config = rules_config(
        [{"listener": "mx", "sender_domain": ["s.example"], "recipient_domain": ["r.example"], "binding": "a"}]
    )
    assert select_binding(config, "mx", "s.example", "r.example") == "a"
    assert select_binding(config, "sub", "s.example", "r.example") == "default"
    assert select_binding(config, "mx", "x.example", "r.example") == "default"
    assert select_binding(config, "mx", "s.example", "x.example") == "default"


def test_select_binding_first_match_wins() -> None:
    """Rules are tried in file order and the first that matches decides."""
    config = rules_config(
        [
            {"recipient_domain": ["example.org"], "binding": "a"},
            {"listener": "mx", "binding": "b"},
            {"binding": "c"},  # no condition: matches everything left
        ]
    )
    assert select_binding(config, "mx", "s.example", "example.org") == "a"
    assert select_binding(config, "mx", "s.example", "example.com") == "b"
    assert select_binding(config, "sub", "s.example", "example.com") == "c"


def test_select_binding_rule_may_name_default() -> None:
    """A rule may send mail explicitly through 'default', ahead of later rules."""
    config = rules_config([{"listener": "mx", "binding": "default"}, {"binding": "a"}])
    assert select_binding(config, listener="mx") == "default"
    assert select_binding(config, listener="sub") == "a"


# -- routes through config ---------------------------------------------------------------


def test_route_option_parsed(tmp_path: Path) -> None:
    """route values are parsed into Route objects; a relative maildir becomes absolute."""
    config = load(
        write(
            tmp_path,
            '[global]\nroute = "maildir:mail"\n[domain."example.com"]\nroute = "smtp:relay.example.net:587"\n',
        )
    )
    global_route = config.global_options["route"]
    assert global_route.kind == "maildir"
    assert os.path.isabs(global_route.path)
    assert resolve(config, DOMAIN)["route"] == Resolved(parse_route("smtp:relay.example.net:587"), 'domain."example.com"')
    assert resolve(config, "example.org")["route"] == Resolved(global_route, "global")


@pytest.mark.parametrize(
    ("line", "key", "why"),
    [
        ('tls_ciphers = "ECDHE-RSA-AES256-GMC-SHA384"', "tls_ciphers", "matches no cipher OpenSSL knows"),
        ('tlsv13_ciphersuites = "TLS_AES_256_GMC_SHA384"', "tlsv13_ciphersuites", "matches no TLS 1.3 ciphersuite"),
    ],
)
def test_openssl_strings_that_match_nothing_are_refused(tmp_path: Path, line: str, key: str, why: str) -> None:
    """A cipher typo is a config error, not a TLS failure on every later session."""
    path = write(tmp_path, f'[domain."example.com"]\n{line}\n')
    problem = only_problem(path)
    assert_names(problem, path, 'domain."example.com"', key)
    assert why in problem.why


@pytest.mark.parametrize("table", ['domain."example.com"', "global", "listener"])
def test_unsupported_group_is_named_with_the_openssl_version(tmp_path: Path, table: str) -> None:
    """check-config names file, table and key, the group OpenSSL lacks, and which OpenSSL that is."""
    header = "[[listener]]\nendpoint = \"tcp:0\"\ntls = \"no\"" if table == "listener" else f"[{table}]"
    path = write(tmp_path, f'{header}\ntls_groups = ["X25519", "brainpoolP999r1"]\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener.0" if table == "listener" else table, "tls_groups")
    assert "'brainpoolP999r1' not supported by OpenSSL " in problem.why
    assert openssl_version() in problem.why and "'X25519'" not in problem.why


def test_groups_resolve_by_scope(tmp_path: Path) -> None:
    """tls_groups is a delivery option like the other tls ones: the nearest scope that sets it wins."""
    path = write(tmp_path, '[global]\ntls_groups = ["X25519MLKEM768", "X25519"]\n'
                           '[domain."example.com"]\ntls_groups = ["secp384r1"]\n')
    config = load(path)
    assert resolve(config, DOMAIN)["tls_groups"] == Resolved(("secp384r1",), 'domain."example.com"')
    assert resolve(config, "example.org")["tls_groups"] == Resolved(("X25519MLKEM768", "X25519"), "global")
    assert resolve(from_dict({}), DOMAIN)["tls_groups"] == Resolved(None, "default")  # tls.default_groups()


def test_ca_file_without_certificates_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("not a certificate\n")
    path = write(tmp_path, f'[global]\ntls_ca = "{empty}"\n')
    problem = only_problem(path)
    assert_names(problem, path, "global", "tls_ca")
    assert "holds no PEM certificate" in problem.why


def test_valid_openssl_strings_pass(tmp_path: Path) -> None:
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    path = write(
        tmp_path,
        f'[global]\ntls_ciphers = "ECDHE+AESGCM:!aNULL"\ntlsv13_ciphersuites = "TLS_AES_256_GCM_SHA384"\ntls_ca = "{ca}"\n',
    )
    assert load(path).global_options["tls_ciphers"] == "ECDHE+AESGCM:!aNULL"


def test_syntax_only_loader_leaves_the_machine_checks_to_preflight(tmp_path: Path, pki: Pki) -> None:
    """tlsmta.config checks syntax and data only; OpenSSL strings, key pairs and hooks are checked by
    tlsmta.app._preflight, with the same file/table/key problem lines."""
    path = write(tmp_path, f'[global]\ntls_ciphers = "NO-SUCH-CIPHER"\n'
                           f'tls_certificate = {q(pki.cert)}\ntls_key = {q(pki.other_key)}\n'
                           '[hooks]\noutbound_binding = "no_such_module_x:f"\n')
    config = configuration.load(path)  # syntax only: nothing wrong
    assert config.global_options["tls_ciphers"] == "NO-SUCH-CIPHER"
    problems = problems_of(path)
    assert [(p.table, p.key) for p in problems] == [
        ("global", "tls_ciphers"), ("hooks", "outbound_binding"), ("global", "tls_key")]


# -- several chains and SNI certificates on a listener -------------------------------------


@pytest.fixture
def two_types(tmp_path: Path) -> dict[str, str]:
    """RSA and ECDSA chains for mx.example, a second ECDSA one, and one for an IP address only."""
    ca = trustme.CA()
    leaves = {
        "rsa": ca.issue_cert("mx.example", key_type=trustme.KeyType.RSA),
        "ecdsa": ca.issue_cert("mx.example", key_type=trustme.KeyType.ECDSA),
        "ecdsa2": ca.issue_cert("mx.example", key_type=trustme.KeyType.ECDSA),
        "ip": ca.issue_cert("127.0.0.1"),
    }
    out = {}
    for name, leaf in leaves.items():
        out[name], out[name + "_key"] = str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key")
        leaf.cert_chain_pems[0].write_to_path(out[name])
        leaf.private_key_pem.write_to_path(out[name + "_key"])
    return out


def _tls_listener(certificates: list[str], keys: list[str], extra: str = "") -> str:
    return (f'[[listener]]\nendpoint = "tcp:25"\ntls_certificate = {certificates!r}\ntls_key = {keys!r}\n{extra}')


def test_listener_serves_one_chain_per_key_type(two_types: dict[str, str], tmp_path: Path) -> None:
    """tls_certificate and tls_key as lists pair up in order; the first pair stays tls_certificate/tls_key."""
    t = two_types
    config = load(write(tmp_path, _tls_listener([t["rsa"], t["ecdsa"]], [t["rsa_key"], t["ecdsa_key"]])))
    [listener] = config.listeners
    assert listener.tls_chains == ((t["rsa"], t["rsa_key"]), (t["ecdsa"], t["ecdsa_key"]))
    assert (listener.tls_certificate, listener.tls_key) == (t["rsa"], t["rsa_key"])


@pytest.mark.parametrize(
    "certificates, keys, key, why",
    [
        (["ecdsa", "ecdsa2"], ["ecdsa_key", "ecdsa2_key"], "tls_certificate", "both ecdsa certificates"),
        (["rsa", "ecdsa"], ["rsa_key"], "tls_key", "1 key file(s) for 2 certificate file(s)"),
        (["rsa", "ecdsa"], ["ecdsa_key", "rsa_key"], "tls_key", "does not match certificate"),
    ],
)
def test_listener_chain_problems_name_the_key(
    two_types: dict[str, str], tmp_path: Path, certificates: list[str], keys: list[str], key: str, why: str
) -> None:
    """Two chains of one key type (OpenSSL would keep only the last), a missing key, keys out of order."""
    path = write(tmp_path, _tls_listener([two_types[c] for c in certificates], [two_types[k] for k in keys]))
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", key)
    assert why in problem.why


def test_sni_certificates_load(two_types: dict[str, str], tmp_path: Path) -> None:
    """tls_sni entries: a file or a list per entry, kept as chains in order."""
    t = two_types
    sni = (f'tls_sni = [{{ certificate = "{t["ecdsa"]}", key = "{t["ecdsa_key"]}" }},\n'
           f'  {{ certificate = ["{t["rsa"]}", "{t["ecdsa2"]}"], key = ["{t["rsa_key"]}", "{t["ecdsa2_key"]}"] }}]\n')
    [listener] = load(write(tmp_path, _tls_listener([t["rsa"]], [t["rsa_key"]], sni))).listeners
    assert listener.tls_sni == (((t["ecdsa"], t["ecdsa_key"]),), ((t["rsa"], t["rsa_key"]), (t["ecdsa2"], t["ecdsa2_key"])))


@pytest.mark.parametrize(
    "entry, why",
    [
        ('{ certificate = "CERT" }', "must be a table with exactly certificate and key"),
        ('{ certificate = "IP", key = "IP_KEY" }', "has no DNS subjectAltName for an SNI name to match"),
        ('{ certificate = "CERT", key = "/nonexistent.key" }', "file '/nonexistent.key' does not exist"),
    ],
)
def test_sni_problems_name_the_entry(two_types: dict[str, str], tmp_path: Path, entry: str, why: str) -> None:
    """A tls_sni entry that cannot be served: the problem names tls_sni and the entry."""
    t = two_types
    entry = entry.replace("IP_KEY", t["ip_key"]).replace("IP", t["ip"]).replace("CERT", t["rsa"])
    path = write(tmp_path, _tls_listener([t["rsa"]], [t["rsa_key"]], f"tls_sni = [{entry}]\n"))
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "tls_sni")
    assert problem.why.startswith("entry 1: ") and why in problem.why


def test_sni_needs_tls(two_types: dict[str, str], tmp_path: Path) -> None:
    """tls_sni on a listener without TLS is a problem, not silently ignored."""
    t = two_types
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:25"\ntls = "no"\n'
                           f'tls_sni = [{{ certificate = "{t["rsa"]}", key = "{t["rsa_key"]}" }}]\n')
    assert_names(only_problem(path), path, "listener.0", "tls_sni")


def test_client_certificates_one_per_key_type(two_types: dict[str, str], tmp_path: Path) -> None:
    """A delivery scope's tls_certificate/tls_key lists are kept in order; two ECDSA chains are a problem there too."""
    t = two_types
    table = f'[domain."partner.example"]\ntls_certificate = ["{t["rsa"]}", "{t["ecdsa"]}"]\n'
    config = load(write(tmp_path, table + f'tls_key = ["{t["rsa_key"]}", "{t["ecdsa_key"]}"]\n'))
    options = config.domains["partner.example"]
    assert (options["tls_certificate"], options["tls_key"]) == ((t["rsa"], t["ecdsa"]), (t["rsa_key"], t["ecdsa_key"]))
    path = write(tmp_path, f'[global]\ntls_certificate = ["{t["ecdsa"]}", "{t["ecdsa2"]}"]\n'
                           f'tls_key = ["{t["ecdsa_key"]}", "{t["ecdsa2_key"]}"]\n')
    problem = only_problem(path)
    assert_names(problem, path, "global", "tls_certificate")
    assert "both ecdsa certificates" in problem.why


def test_dane_takes_true_false_or_required(tmp_path: Path) -> None:
    """dane = "required" (any case) is a third value beside true and false; anything else names file, table and key."""
    config = load(write(tmp_path, '[global]\ndane = false\n[domain."example.com"]\ndane = "Required"\n'))
    assert config.global_options["dane"] is False
    assert resolve(config, "example.com")["dane"].value == "required"
    path = write(tmp_path, '[domain."example.com"]\ndane = "maybe"\n', name="bad.toml")
    problem = only_problem(path)
    assert_names(problem, path, 'domain."example.com"', "dane")
    assert problem.why == "must be true, false or \"required\" (got 'maybe')"


def test_tls_pins_take_hex_or_base64_and_name_a_bad_one(tmp_path: Path) -> None:
    """tls_pins: "sha256:" with 64 hex digits (colons allowed) or 44 base64 characters, kept as hex, duplicates
    dropped; a malformed pin is a check-config error naming file, table and key."""
    import base64
    import hashlib

    digest = hashlib.sha256(b"key").digest()
    hex_pin, b64_pin = f"sha256:{digest.hex().upper()}", f"sha256:{base64.b64encode(digest).decode()}"
    config = load(write(tmp_path, f'[domain."example.com"]\ntls_pins = ["{hex_pin}", "{b64_pin}"]\n'))
    assert resolve(config, "example.com")["tls_pins"].value == (digest.hex(),)
    assert resolve(config, "other.com")["tls_pins"].value == ()
    for bad in ('["md5:abcd"]', '["sha256:abcd"]', '"sha256:x"'):
        path = write(tmp_path, f'[domain."example.com"]\ntls_pins = {bad}\n', name="bad.toml")
        assert_names(only_problem(path), path, 'domain."example.com"', "tls_pins")


def test_relay_client_pins_need_tls_and_valid_pins(tmp_path: Path) -> None:
    """A listener's relay_client_pins: parsed like tls_pins; without TLS on the listener, or malformed, a
    problem naming the listener and the key."""
    path = write(tmp_path, '[[listener]]\nendpoint = "tcp:2525"\ntls = "no"\nrelay_client_pins = ["sha256:' + "ab" * 32 + '"]\n')
    problem = only_problem(path)
    assert problem.key == "relay_client_pins" and problem.why == "needs tls = 'starttls', 'required' or 'implicit'"
    path = write(tmp_path, '[[listener]]\nendpoint = "tcp:2525"\ntls = "no"\nrelay_client_pins = ["sha1:ab"]\n', name="bad.toml")
    problem = only_problem(path)
    assert problem.key == "relay_client_pins" and "is not a pin" in problem.why


@pytest.mark.parametrize("bad, why", [
    ('["inet:localhost:8891"]', "is not an IP address"),
    ('["inet:127.0.0.1"]', "needs a port"),
    ('["unix:relative.sock"]', "must be absolute"),
    ('["tcp:127.0.0.1:8891"]', "expected inet:HOST:PORT"),
    ('"inet:127.0.0.1:8891"', "must be a list"),
])
def test_milter_addresses_are_checked(tmp_path: Path, bad: str, why: str) -> None:
    """A listener's milters: inet:IP:PORT, inet6:[IP]:PORT or unix:/PATH; anything else is a problem
    naming the file, the listener and the key."""
    path = write(tmp_path, f'[[listener]]\nendpoint = "tcp:2525"\ntls = "no"\nmilters = {bad}\n')
    problem = only_problem(path)
    assert_names(problem, path, "listener.0", "milters")
    assert why in problem.why


def test_milter_options_load(tmp_path: Path) -> None:
    """The milter options reach the listener: addresses in order, default action, timeouts as seconds."""
    path = write(tmp_path, '[[listener]]\nendpoint = "tcp:2525"\ntls = "no"\n'
                 'milters = ["inet:127.0.0.1:11332", "inet6:[::1]:8891", "unix:/run/opendkim.sock"]\n'
                 'milter_default_action = "accept"\nmilter_command_timeout = "10s"\nmilter_content_timeout = "2m"\n')
    [listener] = load(path).listeners
    assert listener.milters == ("inet:127.0.0.1:11332", "inet6:[::1]:8891", "unix:/run/opendkim.sock")
    assert (listener.milter_default_action, listener.milter_connect_timeout) == ("accept", 30.0)
    assert (listener.milter_command_timeout, listener.milter_content_timeout) == (10.0, 120.0)
