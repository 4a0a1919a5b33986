"""The dev test relay: the web page and JSON API (``webui`` and ``web/``),
captured messages read from the Maildir (``capture``, ``mailview``), the
TLS lab (``tlslab``), the dev CA and its certificates (``devcert``) and
"Release" to a smarthost (``release``).

May import storage, smtp, tls, reporting and config.
"""
