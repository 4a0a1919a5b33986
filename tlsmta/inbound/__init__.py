"""Receiving mail: the ESMTP server shell (``server``, a subclass of
``twisted.mail.smtp.ESMTP`` and its factory), relay control
(``acceptance``), AUTH users (``auth``), the PROXY header from trusted
proxies (``proxyheader``), the ``reuseport:`` endpoint, the ``Received:``
header, and where an accepted message goes (``intake``).

May import smtp, tls, discovery (reverse names), storage, reporting and
config; never delivery (the outbound stack).
"""
