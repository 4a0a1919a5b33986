"""Python processes started by the tests get the loopback-only guard (tests/conftest.py sets PYTHONPATH)."""

import loopback_only

loopback_only.install()
