"""tlsmta: a mail transfer agent on Twisted with serious TLS policy."""

__version__ = "0.1.0"
