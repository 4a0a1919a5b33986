"""The ``tlsmta`` command: check-config, policy, hash-password."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from tlsmta import config as configuration

EX_OK, EX_USAGE, EX_DATAERR, EX_CONFIG = 0, 64, 65, 78  # sysexits.h


def _load(path: str) -> configuration.Config | None:
    try:
        return configuration.load(path)
    except configuration.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EX_CONFIG
    print(f"{args.file}: ok ({len(config.listeners)} listener(s), {len(config.domains)} domain scope(s))")
    return EX_OK


def cmd_policy(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EX_CONFIG
    try:
        domain = configuration.normalize_domain(args.domain)
    except ValueError as e:
        print(f"tlsmta policy: {e}", file=sys.stderr)
        return EX_DATAERR
    if args.binding != "default" and args.binding not in config.bindings:
        print(f"tlsmta policy: binding {args.binding!r} is not defined in {args.file}", file=sys.stderr)
        return EX_DATAERR
    resolved = configuration.resolve(config, domain, args.binding)
    print(f"# effective outbound options for domain {domain} via binding {args.binding}")
    width = max(len(name) for name in resolved)
    for name, item in resolved.items():
        print(f"{name:<{width}} = {_show(item.value):<40} # from {item.scope}")
    return EX_OK


def _show(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, frozenset):
        return ":".join(sorted(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cmd_hash_password(args: argparse.Namespace) -> int:
    from tlsmta.auth import hash_password

    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
    if not password:
        print("tlsmta hash-password: empty password", file=sys.stderr)
        return EX_DATAERR
    print(f"{args.user}:{hash_password(password)}")
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsmta", description="tlsmta control commands")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("policy", help="effective outbound options for a domain, with their scopes")
    p.add_argument("file")
    p.add_argument("domain")
    p.add_argument("--binding", default="default")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("hash-password", help="print a users-file line (password from stdin or prompt)")
    p.add_argument("user")
    p.set_defaults(func=cmd_hash_password)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else EX_OK
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
