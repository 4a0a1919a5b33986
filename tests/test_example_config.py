"""etc/tlsmta.toml documents every option and validates once its files exist."""

from __future__ import annotations

import os
import re
from typing import Any

from tlsmta.config import _loader as configuration

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "tlsmta.toml")


def _example() -> str:
    with open(EXAMPLE, encoding="utf-8") as f:
        return f.read()


def test_example_mentions_every_option() -> None:
    """Every option tlsmta knows appears (set or commented) in the annotated example."""
    text = _example()
    tables = [
        configuration.DELIVERY_OPTIONS,
        configuration.GLOBAL_ONLY_OPTIONS,
        configuration.LISTENER_OPTIONS,
        configuration.SPOOL_OPTIONS,
        configuration.QUEUE_OPTIONS,
        configuration.HOOK_OPTIONS,
        configuration.BINDING_RULE_OPTIONS,
        configuration.METRICS_OPTIONS,
        configuration.CONTROL_OPTIONS,
        configuration.HTTP_OPTIONS,
        configuration.TLSRPT_INBOX_OPTIONS,
        configuration.CLUSTER_OPTIONS,
        configuration.DEV_OPTIONS,
        configuration.DKIM_OPTIONS,
    ]
    missing = [name for table in tables for name in table if not re.search(rf"^#? ?{name} =", text, re.M)]
    assert missing == []


def test_example_validates_with_real_files(tmp_path: Any, pki: Any) -> None:
    """With its certificate paths pointing at real files, the example is a valid configuration."""
    users = tmp_path / "users"
    users.write_text("")
    text = (
        _example()
        .replace("/etc/tlsmta/mx.pem", pki.good.cert)
        .replace("/etc/tlsmta/mx.key", pki.good.key)
        .replace("/etc/tlsmta/partner-ca.pem", pki.ca_pem)
        .replace("/etc/tlsmta/client-ca.pem", pki.ca_pem)
        .replace('"/etc/tlsmta/users"', f'"{users}"')
    )
    path = tmp_path / "tlsmta.toml"
    path.write_text(text)
    config = configuration.load(str(path))
    assert [listener.name for listener in config.listeners] == ["mx", "submission"]
    resolved = configuration.resolve(config, "example.org", "out1")
    assert resolved["tls_verify"].value == "ca" and resolved["tls_verify"].scope == 'binding."out1".domain."example.org"'
    assert resolved["tls"].value == "required" and resolved["tls"].scope == 'binding_group."bulk".domain."example.org"'
