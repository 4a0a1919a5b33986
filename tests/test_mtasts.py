"""MTA-STS (RFC 8461) pure parts and discovery rules, without a reactor or a network."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from tlsmta.discovery import _mtasts as mtasts
from tlsmta.discovery._mtasts import STSError, mx_matches, parse_policy, parse_txt
from tlsmta.discovery._resolver import DNSPermanent, DNSTransient

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


def test_txt_id_is_read() -> None:
    """The id of the one v=STSv1 record is the policy id; other TXT records are ignored."""
    assert parse_txt(["v=spf1 -all", "v=STSv1; id=20261125T010101;"]) == "20261125T010101"
    assert parse_txt(["v=STSv1;id=abc"]) == "abc"


def test_no_sts_txt_record_is_no_policy() -> None:
    """Without a record starting v=STSv1 there is no policy (not an error)."""
    assert parse_txt([]) is None
    assert parse_txt(["v=spf1 -all", "V=STSv1; id=1"]) is None
    assert parse_txt(["v=STSv10; id=1", "v=STSv1"]) is None  # neither begins with "v=STSv1;"


@pytest.mark.parametrize(
    "records",
    [
        ["v=STSv1; id=1", "v=STSv1; id=2"],  # RFC 8461 3.1: more than one record
        ["v=STSv1;"],  # no id
        ["v=STSv1; id=1", "v=STSv1 ; id=2"],
        ["v=STSv1; id=has-dash"],  # id is 1*32 alphanumerics
        ["v=STSv1; id=" + "a" * 33],
        ["v=STSv1; id=1; bad field"],
    ],
)
def test_bad_txt_records_are_errors(records: list[str]) -> None:
    """Malformed or duplicate STS records are STSError (treated as no record, and reportable)."""
    with pytest.raises(STSError):
        parse_txt(records)


def test_policy_parses() -> None:
    """CRLF policy lines give mode, mx patterns (in A-label lower case), max_age and the id."""
    policy = parse_policy(POLICY, "id1")
    assert policy.mode == "enforce"
    assert policy.mx == ("mx1.example.test", "*.example.net")
    assert policy.max_age == 86400 and policy.id == "id1"
    assert policy.strings == ["version: STSv1", "mode: enforce", "mx: mx1.example.test", "mx: *.example.net", "max_age: 86400"]


def test_policy_lf_lines_unknown_keys_and_capped_max_age() -> None:
    """LF line ends work, unknown keys are ignored, max_age is capped at one year."""
    policy = parse_policy("version: STSv1\nmode: testing\nmx: MX.Example.TEST\nfoo: bar\nmax_age: 9999999999\n")
    assert policy.mode == "testing" and policy.mx == ("mx.example.test",)
    assert policy.max_age == mtasts.MAX_AGE_LIMIT


def test_mode_none_needs_no_mx() -> None:
    """mode: none is a valid policy without mx lines."""
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 60\n").mode == "none"


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a.example\nmax_age: 1\n",  # no version
        "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmax_age: 1\n",  # enforce without mx
        "version: STSv1\nmode: enforce\nmx: a.example\n",  # no max_age
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",  # more than 10 digits
        "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: mx.*.example\nmax_age: 1\n",
        "<html>not a policy</html>",
    ],
)
def test_invalid_policies(text: str) -> None:
    """Each way a policy can be unusable is sts-policy-invalid."""
    with pytest.raises(STSError) as e:
        parse_policy(text)
    assert e.value.result_type == mtasts.POLICY_INVALID


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("mx1.example.test", "mx1.example.test", True),
        ("mx1.example.test", "MX1.Example.Test.", True),
        ("mx1.example.test", "mx2.example.test", False),
        ("*.example.net", "mx.example.net", True),
        ("*.example.net", "example.net", False),  # the wildcard is exactly one label
        ("*.example.net", "a.b.example.net", False),
        ("*.example.net", "mx.example.network", False),
        ("*.bücher.example", "mx.xn--bcher-kva.example", True),
    ],
)
def test_mx_patterns(pattern: str, host: str, ok: bool) -> None:
    """RFC 8461 4.1: exact names, or one leading wildcard label matching one label."""
    assert mx_matches(pattern, host) is ok


# -- discovery and the cache (RFC 8461 3.3, 5.1) ---------------------------------------------


class Lab:
    """A fake TXT answer and policy server around an STSResolver with an on-disk cache."""

    def __init__(self, tmp_path: Any):
        self.txt_answer: Any = ["v=STSv1; id=one"]
        self.policy_answer: Any = POLICY
        self.fetches = 0
        self.now = 1000.0
        self.cache_dir = str(tmp_path / "mta-sts")
        self.resolver = self.make()

    def make(self) -> mtasts.STSResolver:
        return mtasts.STSResolver(self.txt, self.fetch, mtasts.STSCache(self.cache_dir), now=lambda: self.now)

    def txt(self, name: str) -> Deferred[list[str]]:
        assert name == "_mta-sts.example.test"
        if isinstance(self.txt_answer, Exception):
            return fail(self.txt_answer)
        return succeed(self.txt_answer)

    async def fetch(self, domain: str) -> str:
        self.fetches += 1
        if isinstance(self.policy_answer, Exception):
            raise self.policy_answer
        return self.policy_answer

    def result(self) -> mtasts.STSResult:
        out: list[Any] = []
        self.resolver.policy_for("example.test").addBoth(out.append)
        assert out, "the fake lookups are synchronous"
        if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]


def test_fetched_then_cached_by_id(tmp_path: Any) -> None:
    """A policy is fetched once, then reused while the TXT id is the same, also after a restart (disk)."""
    lab = Lab(tmp_path)
    first = lab.result()
    assert first.source == "fetched" and first.policy is not None and first.policy.mode == "enforce"
    assert lab.result().source == "cache"
    lab.resolver = lab.make()  # a restart: only the disk cache is left
    again = lab.result()
    assert again.source == "cache" and again.policy == first.policy
    assert lab.fetches == 1


def test_new_txt_id_refetches(tmp_path: Any) -> None:
    """A changed TXT id makes the sender fetch the policy again."""
    lab = Lab(tmp_path)
    lab.result()
    lab.txt_answer = ["v=STSv1; id=two"]
    lab.policy_answer = POLICY.replace("enforce", "testing")
    result = lab.result()
    assert result.source == "fetched" and result.policy.mode == "testing" and result.policy.id == "two"
    assert lab.fetches == 2


def test_expired_policy_is_refetched(tmp_path: Any) -> None:
    """After max_age the cached policy is not used any more: it is fetched again."""
    lab = Lab(tmp_path)
    lab.result()
    lab.now += 86400
    assert lab.result().source == "fetched"
    assert lab.fetches == 2


@pytest.mark.parametrize(
    "txt",
    [DNSTransient("TXT lookup: timeout"), DNSPermanent("TXT lookup: no such domain"), ["v=spf1 -all"]],
)
def test_cached_policy_survives_txt_failures(tmp_path: Any, txt: Any) -> None:
    """RFC 8461 5.1: a TXT lookup that fails or finds nothing leaves an unexpired cached policy in force."""
    lab = Lab(tmp_path)
    lab.result()
    lab.txt_answer = txt
    result = lab.result()
    assert result.source == "cache" and result.policy is not None and result.policy.mode == "enforce"


def test_cached_policy_survives_fetch_failure(tmp_path: Any) -> None:
    """A new id whose policy cannot be fetched keeps the cached policy, and says why."""
    lab = Lab(tmp_path)
    lab.result()
    lab.txt_answer = ["v=STSv1; id=two"]
    lab.policy_answer = STSError("certificate verify failed", mtasts.WEBPKI_INVALID)
    result = lab.result()
    assert result.source == "cache" and result.policy.id == "one"
    assert result.failure is not None and result.failure.result_type == mtasts.WEBPKI_INVALID


def test_fetch_failure_without_cache_is_no_policy(tmp_path: Any) -> None:
    """Without a cached policy a failed fetch means no policy, with the failure kept for TLS-RPT."""
    lab = Lab(tmp_path)
    lab.policy_answer = STSError("HTTP 404", mtasts.FETCH_ERROR)
    result = lab.result()
    assert result.policy is None and result.source == "failed"
    assert result.failure.result_type == mtasts.FETCH_ERROR


def test_invalid_policy_is_not_cached(tmp_path: Any) -> None:
    """An invalid policy file is sts-policy-invalid and nothing is cached."""
    lab = Lab(tmp_path)
    lab.policy_answer = "version: STSv1\nmode: enforce\n"
    result = lab.result()
    assert result.policy is None and result.failure.result_type == mtasts.POLICY_INVALID
    assert lab.resolver.cache.read_blocking("example.test") is None


def test_no_record_no_cache_is_no_policy(tmp_path: Any) -> None:
    """No TXT record and nothing cached: no MTA-STS, nothing fetched."""
    lab = Lab(tmp_path)
    lab.txt_answer = DNSPermanent("no such domain")
    result = lab.result()
    assert result.policy is None and result.source == "none" and result.failure is None
    assert lab.fetches == 0


def test_concurrent_lookups_share_one_fetch(tmp_path: Any) -> None:
    """Lookups for one domain running at the same time share one fetch."""
    lab = Lab(tmp_path)
    gate: Deferred[str] = Deferred()

    async def slow_fetch(domain: str) -> str:
        lab.fetches += 1
        return await gate

    lab.resolver.fetch = slow_fetch
    results: list[Any] = []
    lab.resolver.policy_for("example.test").addCallback(results.append)
    lab.resolver.policy_for("example.test").addCallback(results.append)
    gate.callback(POLICY)
    assert len(results) == 2 and results[0] is results[1]
    assert lab.fetches == 1


def test_failed_fetch_is_not_retried_at_once(tmp_path: Any) -> None:
    """A failed fetch is remembered for a few minutes (deliveries do not each wait for it);
    after that, or with a new TXT id, the policy is fetched again."""
    lab = Lab(tmp_path)
    lab.policy_answer = STSError("timed out", mtasts.FETCH_ERROR)
    assert lab.result().failure.result_type == mtasts.FETCH_ERROR
    assert lab.result().failure.result_type == mtasts.FETCH_ERROR
    assert lab.fetches == 1
    lab.now += mtasts.FAILED_FETCH_TTL
    lab.policy_answer = POLICY
    assert lab.result().source == "fetched"
    assert lab.fetches == 2


def test_options_are_validated() -> None:
    """mta_sts/dane are per-domain booleans, mta_sts_https_port and tlsrpt_* global only;
    bad values name the table and key."""
    from tlsmta.config import _loader as configuration

    config = configuration.from_dict({
        "global": {"mta_sts_https_port": 8443, "tlsrpt_reports": True, "tlsrpt_contact": "ops@example.net"},
        "domain": {"legacy.example": {"mta_sts": False, "dane": False}},
    })
    assert config.global_option("mta_sts_https_port") == 8443 and config.global_option("tlsrpt_reports") is True
    resolved = configuration.resolve(config, "legacy.example")
    assert (resolved["mta_sts"].value, resolved["mta_sts"].scope) == (False, 'domain."legacy.example"')
    assert configuration.resolve(config, "other.example")["dane"].value is True
    with pytest.raises(configuration.ConfigError) as e:
        configuration.from_dict({
            "global": {"mta_sts_https_port": 0, "tlsrpt_reports": "yes"},
            "domain": {"x.example": {"mta_sts": "no", "mta_sts_https_port": 443}},
        }, "t.toml")
    text = str(e.value)
    assert "t.toml: [global] mta_sts_https_port: must be at least 1" in text
    assert "t.toml: [global] tlsrpt_reports: must be true or false" in text
    assert 't.toml: [domain."x.example"] mta_sts: must be true or false' in text
    assert 't.toml: [domain."x.example"] mta_sts_https_port: unknown option' in text
