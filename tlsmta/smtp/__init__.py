"""SMTP, pure: one reply value and the SMTP error (``reply``), command and
parameter parsing (``commands``), the DATA reader (dot-unstuffing, line
limits, hop counting, the ``TLS-Required:`` scan; ``data``), SASL responses
(``sasl``), the client's reply parser and dot-stuffer (``client_codec``),
domain names in their one canonical form with the domain of an address
(``names``), and the two session state machines, ``server_session`` and
``client_session``.

No I/O and no reactor.  May import only the standard library, attrs and
idna; of tlsmta only ``tlsmta.errors``.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``), except the
two session modules, whose event classes (``Send``, ``StartTLS``, ...) are
used as their namespaces.
"""

from tlsmta.smtp._commands import Reject, parse_path
from tlsmta.smtp._data import says_tls_required_no
from tlsmta.smtp._names import DomainNameError, domain_of, normalize_domain, normalized_domain_of
from tlsmta.smtp._reply import Reply, SMTPError

__all__ = [
    "domain_of",
    "DomainNameError",
    "normalize_domain",
    "normalized_domain_of",
    "parse_path",
    "Reject",
    "Reply",
    "says_tls_required_no",
    "SMTPError",
]
