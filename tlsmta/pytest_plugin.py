"""pytest plugin: the ``tlsmta_relay`` fixture (registered through the ``pytest11`` entry point).

A test that asks for ``tlsmta_relay`` gets a started :class:`tlsmta.testing.Relay`
on a free loopback port, with its own Maildir, stopped after the test::

    def test_signup_sends_welcome(tlsmta_relay):
        app.send_welcome("bob@example.org", smtp=(tlsmta_relay.host, tlsmta_relay.port))
        msg = tlsmta_relay.wait_for(to="bob@example.org", timeout=5)
        assert msg["Subject"] == "Welcome"

Options per test: ``@pytest.mark.tlsmta_relay(tls_lab="expired", http=True)``.
Imports nothing heavy until a test uses the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "tlsmta_relay(tls=True, tls_lab=None, http=False, hostname='localhost', tag_rules=(), keep_messages=0): options for the tlsmta_relay fixture"
    )


def pytest_unconfigure(config: Any) -> None:
    import sys

    testing = sys.modules.get("tlsmta.testing")
    if testing is not None:
        testing.stop_reactor_thread()


@pytest.fixture
def tlsmta_relay(request: Any, tmp_path_factory: Any) -> Iterator[Any]:
    """A started tlsmta dev relay (:class:`tlsmta.testing.Relay`), stopped after the test."""
    from tlsmta.testing import Relay

    marker = request.node.get_closest_marker("tlsmta_relay")
    options = dict(marker.kwargs) if marker is not None else {}
    with Relay(tmp_path_factory.mktemp("tlsmta"), **options) as relay:
        yield relay
