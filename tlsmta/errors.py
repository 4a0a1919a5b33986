"""The root of tlsmta's exceptions.

Every error tlsmta raises on purpose derives from :class:`TlsmtaError`, so a
caller can tell ours from a bug. Errors that stand for an SMTP answer derive
from :class:`tlsmta.smtp._reply.SMTPError` and carry it as a
:class:`~tlsmta.smtp._reply.Reply`.

Nothing here imports anything: every part may use it.
"""


class TlsmtaError(Exception):
    """An error tlsmta raises on purpose (configuration, DNS, storage, protocol...)."""
