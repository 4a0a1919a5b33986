"""The ``tlsmta`` command: check-config, policy, probe, queue, hash-password, dev-ca.

Errors are one line on stderr; exit codes follow sysexits(3) where one fits.
What a peer chose (HELO names, addresses, header bytes, remote replies, MTA-STS
policies, certificate names) goes through :func:`printable` before it reaches the
operator's terminal, so it cannot carry escape sequences (OSC 52 clipboard writes,
screen clears, hidden text) there.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tlsmta.app import _preflight as preflight
from tlsmta.app._pipe import carried_over_react, until_reader_leaves
from tlsmta.config import DANE_REQUIRED_WORD, Config, ConfigError, OutboundTLS, resolve
from tlsmta.network import IServiceReactor
from tlsmta.smtp import DomainNameError, normalize_domain

EX_OK, EX_USAGE, EX_DATAERR, EX_NOHOST, EX_UNAVAILABLE = 0, 64, 65, 68, 69
EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 70, 75, 78
DEFAULT_CONFIG = "/etc/tlsmta/tlsmta.toml"


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, keep: str = "") -> str:
    """``text`` safe for a terminal: every character that is not printable (C0 and C1
    controls, ESC, DEL, Unicode format and line/paragraph separators) written as a
    Python-style escape (``\\x1b``, ``\\x9b``, ``\\u202e``); printable text, UTF-8
    included, stays as it is.  ``keep``: control characters left alone for layout."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def out(text: object = "") -> None:
    """print() for lines that may hold peer-supplied text; newlines are kept as layout."""
    print(printable(text, keep="\n"))


def fail(command: str, message: str, code: int) -> int:
    print(f"tlsmta {command}: {printable(message)}", file=sys.stderr)
    return code


def _load(path: str) -> Config | None:
    try:
        return preflight.load(path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None


# -- check-config ---------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EX_CONFIG
    print(f"{args.file}: ok ({len(config.listeners)} listener(s), {len(config.domains)} domain scope(s))")
    from tlsmta.app._certificate_expiry import expiry_warnings

    for line in expiry_warnings(config, time.time()):  # warnings only: the exit status stays 0
        print(f"warning: {printable(line)}", file=sys.stderr)
    if args.against_running:
        return against_running(config, args.socket or config.control["socket"])
    return EX_OK


def against_running(config: Config, socket_path: str) -> int:
    """What a reload of ``config`` would do to the daemon on ``socket_path``: one line per change."""
    from tlsmta.app._control import ControlClient, ControlError
    from tlsmta.app._reload_plan import Running, plan, running_of

    try:
        running = Running.from_json(ControlClient(socket_path).request("running"))
    except ControlError as e:
        return fail("check-config", str(e), EX_UNAVAILABLE)
    wanted = running_of(config)
    changes = plan(running, wanted)
    lines = [f"reload applies: {line}" for line in changes.changes(running, wanted)] + changes.restarts(running, wanted)
    for line in lines or ["reload applies: no listener, [metrics] or [http] change; settings as in the file"]:
        out(line)
    return EX_OK


# -- policy ---------------------------------------------------------------------------------


def _show(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, frozenset):
        return ":".join(sorted(value))
    if isinstance(value, tuple):  # tls_groups: in order, as OpenSSL lists them
        return ":".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # files one per key type, pins
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def describe_policy(options: Mapping[str, Any], domain: str, mx: str | None) -> list[str]:
    """What will happen, in words, for mail to ``domain`` under these options."""
    route = options["route"]
    if route.kind == "maildir":
        return [f"Delivered locally into the Maildir {route.path}; no SMTP, no TLS."]
    if route.kind == "discard":
        return ["Discarded (accepted and dropped)."]
    if route.kind == "tlsrpt":
        return ["Taken in as TLS-RPT reports (RFC 8460) and kept in state_dir/tlsrpt-received; see `tlsmta tlsrpt received`."]
    if route.over_unix_socket:
        return [f"Delivered over LMTP (RFC 2033) to the unix socket {route.path}; no TLS on a local socket "
                "(the tls options do not apply), each recipient answered on its own."]
    if route.kind == "lmtp":
        lines = [f"Sent over LMTP (RFC 2033) to {route.host}, port {route.port}, each recipient answered on its own."]
        mx = mx or route.host  # the host the certificate may name
    else:
        where = f"the smarthost {route.host}" if route.kind == "smtp" else f"the MX hosts of {domain}"
        lines = [f"Sent over SMTP to {where}, port {route.port_for(options['smtp_port'])}."]
    tls_mode, verify = route.tls_for(options["tls"]), options["tls_verify"]
    if route.implicit_tls:
        lines.append("Implicit TLS (smtps:): the handshake comes before the greeting; a failed one defers with 4.7.5, "
                     "never plain text.")
    if options["tls_pins"]:
        starttls = "TLS" if route.implicit_tls else "STARTTLS required (4.7.6 when not advertised)"
        lines.append(f"tls_pins: {starttls}, never plain text; the server key's SPKI "
                     f"SHA-256 must be in tls_pins ({len(options['tls_pins'])} listed), the CA and names are not checked "
                     "(otherwise 4.7.5).")
        return lines
    if tls_mode == OutboundTLS.NO:
        lines.append("No STARTTLS: the mail goes in plain text.")
        return lines
    if tls_mode == OutboundTLS.REQUIRED and not route.implicit_tls:
        lines.append("STARTTLS required: not advertised defers with 4.7.6; a failed handshake defers with 4.7.5.")
    else:
        fallback = options["tls_ifavailable_fallback"]
        lines.append(
            "STARTTLS when advertised, plain text otherwise; "
            + ("a handshake that fails for other reasons than the certificate is retried in plain text at once, "
               "and a 454 to STARTTLS goes on in plain text; any other answer to STARTTLS defers with 4.7.5."
               if fallback else "a failed handshake defers with 4.7.5.")
        )
    anchors = options["tls_ca"] or "the system trust store"
    target = mx or "the MX host connected to"
    if verify == "no":
        lines.append("The certificate is not checked.")
    elif verify == "ca":
        lines.append(f"The certificate must chain to {anchors}; otherwise the delivery defers with 4.7.5 (never retried in plain text).")
    elif verify == "host":
        lines.append(
            f"The certificate must chain to {anchors} and name {domain} or {target}; "
            "otherwise the delivery defers with 4.7.5 (never retried in plain text)."
        )
    else:
        lines.append(
            f"The certificate is checked as for host (chain to {anchors}, name {domain} or {target}), "
            "but a failure is only logged as a soft-fail and the mail is delivered over the encrypted session."
        )
    return lines


def describe_external(config: Config, options: Mapping[str, Any], domain: str, mx: str | None) -> list[str]:
    """MTA-STS and DANE for ``domain`` (and ``mx``) from what is known offline: the policy
    cache in state_dir and the [dns] pins; says so when only a live lookup could tell.
    With ``mx``, whether the running daemon remembers its TLS as broken (tls_remember_broken)."""
    import os.path

    from tlsmta.app._broken_tls_status import remembered_broken_lines
    from tlsmta.discovery import STSCache, TLSARecord, tlsa_name
    from tlsmta.tls import DANEStatus, STSState, VerifyMode, effective_requirement

    if options["route"].kind != "mx":
        return ["MTA-STS and DANE: not applied (not an MX route)."]
    lines = []
    sts_state = None
    pinned_txt = config.dns.get("txt", {}).get(f"_mta-sts.{domain}")
    if not options["mta_sts"]:
        lines.append("MTA-STS: opted out (mta_sts = false): any policy the domain publishes is ignored.")
    else:
        cache = STSCache(os.path.join(config.state_dir, "mta-sts"))
        cached = cache.read_blocking(domain)
        if cached is not None:
            p = cached.policy
            state = "expired, refetched at the next delivery" if cached.expired(time.time()) else f"valid until {_when(cached.fetched_at + p.max_age)}"
            lines.append(f"MTA-STS: cached policy id {p.id}, mode {p.mode}, mx {', '.join(p.mx) or '-'} ({state}).")
            if not cached.expired(time.time()):
                sts_state = STSState(p.mode, p.matches(mx) if mx else True)
                if mx and p.mode != "none":
                    lines.append(f"  {mx} is {'listed' if sts_state.mx_matches else 'NOT listed'} in it.")
        elif pinned_txt is not None:
            lines.append(f"MTA-STS: no cached policy; [dns.txt] pins {pinned_txt!r}: the policy is fetched at the first delivery.")
        else:
            lines.append("MTA-STS: unknown offline (no cached policy in state_dir); `tlsmta probe` looks it up.")
    dane_status = DANEStatus.NONE
    if options["dane"] == DANE_REQUIRED_WORD:
        lines.append("DANE: required (dane = required): an MX without usable TLSA records is not used (4.7.5).")
    if not options["dane"]:
        lines.append("DANE: opted out (dane = false).")
    elif mx is None:
        lines.append("DANE: per MX host; give --mx HOST to see its TLSA records.")
    else:
        name = tlsa_name(mx, options["smtp_port"])
        pinned = config.dns.get("tlsa", {}).get(name)
        if pinned is not None:
            try:
                records = [TLSARecord.parse(r) for r in pinned]
            except ValueError as e:
                lines.append(f"DANE: [dns.tlsa] {name} does not parse ({e}): that MX would not be used.")
                dane_status = DANEStatus.FAILED
            else:
                usable = [r for r in records if r.usable]
                dane_status = DANEStatus.USABLE if usable else DANEStatus.UNUSABLE
                lines.append(f"DANE: [dns.tlsa] {name} (pinned, counts as DNSSEC-secure): {', '.join(map(str, records))}"
                             f" ({len(usable)} usable).")
        elif domain in config.dns.get("mx", {}):
            lines.append(f"DANE: none (the MX of {domain} is pinned and {name} is not).")
        else:
            lines.append(f"DANE: unknown offline (needs a DNSSEC-validated lookup of {name}); `tlsmta probe` does it.")
    if mx:
        req = effective_requirement(
            options["tls"], VerifyMode(options["tls_verify"]), options["tls_ifavailable_fallback"],
            sts=sts_state, dane=dane_status, dane_required=options["dane"] == DANE_REQUIRED_WORD, pins=options["tls_pins"],
        )
        lines.append(f"For MX {mx}, as far as known: " + describe_requirement(req, domain, mx))
        lines += remembered_broken_lines(config.control["socket"], mx, options["smtp_port"], options["tls_remember_broken"], req)
    return lines


def describe_requirement(req: Any, domain: str, mx: str) -> str:
    """An effective requirement (policy.Requirement) in one sentence."""
    if req.unusable is not None:
        return f"{req.policy}: this MX is not used ({req.unusable})."
    if req.pinned:
        return "pinned: STARTTLS required, the server key must match tls_pins (no CA or name check); no plain-text fallback."
    if req.dane:
        return "dane: STARTTLS required, the certificate must match a usable TLSA record (DANE-EE/DANE-TA); no plain-text fallback."
    if req.tls is OutboundTLS.NO:
        return f"{req.policy}: plain text."
    names = " or ".join(req.wanted(domain, mx))
    check = {"no": "not checked", "ca": "must chain to the trust anchors",
             "host": f"must chain to the trust anchors and name {names}",
             "optional": f"checked for {names}, failures only logged"}[req.verify.value]
    fallback = "plain-text fallback after a failed handshake" if req.tls is OutboundTLS.IFAVAILABLE and req.fallback else "no plain-text fallback"
    return f"{req.policy}: STARTTLS {'required' if req.tls is OutboundTLS.REQUIRED else 'if offered'}, certificate {check}, {fallback}."


def cmd_policy(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EX_CONFIG
    try:
        domain = normalize_domain(args.domain)
    except DomainNameError as e:
        return fail("policy", str(e), EX_DATAERR)
    if args.binding != "default" and args.binding not in config.bindings:
        return fail("policy", f"binding {args.binding!r} is not defined in {args.file}", EX_DATAERR)
    resolved = resolve(config, domain, args.binding)
    print(f"# effective outbound options for domain {domain} via binding {args.binding}" + (f", MX {args.mx}" if args.mx else ""))
    width = max(len(name) for name in resolved)
    for name, item in resolved.items():
        print(f"{name:<{width}} = {_show(item.value):<40} # from {item.scope}")
    print()
    values = {k: v.value for k, v in resolved.items()}
    for line in describe_policy(values, domain, args.mx):
        print(line)
    print()
    for line in describe_external(config, values, domain, args.mx):
        out(line)
    return EX_OK


# -- probe ----------------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    from twisted.internet.task import react

    from tlsmta.app._broken_tls_status import remembered_broken_lines
    from tlsmta.app._probe import (
        config_source,
        effective_outcome,
        format_external,
        format_policies,
        format_result,
        requirement,
        run_probe,
        tlsa_source,
    )
    from tlsmta.discovery import Resolver
    from tlsmta.tls import VerifyMode

    if args.config:
        config = _load(args.config)
        if config is None:
            return EX_CONFIG
    else:
        config = preflight.from_dict({}, "<defaults>")
    try:
        domain = normalize_domain(args.domain)
    except DomainNameError as e:
        return fail("probe", str(e), EX_DATAERR)
    options = {k: v.value for k, v in resolve(config, domain, args.binding).items()}
    if args.tls_verify:
        options["tls_verify"] = args.tls_verify
    if args.tls:
        options["tls"] = OutboundTLS(args.tls)
    options["tls"] = options["route"].tls_for(options["tls"])  # smtps: TLS or nothing, lmtp:unix: none, as delivery does
    verify = VerifyMode(options["tls_verify"])
    outcome: dict[str, int] = {}

    async def main(reactor: IServiceReactor) -> None:
        resolver = Resolver(config.dns, nameservers=config.dns_nameservers)
        ehlo = options["ehlo_hostname"] or config.hostname or "tlsmta-probe.invalid"
        results, dns_problem, facts = await run_probe(
            reactor, resolver, domain, options, args.port, args.mx, ehlo, https_port=config.global_option("mta_sts_https_port")
        )
        if dns_problem:
            out(f"{domain}: {dns_problem}")
            outcome["code"] = EX_NOHOST
            return
        out("\n".join(format_external(facts, domain, config_source(resolver, domain, options["route"]))))
        print()
        judged = []
        for result in results:
            req = requirement(options, facts, result.mx, options["tls"], verify)
            tlsa_pinned_in = tlsa_source(resolver, result.mx, result.port)
            out("\n".join(format_result(result, options["tls"], verify) + format_policies(result, facts, req, domain, tlsa_pinned_in)
                          + remembered_broken_lines(config.control["socket"], result.mx, result.port,
                                                    options["tls_remember_broken"], req)))
            print()
            if result.banner or req.unusable is not None:
                judged.append((result, req))
        # The first MX that delivery would use: reachable, and not excluded by a policy.
        usable = [(r, q) for r, q in judged if q.unusable is None]
        if not usable:
            if judged:
                out(f"verdict for {domain}: {effective_outcome(judged[0][0], judged[0][1], domain, facts)[1]}")
                outcome["code"] = EX_TEMPFAIL
            else:
                outcome["code"] = EX_UNAVAILABLE
            return
        result, req = usable[0]
        ok, what = effective_outcome(result, req, domain, facts)
        out(f"verdict for {domain} (tls={options['tls']}, tls_verify={verify.value}, policy {req.policy}): {what}")
        outcome["code"] = EX_OK if ok else EX_TEMPFAIL

    guarded, raise_if_reader_left = carried_over_react(main)
    try:
        react(guarded)
    except SystemExit as e:
        raise_if_reader_left()
        if e.code not in (0, None):
            return EX_SOFTWARE
    return outcome.get("code", EX_SOFTWARE)


# -- queue ----------------------------------------------------------------------------------


def _socket_path(args: argparse.Namespace) -> str | None:
    if args.socket:
        return str(args.socket)
    config = _load(args.config)
    return None if config is None else str(config.control["socket"])


def _when(timestamp: float | None) -> str:
    return "-" if not timestamp else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def print_queue(messages: list[dict[str, Any]]) -> None:
    if not messages:
        print("queue is empty")
        return
    print(f"{'ID':<34} {'SIZE':>9}  {'ARRIVED':<19}  {'TRIES':>5}  {'NEXT TRY':<19}  SENDER")
    for m in messages:
        flag = "*" if m.get("in_flight") else "!" if m.get("held") else " "
        out(
            f"{printable(m['id']):<33}{flag} {m['size']:>9}  {_when(m['received_at']):<19}  {m['attempts']:>5}  "
            f"{_when(m['next_attempt']):<19}  <{printable(m['sender'])}>"
        )
        for r in m["recipients"]:
            if r["status"] == "pending":
                out(f"    {printable(r['address'])}" + (f"  ({printable(r['last'])})" if r["last"] else ""))
    print(f"-- {len(messages)} message(s); * = delivery in progress, ! = held")


def _queue_config(path: str | None) -> str:
    """--config, else /etc/tlsmta/tlsmta.toml, else (no such file: a developer's machine) the dev
    relay's embedded configuration, whose control socket is ./.tlsmta/control.sock: that of the
    ``twistd -n tlsmta`` run in this directory."""
    if path is not None or os.path.exists(DEFAULT_CONFIG):
        return path or DEFAULT_CONFIG
    from tlsmta.app.tap import dev_relay_path

    return dev_relay_path()


def cmd_queue(args: argparse.Namespace) -> int:
    from tlsmta.app._control import ControlClient, ControlError, DaemonUnavailable

    args.config = _queue_config(args.config)
    path = _socket_path(args)
    if path is None:
        return EX_CONFIG
    client = ControlClient(path)
    action = args.action
    try:
        if action == "list":
            result = client.request("queue.list", domain=args.domain)
        elif action == "show":
            result = client.request("queue.show", id=args.id)
        elif action == "flush":
            result = client.request("queue.flush", id=args.id, domain=args.domain)
        elif action in SELECTING:
            return _selected(client, action, args)
        else:
            return _each(client, action, args.id)
    except DaemonUnavailable as e:
        if args.socket:
            return fail("queue", str(e), EX_UNAVAILABLE)
        if action in ("list", "show"):
            return _offline(args, action)
        if action in ("delete", "hold", "release"):
            return _change_offline(args, action)
        return fail("queue", f"{e}; {action} needs the running daemon", EX_UNAVAILABLE)
    except ControlError as e:
        return fail("queue", str(e), _control_exit(e))
    if args.json:
        print(json.dumps(result, indent=2))
    elif action == "list":
        print_queue(result)
    elif action == "show":
        print_message(result)
    else:
        print(f"{result} message(s) due now")
    return EX_OK


SELECTING = {"hold": "held", "release": "released", "requeue": "due now"}


def _selected(client: Any, action: str, args: argparse.Namespace) -> int:
    """hold, release, requeue: the ids named, --domain D, or ALL; one line per message."""
    if bool(args.id) == bool(args.domain):
        return fail("queue", f"{action}: name message ids, --domain DOMAIN or ALL", EX_USAGE)
    everything = args.id == ["ALL"]
    chosen = client.request(f"queue.{action}", ids=[] if everything else args.id, domain=args.domain, all=everything)
    if args.json:
        print(json.dumps(chosen, indent=2))
    else:
        for message_id in chosen:
            out(f"{message_id}: {SELECTING[action]}")
    return EX_OK


def _control_exit(e: Exception) -> int:
    return EX_DATAERR if "no queued message" in str(e) else EX_TEMPFAIL


def _each(client: Any, action: str, ids: Sequence[str]) -> int:
    """delete or bounce each id in turn: one line per id, a refusal does not stop the rest;
    the exit status is the first refusal's."""
    from tlsmta.app._control import ControlError, DaemonUnavailable

    done = "deleted" if action == "delete" else "returned to sender"
    code = EX_OK
    for message_id in ids:
        try:
            out(f"{client.request(f'queue.{action}', id=message_id)}: {done}")
        except DaemonUnavailable:
            raise
        except ControlError as e:
            code = code or _control_exit(e)
            fail("queue", str(e), code)
    return code


def print_message(m: dict[str, Any]) -> None:
    p = printable  # every field below may hold what a peer sent
    out(f"id:        {p(m['id'])}")
    out(f"sender:    <{p(m['sender'])}>")
    out(f"received:  {_when(m['received_at'])} from {p(m.get('helo') or '-')} [{p(m.get('peer') or '-')}]")
    tls = m.get("tls") or {}
    if tls.get("tls") == "tls":
        out(f"tls in:    {p(tls.get('protocol'))} {p(tls.get('cipher'))} (client certificate verified: {p(tls.get('verified'))})")
    out(f"size:      {m['size']}   attempts: {m['attempts']}   next: {'held' if m.get('held') else _when(m['next_attempt'])}")
    for r in m["recipients"]:
        out(f"  {p(r['status']):<9} {p(r['address'])}  route={p(r['route'])} binding={p(r['binding'])}"
            + (f"\n            {p(r['last'])}" if r["last"] else ""))
    if m.get("headers"):
        # Line ends and folding stay; every other control character is escaped.
        print("\n" + printable(m["headers"].replace("\r\n", "\n"), keep="\n\t"))


def _change_offline(args: argparse.Namespace, action: str) -> int:
    """delete, hold, release with the daemon stopped: on the spool, under its lock."""
    from tlsmta.app._queue_offline import OFFLINE, change_offline
    from tlsmta.delivery import QueueError
    from tlsmta.storage import DirectoryInUse

    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    everything = args.id == ["ALL"]
    path = config.spool["path"]
    try:
        done = change_offline(path, action, [] if everything else args.id, getattr(args, "domain", None), everything)
    except DirectoryInUse as e:
        return fail("queue", f"{e}, yet nothing answers on its control socket; try again", EX_TEMPFAIL)
    except QueueError as e:
        return fail("queue", f"{e}; nothing changed", EX_DATAERR)
    except OSError as e:
        return fail("queue", f"cannot change the spool {path}: {e.strerror or e}", EX_UNAVAILABLE)
    print("(tlsmta is not running: changed the spool directly, under its lock)", file=sys.stderr)
    for message_id in done:
        out(f"{message_id}: {OFFLINE[action]}")
    return EX_OK


def _offline(args: argparse.Namespace, action: str) -> int:
    """The daemon is not running: read the spool directly (read-only)."""
    from tlsmta.app._control import HEADERS_SHOWN, describe, read_headers
    from tlsmta.storage import Spool

    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    spool = Spool(config.spool["path"], disk=None)  # type: ignore[arg-type]
    try:
        ids = spool.list_blocking()
    except OSError as e:
        return fail("queue", f"cannot read the spool {spool.queue_dir}: {e.strerror}", EX_UNAVAILABLE)
    messages, _ = spool.load_blocking(ids)
    print("(tlsmta is not running: read from the spool)", file=sys.stderr)
    if action == "list":
        listed = [describe(m) for m in sorted(messages, key=lambda m: m.received_at)]
        if args.domain:
            listed = [m for m in listed if any(r["address"].endswith("@" + args.domain) for r in m["recipients"])]
        if args.json:
            print(json.dumps(listed, indent=2))
        else:
            print_queue(listed)
        return EX_OK
    match = [m for m in messages if m.id == args.id]
    if not match:
        return fail("queue", f"no queued message {args.id}", EX_DATAERR)
    info = describe(match[0])
    info["headers"] = read_headers(spool.read_body_blocking(match[0], HEADERS_SHOWN))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_message(info)
    return EX_OK


# -- tlsrpt ---------------------------------------------------------------------------------


def cmd_tlsrpt(args: argparse.Namespace) -> int:
    """`tlsmta tlsrpt show`: the recorded TLS results of one UTC day, per domain and policy."""
    import datetime

    from tlsmta.reporting import TLSRPTStore, store_directory

    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    if args.action == "received":
        return _tlsrpt_received(config, args.domain, args.day)
    try:
        day = datetime.date.fromisoformat(args.day) if args.day else datetime.datetime.now(datetime.timezone.utc).date()
    except ValueError:
        return fail("tlsrpt", f"--day must be YYYY-MM-DD (got {args.day!r})", EX_USAGE)
    directory = store_directory(config.state_dir)
    if not os.path.isdir(directory):
        print(f"{day.isoformat()} (UTC): no TLS sessions recorded ({directory} does not exist)")
        return EX_OK
    aggregate = TLSRPTStore(directory).aggregate(day)
    if not aggregate:
        print(f"{day.isoformat()} (UTC): no TLS sessions recorded")
        return EX_OK
    print(f"TLS-RPT aggregate for {day.isoformat()} (UTC), from {directory}")
    for domain in sorted(aggregate):
        out(f"\n{printable(domain)}")
        for stats in aggregate[domain]:
            mx = f" mx {printable(', '.join(stats.mx_hosts))}" if stats.mx_hosts else ""
            out(f"  policy {printable(stats.policy_type)}{mx}: {stats.successes} successful, {stats.failures} failed")
            for line in stats.policy_strings:
                out(f"    | {printable(line)}")
            for key, (count, reason) in sorted(stats.details.items(), key=lambda item: -item[1][0]):
                where = " ".join(f"{label} {value}" for label, value in (
                    ("mx", key.mx_host), ("from", key.sending_ip), ("to", key.receiving_ip)) if value)
                out(f"    {count:>5} x {printable(key.result_type)}" + (f"  ({printable(where)})" if where else "")
                    + (f": {printable(reason)}" if reason else ""))
    return EX_OK


def _tlsrpt_received(config: Config, domain: str | None, day_text: str | None) -> int:
    """`tlsmta tlsrpt received`: what other senders reported about delivering to us."""
    import datetime

    from tlsmta.reporting import ReceivedReports, received_directory, summarize, summary_lines

    try:
        day = datetime.date.fromisoformat(day_text) if day_text else None
        domain = normalize_domain(domain) if domain else None
    except (ValueError, DomainNameError) as e:
        return fail("tlsrpt", f"--day must be YYYY-MM-DD, --domain a domain name ({e})", EX_USAGE)
    store = ReceivedReports(received_directory(config.state_dir))
    for line in summary_lines(summarize(store.reports(), domain, day), store.malformed_count()):
        print(printable(line))
    return EX_OK


# -- cluster --------------------------------------------------------------------------------


def cmd_cluster(args: argparse.Namespace) -> int:
    """`tlsmta cluster status`: the fleet's nodes and leases, from its Redis."""
    from twisted.internet.task import react

    from tlsmta.app._cluster_status import run_status

    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    return run_status(config, args.json, out, react)


# -- hash-password --------------------------------------------------------------------------


def cmd_hash_password(args: argparse.Namespace) -> int:
    from tlsmta.inbound import hash_password

    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
    if not password:
        return fail("hash-password", "empty password", EX_DATAERR)
    print(f"{args.user}:{hash_password(password)}")
    return EX_OK


# -- dev-ca ---------------------------------------------------------------------------------


def cmd_dev_ca(args: argparse.Namespace) -> int:
    from tlsmta.app.tap import dev_relay_path
    from tlsmta.devrelay import ensure_dev_ca

    config = _load(args.config or dev_relay_path())
    if config is None:
        return EX_CONFIG
    try:
        path = ensure_dev_ca(config.state_dir)  # the relay reuses it at start
        if args.pem:
            with open(path, encoding="ascii") as f:
                sys.stdout.write(f.read())
        else:
            print(path)
    except OSError as e:
        return fail("dev-ca", f"{config.state_dir}: {e.strerror}", EX_UNAVAILABLE)
    return EX_OK


# -- log ------------------------------------------------------------------------------------


def cmd_log(args: argparse.Namespace) -> int:
    from tlsmta.app._log_trace import run_trace

    return run_trace(args.key, args.files, sys.stdout, sys.stderr)


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsmta", description="tlsmta control commands")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p.add_argument("--against-running", action="store_true",
                   help="also say what a reload would change in the running daemon, and what needs a restart")
    p.add_argument("--socket", help="the running daemon's control socket (default: the file's [control] socket)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("policy", help="effective outbound options for a domain, with their scopes, in words")
    p.add_argument("file")
    p.add_argument("domain")
    p.add_argument("--binding", default="default")
    p.add_argument("--mx", help="the MX host the description should name")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("probe", help="connect to a domain's MX hosts and show their TLS and each tls_verify verdict")
    p.add_argument("domain")
    p.add_argument("--config", help="use this configuration's options, [dns] and trust anchors")
    p.add_argument("--binding", default="default")
    p.add_argument("--port", type=int, help="SMTP port (default: the configured smtp_port, 25)")
    p.add_argument("--mx", help="probe this host instead of looking up MX records")
    p.add_argument("--tls", choices=[mode.value for mode in OutboundTLS], help="judge with this tls instead of the configured one")
    p.add_argument("--tls-verify", choices=["no", "ca", "host", "optional"], help="judge with this mode")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("queue", help="look at and act on a running instance's queue")
    p.add_argument("--config", help=f"where the control socket and spool are (default {DEFAULT_CONFIG}, "
                                     "or the dev relay's ./.tlsmta when that file does not exist)")
    p.add_argument("--socket", help="the control socket, overriding the configuration")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    qsub = p.add_subparsers(dest="action", required=True)
    q = qsub.add_parser("list", help="queued messages (Postfix's mailq)")
    q.add_argument("--domain")
    q = qsub.add_parser("show", help="one message: envelope, per-recipient state, headers")
    q.add_argument("id")
    q = qsub.add_parser("flush", help="try now: everything, one message, or one domain")
    q.add_argument("id", nargs="?")
    q.add_argument("--domain")
    q = qsub.add_parser("delete", help="remove messages without a bounce")
    q.add_argument("id", nargs="+")
    q = qsub.add_parser("bounce", help="return messages to their senders now (DSN)")
    q.add_argument("id", nargs="+")
    for name, what in (("hold", "keep messages from delivery until released (kept across restarts)"),
                       ("release", "let held messages go (due now)"),
                       ("requeue", "try messages now with routes and options resolved afresh")):
        q = qsub.add_parser(name, help=f"{what}: IDs, --domain D, or ALL")
        q.add_argument("id", nargs="*")
        q.add_argument("--domain")
    for q in qsub.choices.values():  # `tlsmta queue list --config FILE` as well as `tlsmta queue --config FILE list`
        q.add_argument("--config", default=argparse.SUPPRESS, help="as above")
        q.add_argument("--socket", default=argparse.SUPPRESS, help="as above")
        q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as above")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("dev-ca", help="where the dev CA is (the PEM clients trust to verify the dev relay)")
    p.add_argument("--config", help="the relay's configuration (default: the embedded dev relay, ./.tlsmta)")
    p.add_argument("--pem", action="store_true", help="print the PEM instead of its path")
    p.set_defaults(func=cmd_dev_ca)

    p = sub.add_parser("tlsrpt", help="TLS-RPT (RFC 8460): what has been recorded for the daily reports, and reports received")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"where state_dir is (default {DEFAULT_CONFIG})")
    tsub = p.add_subparsers(dest="action", required=True)
    t = tsub.add_parser("show", help="a day's aggregate per domain and policy (default: today, UTC)")
    t.add_argument("--day", help="YYYY-MM-DD (UTC)")
    t.add_argument("--config", default=argparse.SUPPRESS, help="as above")
    t = tsub.add_parser("received", help="reports other senders sent us: sessions and failures per domain and MX")
    t.add_argument("--domain", help="only this policy domain")
    t.add_argument("--day", help="only reports covering this UTC day, YYYY-MM-DD (default: every day kept)")
    t.add_argument("--config", default=argparse.SUPPRESS, help="as above")
    p.set_defaults(func=cmd_tlsrpt)

    p = sub.add_parser("cluster", help="a fleet sharing Redis ([cluster]): its nodes, their queues and leases")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("status", help="the live nodes, their queues, and connections held per destination")
    c.add_argument("--config", default=DEFAULT_CONFIG, help=f"any node's configuration (default {DEFAULT_CONFIG})")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("log", help="read tlsmta's logs (text or JSON lines)")
    lsub = p.add_subparsers(dest="action", required=True)
    t = lsub.add_parser("trace", help="every line of one message's life: by queue id, Message-ID or address")
    t.add_argument("key", metavar="ID|MESSAGE-ID|ADDRESS")
    t.add_argument("files", nargs="*", metavar="FILE", help="log files, oldest first (.gz too); default: standard input")
    p.set_defaults(func=cmd_log)

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
    return until_reader_leaves(lambda: int(args.func(args)))


if __name__ == "__main__":
    raise SystemExit(main())
