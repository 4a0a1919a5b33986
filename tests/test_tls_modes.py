"""The ``tls`` options as values: the loader makes OutboundTLS and ListenerTLS, which print as the file's word."""

from __future__ import annotations

import json

import pytest

from tlsmta.config import _loader as configuration
from tlsmta.config._tls_modes import ListenerTLS, OutboundTLS
from tlsmta.testing import build_config, dev_listener
from tlsmta.tls._policy import Requirement, TLSAction, TLSFailure, VerifyMode, starttls_decision


def test_the_outbound_option_is_an_outbound_tls() -> None:
    """Set at any scope, and as the built-in default, the resolved value is the enum member."""
    config = build_config({"global": {"tls": "Required"}, "domain": {"plain.test": {"tls": "no"}}})
    assert configuration.resolve(config, "example.test")["tls"].value is OutboundTLS.REQUIRED
    assert configuration.resolve(config, "plain.test")["tls"].value is OutboundTLS.NO
    assert configuration.resolve(build_config({}), "example.test")["tls"].value is OutboundTLS.NO


def test_the_listener_option_is_a_listener_tls() -> None:
    (implicit,) = build_config({"listener": [dev_listener(tls="IMPLICIT", tls_certificate="auto")]}).listeners
    (plain,) = build_config({"listener": [dev_listener()]}).listeners
    assert implicit.tls is ListenerTLS.IMPLICIT and plain.tls is ListenerTLS.NO


@pytest.mark.parametrize("mode", [*OutboundTLS, *ListenerTLS])
def test_a_mode_prints_as_its_word(mode: OutboundTLS | ListenerTLS) -> None:
    """Log lines, `tlsmta policy` and JSON show what the configuration file says."""
    assert str(mode) == f"{mode}" == mode.value
    assert json.dumps({"tls": mode}) == json.dumps({"tls": mode.value})


def test_a_bad_word_is_refused_with_the_choices() -> None:
    with pytest.raises(configuration.ConfigError) as refused:
        build_config({"global": {"tls": "sometimes"}})
    assert "tls: must be one of no, ifavailable, required (got 'sometimes')" in str(refused.value)


def test_a_requirement_holds_the_enum_even_when_given_the_word() -> None:
    """Requirement converts, so that the decisions compare members whatever the caller passed."""
    req = Requirement("local", "ifavailable", VerifyMode.NO)
    assert req.tls is OutboundTLS.IFAVAILABLE
    assert starttls_decision(req.tls, advertised=False) is TLSAction.PLAIN
    assert isinstance(starttls_decision(OutboundTLS.REQUIRED, advertised=False), TLSFailure)
