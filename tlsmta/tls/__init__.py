"""TLS: pyOpenSSL contexts and verify plumbing (``contexts``), the pure
certificate verdicts and policy combination (``policy``), verify and
parameter hooks (``hooks``), and a verified HTTPS client (``https``, for
MTA-STS policies and TLS-RPT reports).

May import ``tlsmta.config`` (option parsing helpers) and ``tlsmta.smtp``;
``policy`` stays pure (no OpenSSL, no files, no reporting).
"""
