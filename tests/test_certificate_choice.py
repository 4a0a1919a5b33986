"""Which certificate a listener serves, without a reactor: the SNI choice (pure), chains per key type
(checked as check-config checks them), and the facts read from a certificate file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tlsmta.tls import KeyPairError, check_chains, read_certificate
from tlsmta.tls._certificates import choose_by_server_name

SETS = (("mx.example.test",), ("*.example.org", "example.org"), ("mail.example.org",), ("*.example.net",))


@pytest.mark.parametrize(
    "server_name, chosen",
    [
        ("mx.example.test", 0),
        ("MX.Example.Test.", 0),  # case and a trailing dot do not matter
        ("example.org", 1),
        ("smtp.example.org", 1),  # the wildcard covers one label ...
        ("a.b.example.org", None),  # ... not two (RFC 6125 6.4.3)
        ("mail.example.org", 2),  # a name written out wins over an earlier wildcard
        ("example.net", None),  # "*.example.net" does not match the bare domain
        ("other.test", None),
        (None, None),  # no SNI: the default
        ("", None),
        ("127.0.0.1", None),
    ],
)
def test_sni_picks_the_certificate_set_whose_dns_names_match(server_name: str | None, chosen: int | None) -> None:
    """RFC 6125 matching of the client's SNI name against each set's DNS names; None serves the default."""
    assert choose_by_server_name(SETS, server_name) == chosen


def test_partial_label_wildcards_match_nothing() -> None:
    """``f*.example.org`` is not a pattern a certificate may use for SNI (RFC 6125 6.4.3, service_identity)."""
    assert choose_by_server_name([("f*.example.org",)], "foo.example.org") is None


def _write(directory: Path, name: str, leaf: trustme.LeafCert) -> tuple[str, str]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_one_chain_per_key_type(tmp_path: Path) -> None:
    """An RSA and an ECDSA chain may be served together; two of one key type may not (OpenSSL
    would keep only the second), and the problem names both files."""
    ca = trustme.CA()
    rsa = _write(tmp_path, "rsa", ca.issue_cert("mx.example.test", key_type=trustme.KeyType.RSA))
    ecdsa = _write(tmp_path, "ecdsa", ca.issue_cert("mx.example.test", key_type=trustme.KeyType.ECDSA))
    other_ecdsa = _write(tmp_path, "ecdsa2", ca.issue_cert("mx.example.test", key_type=trustme.KeyType.ECDSA))
    assert [facts.key_type for facts in check_chains([rsa, ecdsa])] == ["rsa", "ecdsa"]
    with pytest.raises(KeyPairError) as info:
        check_chains([ecdsa, rsa, other_ecdsa])
    assert info.value.key == "tls_certificate"
    assert ecdsa[0] in str(info.value) and other_ecdsa[0] in str(info.value) and "both ecdsa" in str(info.value)


def test_an_sni_certificate_needs_a_dns_name(tmp_path: Path) -> None:
    """A certificate for an IP address only has nothing an SNI host name could match."""
    ip_only = _write(tmp_path, "ip", trustme.CA().issue_cert("127.0.0.1"))
    check_chains([ip_only])
    with pytest.raises(KeyPairError, match="no DNS subjectAltName"):
        check_chains([ip_only], sni=True)


def test_certificate_facts(tmp_path: Path) -> None:
    """The leaf of a chain file: subject, key type, DNS names and notAfter, as logs and metrics show them."""
    leaf = trustme.CA().issue_cert("mx.example.test", "127.0.0.1", common_name="mx.example.test")
    cert, _ = _write(tmp_path, "leaf", leaf)
    facts = read_certificate(cert)
    assert facts.dns_names == ("mx.example.test",)
    assert facts.key_type == "ecdsa"
    assert "CN=mx.example.test" in facts.subject
    assert facts.not_after.tzinfo is not None and facts.path == cert
