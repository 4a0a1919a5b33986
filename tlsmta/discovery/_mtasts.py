"""MTA-STS (RFC 8461): the TXT record, the policy file, MX patterns, fetching, caching.

The parsers and :func:`mx_matches` are pure.  :class:`PolicyFetcher` gets
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` with twisted.web's
Agent: HTTPS only, the certificate verified for ``mta-sts.DOMAIN`` (RFC
8461 3.3), no redirects, a size cap, a timeout, ``text/plain`` only.
:class:`STSCache` keeps policies under ``state_dir/mta-sts/`` with their
``max_age`` and ``id``, and :class:`STSResolver` puts the two together as
RFC 8461 3.3 and 5.1 say: fetch when the TXT id differs from the cached
one or the cached policy expired, and keep using an unexpired cached
policy when the TXT lookup or the fetch fails.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from tlsmta.errors import TlsmtaError
from tlsmta.network import IServiceReactor
from tlsmta.smtp import DomainNameError, normalize_domain

log = Logger(namespace="tlsmta.mtasts")

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: at most one year
MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3: senders may limit the size; 64 KiB is generous
FETCH_TIMEOUT = 30  # seconds for the whole HTTPS fetch (RFC 8461 3.3 suggests a short one)
FAILED_FETCH_TTL = 300  # seconds a failed fetch is remembered, so each delivery does not wait for it again
WELL_KNOWN = "/.well-known/mta-sts.txt"

# TLS-RPT (RFC 8460 4.3) result types for what can go wrong here.
FETCH_ERROR = "sts-policy-fetch-error"
POLICY_INVALID = "sts-policy-invalid"
WEBPKI_INVALID = "sts-webpki-invalid"


class STSError(TlsmtaError):
    """No usable policy; ``result_type`` is the TLS-RPT failure type."""

    def __init__(self, message: str, result_type: str = POLICY_INVALID):
        super().__init__(message)
        self.result_type = result_type


# -- the TXT record (RFC 8461 3.1) ----------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD = re.compile(r"\s*([A-Za-z0-9_.-]+)=([\x21-\x3a\x3c\x3e-\x7e]*)\s*")


def parse_txt(records: list[str]) -> str | None:
    """The policy ``id`` from the ``_mta-sts`` TXT records, or None when there is no
    STS record.  Several ``v=STSv1`` records, or a malformed one, are STSError
    (RFC 8461 3.1: treated as if no record was found, but worth reporting)."""
    # RFC 8461 3.1: records not beginning with "v=STSv1;" are discarded.
    sts = [r for r in records if re.match(r"v=STSv1[ \t]*;", r)]
    if not sts:
        return None
    if len(sts) > 1:
        raise STSError("more than one v=STSv1 TXT record")
    fields = [f for f in sts[0].split(";")]
    if fields and not fields[-1].strip():
        fields.pop()  # a trailing ';' is allowed
    values: dict[str, str] = {}
    for i, field in enumerate(fields):
        m = _FIELD.fullmatch(field)
        if m is None:
            raise STSError(f"malformed TXT field {field.strip()!r}")
        if i == 0 and (m.group(1), m.group(2)) != ("v", "STSv1"):
            raise STSError("the TXT record must start with v=STSv1")
        values.setdefault(m.group(1), m.group(2))
    policy_id = values.get("id")
    if policy_id is None or not _ID.fullmatch(policy_id):
        raise STSError(f"TXT record has no valid id (1 to 32 letters and digits): {policy_id!r}")
    return policy_id


# -- the policy file (RFC 8461 3.2) ---------------------------------------------------------

MODES = ("enforce", "testing", "none")


@attrs.frozen
class Policy:
    """A parsed policy file plus the TXT id it was fetched under."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""
    text: str = ""  # as fetched, for TLS-RPT's policy-string and the cache

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)

    @property
    def strings(self) -> list[str]:
        """RFC 8460 4.4 policy-string: the policy's lines."""
        return [line for line in self.text.replace("\r\n", "\n").split("\n") if line.strip()]


_KEY = re.compile(r"[A-Za-z0-9_]{1,32}")


def parse_policy(text: str, policy_id: str = "") -> Policy:
    """Parse a policy file; STSError (sts-policy-invalid) when it is not usable.

    Lines end in CRLF or LF; ``key: value``; unknown keys are ignored
    (RFC 8461 3.2); of a repeated key other than ``mx`` the first counts.
    """
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip(" \t")
        if not line:
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip(" \t")
        if not sep or not _KEY.fullmatch(key):
            raise STSError(f"malformed policy line {line[:80]!r}")
        if key == "mx":
            mx.append(value)
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise STSError(f"policy version must be STSv1 (got {values.get('version')!r})")
    mode = values.get("mode")
    if mode not in MODES:
        raise STSError(f"policy mode must be enforce, testing or none (got {mode!r})")
    age = values.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10):
        raise STSError(f"policy max_age must be a number of seconds (got {age!r})")
    max_age = min(int(age), MAX_AGE_LIMIT)  # RFC 8461 3.2: at most 31557600
    patterns = []
    for pattern in mx:
        norm = _pattern(pattern)
        if norm is None:
            raise STSError(f"policy mx {pattern!r} is not a host name or *.domain pattern")
        patterns.append(norm)
    if mode != "none" and not patterns:
        raise STSError(f"a {mode} policy needs at least one mx line")
    return Policy(mode, tuple(patterns), max_age, policy_id, text)


def _pattern(pattern: str) -> str | None:
    try:
        name = normalize_domain(pattern, host=True, wildcard=True)
    except DomainNameError:
        return None
    # A wildcard stands for one label under a domain of two labels or more: no "*.com".
    return None if name.startswith("*.") and "." not in name[2:] else name


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: an exact name, or ``*.example.com`` matching exactly one more
    leftmost label (``mx.example.com``, not ``example.com`` nor ``a.b.example.com``)."""
    pat = _pattern(pattern)
    try:
        name = normalize_domain(host, host=True)  # an MX host name, never a pattern
    except DomainNameError:
        return False
    if pat is None:
        return False
    if pat.startswith("*."):
        label, dot, rest = name.partition(".")
        return bool(dot) and bool(label) and rest == pat[2:]
    return name == pat


# -- the cache (state_dir/mta-sts/DOMAIN.json) ----------------------------------------------


@attrs.frozen
class CachedPolicy:
    """A policy and when it was fetched (it expires ``max_age`` seconds later)."""

    policy: Policy
    fetched_at: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.policy.max_age


class STSCache:
    """Policies on disk, one JSON file per domain, and in memory.

    Disk access goes through ``run`` (the disk thread pool in the daemon);
    a file that cannot be read or parsed is simply no cached policy.
    """

    def __init__(self, directory: str, run: Callable[..., Deferred[Any]] | None = None):
        self.directory = directory
        self.run = run
        self.memory: dict[str, CachedPolicy | None] = {}

    def path(self, domain: str) -> str:
        return os.path.join(self.directory, f"{domain}.json")

    async def get(self, domain: str) -> CachedPolicy | None:
        if domain not in self.memory:
            loaded = await self._call(self.read_blocking, domain)
            if len(self.memory) > 100_000:
                self.memory.clear()  # bounded: domains come from the network
            self.memory[domain] = loaded
        return self.memory[domain]

    async def put(self, domain: str, cached: CachedPolicy) -> None:
        self.memory[domain] = cached
        try:
            await self._call(self.write_blocking, domain, cached)
        except OSError as e:
            log.warn("cannot write the MTA-STS cache for {domain}: {error}", domain=domain, error=e)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.run is None:
            return fn(*args)
        return await self.run(fn, *args)

    def read_blocking(self, domain: str) -> CachedPolicy | None:
        try:
            with open(self.path(domain), encoding="utf-8") as f:
                data = json.load(f)
            return CachedPolicy(parse_policy(data["text"], data["id"]), float(data["fetched_at"]))
        except (OSError, ValueError, KeyError, TypeError, STSError):
            return None

    def write_blocking(self, domain: str, cached: CachedPolicy) -> None:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        data = {"id": cached.policy.id, "text": cached.policy.text, "fetched_at": cached.fetched_at}
        tmp = self.path(domain) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(domain))


# -- what the resolver concluded for one domain ---------------------------------------------


@attrs.frozen
class STSResult:
    """The policy that applies to a domain now (None: no MTA-STS), and any
    failure on the way there, for TLS-RPT and the log."""

    policy: Policy | None
    source: str  # "fetched", "cache", "none" (no TXT record), "failed", "disabled"
    failure: STSError | None = None

    def describe(self) -> str:
        if self.policy is None:
            why = f": {self.failure}" if self.failure else ""
            return {"disabled": "MTA-STS disabled for this domain (mta_sts = false)",
                    "none": "no MTA-STS policy (no _mta-sts TXT record)"}.get(self.source, f"no usable MTA-STS policy{why}")
        p = self.policy
        return f"MTA-STS mode {p.mode}, mx {', '.join(p.mx) or '-'}, max_age {p.max_age}, id {p.id} ({self.source})"


class STSResolver:
    """The MTA-STS policy for a domain, as RFC 8461 3.3 and 5.1 say to find it.

    ``txt(name)`` and ``fetch(domain)`` are injected (the daemon's DNS
    resolver and :class:`PolicyFetcher`), so the discovery rules are tested
    without the network.  Lookups for the same domain running at the same
    time share one TXT query and one fetch.
    """

    def __init__(
        self,
        txt: Callable[[str], Deferred[list[str]]],
        fetch: Callable[[str], Any],
        cache: STSCache,
        now: Callable[[], float] = time.time,
    ):
        self.txt = txt
        self.fetch = fetch
        self.cache = cache
        self.now = now
        self._inflight: dict[str, list[Deferred[STSResult]]] = {}
        # domain -> (policy id, failure, when): a recent failed fetch for that id.
        self._failed: dict[str, tuple[str, STSError, float]] = {}

    def policy_for(self, domain: str) -> Deferred[STSResult]:
        from twisted.internet.defer import ensureDeferred

        waiters = self._inflight.get(domain)
        d: Deferred[STSResult] = Deferred()
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._inflight[domain] = [d]

        def settle(result: Any) -> None:
            for w in self._inflight.pop(domain, []):
                w.callback(result)

        def failed(failure: Any) -> None:
            for w in self._inflight.pop(domain, []):
                w.errback(failure)

        ensureDeferred(self._resolve(domain)).addCallbacks(settle, failed)
        return d

    async def _resolve(self, domain: str) -> STSResult:
        from tlsmta.discovery._resolver import DNSError

        cached = await self.cache.get(domain)
        now = self.now()
        fresh = cached.policy if cached is not None and not cached.expired(now) else None

        def keep(failure: STSError | None, fallback_source: str = "failed") -> STSResult:
            # RFC 8461 5.1: a cached, unexpired policy goes on applying when discovery fails.
            if fresh is not None:
                return STSResult(fresh, "cache", failure)
            return STSResult(None, fallback_source, failure)

        try:
            policy_id = parse_txt(await self.txt(f"_mta-sts.{domain}"))
        except DNSError:
            return keep(None, "none")  # no record, or no answer: only a cached policy applies
        except STSError as e:
            return keep(e)
        if policy_id is None:
            return keep(None, "none")
        if fresh is not None and fresh.id == policy_id:
            return STSResult(fresh, "cache")
        recent = self._failed.get(domain)
        if recent is not None and recent[0] == policy_id and now < recent[2] + FAILED_FETCH_TTL:
            return keep(recent[1])
        try:
            policy = parse_policy(await self.fetch(domain), policy_id)
        except STSError as e:
            log.info("MTA-STS policy for {domain} not fetched: {error}", domain=domain, error=str(e))
            if len(self._failed) > 10_000:
                self._failed.clear()
            self._failed[domain] = (policy_id, e, now)
            return keep(e)
        self._failed.pop(domain, None)
        await self.cache.put(domain, CachedPolicy(policy, now))
        return STSResult(policy, "fetched")


# -- the HTTPS fetch (RFC 8461 3.3) ---------------------------------------------------------


class PolicyFetcher:
    """GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt with RFC 8461's checks.

    The host name is resolved through tlsmta's own resolver (so ``[dns.hosts]``
    pins apply) and the certificate is verified for ``mta-sts.DOMAIN`` against
    ``ca_for(domain)`` (the domain's ``tls_ca``) or the system store.
    """

    def __init__(self, reactor: IServiceReactor, addresses: Callable[[str], Deferred[list[str]]], port: Callable[[], int], ca_for: Callable[[str], str | None]):
        self.reactor = reactor
        self.addresses = addresses
        self.port = port
        self.ca_for = ca_for

    async def __call__(self, domain: str) -> str:
        d = self._fetch(domain)
        return await d.addTimeout(FETCH_TIMEOUT, self.reactor, onTimeoutCancel=_timed_out)

    def _fetch(self, domain: str) -> Deferred[str]:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self._get(domain))

    async def _get(self, domain: str) -> str:
        from tlsmta.discovery._resolver import DNSError
        from tlsmta.tls import HTTPSFailure, TooLarge, https_request, read_body

        host = f"mta-sts.{domain}"
        try:
            addresses = await self.addresses(host)
        except DNSError as e:
            raise STSError(f"cannot resolve {host}: {e}", FETCH_ERROR) from None
        if not addresses:
            raise STSError(f"{host} has no address", FETCH_ERROR)
        try:
            response = await https_request(self.reactor, b"GET", host, self.port(), WELL_KNOWN, addresses[0],
                                           self.ca_for(domain), connect_timeout=FETCH_TIMEOUT)
        except HTTPSFailure as e:
            # RFC 8461 3.3: the certificate must be valid for mta-sts.DOMAIN (sts-webpki-invalid).
            raise STSError(f"fetching the policy: {e}", WEBPKI_INVALID if e.certificate else FETCH_ERROR) from None
        # Agent never follows redirects by itself (RFC 8461 3.3: they MUST NOT be followed).
        problem = None
        media = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if response.code != 200:
            problem = STSError(f"{host} answered HTTP {response.code} (only 200 is a policy)", FETCH_ERROR)
        elif media.split(b";")[0].strip().lower() != b"text/plain":
            problem = STSError(f"{host} sent Content-Type {media.decode('latin-1')!r}, not text/plain", POLICY_INVALID)
        try:
            body = await read_body(response, 0 if problem else MAX_POLICY_SIZE)
        except TooLarge:
            raise problem or STSError(f"policy larger than {MAX_POLICY_SIZE} bytes", POLICY_INVALID) from None
        except HTTPSFailure as e:
            raise problem or STSError(f"fetching the policy: {e}", FETCH_ERROR) from None
        if problem is not None:
            raise problem
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise STSError("policy is not UTF-8 text", POLICY_INVALID) from None


def _timed_out(result: Any, timeout: float) -> Any:
    from twisted.internet.defer import CancelledError
    from twisted.internet.defer import TimeoutError as DeferTimeout
    from twisted.python.failure import Failure

    if isinstance(result, Failure) and result.check(CancelledError, DeferTimeout):
        raise STSError(f"policy fetch timed out after {timeout}s", FETCH_ERROR)
    return result
