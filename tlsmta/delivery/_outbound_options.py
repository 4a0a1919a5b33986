"""The delivery options of a destination as the values the client and the back-off take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tlsmta.delivery._backoff import Policy
from tlsmta.delivery._client import Timeouts


def timeouts_of(options: Mapping[str, Any]) -> Timeouts:
    """The ``*_timeout`` options of one destination."""
    return Timeouts(
        greeting=options["greeting_timeout"], command=options["command_timeout"],
        data=options["data_timeout"], data_end=options["data_end_timeout"],
    )


def backoff_policy(options: Mapping[str, Any]) -> Policy:
    """The ``destination_backoff_*`` options of one destination."""
    return Policy(options["destination_backoff_after"], options["destination_backoff_min"], options["destination_backoff_max"])
