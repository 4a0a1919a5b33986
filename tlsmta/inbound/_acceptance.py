"""Inbound acceptance decisions, sans I/O: relay control and the client-certificate gate."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

import attrs

from tlsmta.smtp import Reject
from tlsmta.tls import Verdict, VerifyMode

RELAY_DENIED = Reject(554, "5.7.1 relay access denied")


class Refusal(Reject):
    """A refusal by the listener's policy; ``reason`` says why, for the log (not for the client)."""

    def __init__(self, code: int, text: str, reason: str):
        super().__init__(code, text)
        self.reason = reason


@attrs.frozen
class ClientStanding:
    """What the session knows about who the client is."""

    address: str  # IP address text
    authenticated: bool = False
    cert_verified: bool = False
    cert_pinned: bool = False  # the certificate is one of the listener's relay_client_pins


@functools.lru_cache(maxsize=4096)
def _client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as relay checks see it (IPv4-mapped IPv6 as IPv4); parsed
    once per client, not per connection and RCPT (it shows in profiles)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(address: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = _client_ip(address)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def may_relay(
    client: ClientStanding,
    relay_networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    verified_peer_can_relay: bool,
) -> bool:
    """Relay (mail for non-local domains) is allowed from relay_networks,
    after AUTH, with a pinned client certificate (relay_client_pins), or with
    a verified client certificate when the listener says so."""
    if client.authenticated or client.cert_pinned:
        return True
    if verified_peer_can_relay and client.cert_verified:
        return True
    return in_networks(client.address, relay_networks)


def check_recipient(
    domain: str,
    local_domains: frozenset[str],
    client: ClientStanding,
    relay_networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    verified_peer_can_relay: bool,
) -> None:
    """Raise RELAY_DENIED unless mail for ``domain`` may be accepted."""
    if domain in local_domains:
        return
    if not may_relay(client, relay_networks, verified_peer_can_relay):
        raise RELAY_DENIED


def client_pinned(pins: Iterable[str], spki_sha256: str | None, cert_sha256: str | None) -> bool:
    """Postfix ``relay_clientcerts``: the client certificate's SPKI or whole-certificate SHA-256 (hex) is listed.
    The handshake proved the client holds the key; who signed the certificate does not matter."""
    listed = frozenset(pins)
    return (spki_sha256 is not None and spki_sha256 in listed) or (cert_sha256 is not None and cert_sha256 in listed)


def check_client_certificate(mode: VerifyMode, tls_active: bool, verdict: Verdict | None) -> None:
    """The MAIL gate for listeners with ``tls_verify = ca|host``: 530 5.7.0 unless verified."""
    if not mode.enforcing:
        return
    if not tls_active:
        raise Reject(530, "5.7.0 Must issue a STARTTLS command first")
    if verdict is None or not verdict.verified:
        reason = verdict.reason if verdict is not None else "no certificate presented"
        raise Reject(530, f"5.7.0 client certificate not accepted: {reason}")
