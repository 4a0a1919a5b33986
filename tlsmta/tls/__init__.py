"""TLS: pyOpenSSL contexts and verify plumbing (``contexts``), the pure
certificate verdicts and policy combination (``policy``), RFC 8460 result
names (``rpt_types``), verify and parameter hooks (``hooks``), and a
verified HTTPS client (``https``, for MTA-STS policies and TLS-RPT reports).

May import ``tlsmta.config`` (option parsing helpers) and ``tlsmta.smtp``;
``policy`` and ``rpt_types`` stay pure (no OpenSSL, no files, no reporting).
"""
