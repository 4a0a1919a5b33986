"""Configuration as data and syntax: the TOML loader with its option tables,
validation that names file, table and key, scope resolution per
(binding, domain) (``loader``), route strings (``routes``), the
postmap-style address map files (``address_maps``), the ``tls``
option values as enums (``tls_modes``) and the ``[cluster] redis`` URL
(``redis_address``).

The bottom of the house: imports nothing of tlsmta but itself, its errors
and the domain names of ``tlsmta.smtp``, and no OpenSSL.  The checks
that need this machine (OpenSSL strings, key pairs, hooks, users files) are
asked through the loader's ``Environment``, which ``tlsmta.app``'s preflight
implements.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.config._address_maps import AddressMap, AddressMapError, split_address
from tlsmta.config._dkim import DkimDomain
from tlsmta.config._door import DnsblZone, Rate
from tlsmta.config._loader import (
    BAD_CERTIFICATE_LAB_MODES,
    CERTIFICATE_LAB_MODES,
    DELIVERY_OPTIONS,
    LAB_MODES,
    TAG_PATTERN,
    Config,
    ConfigError,
    ListenerConfig,
    Overrides,
    Resolved,
    from_dict,
    load,
    parse_protocols,
    resolve,
    select_binding,
)
from tlsmta.config._redis_address import RedisAddress, RedisTransport
from tlsmta.config._routes import Route, RouteError, parse_route
from tlsmta.config._tls_modes import DANE_REQUIRED_WORD, ListenerTLS, OutboundTLS

__all__ = [
    "BAD_CERTIFICATE_LAB_MODES",
    "AddressMap",
    "AddressMapError",
    "CERTIFICATE_LAB_MODES",
    "Config",
    "ConfigError",
    "DANE_REQUIRED_WORD",
    "DELIVERY_OPTIONS",
    "DkimDomain",
    "DnsblZone",
    "from_dict",
    "LAB_MODES",
    "ListenerConfig",
    "ListenerTLS",
    "load",
    "OutboundTLS",
    "Overrides",
    "parse_protocols",
    "parse_route",
    "Rate",
    "resolve",
    "RedisAddress",
    "RedisTransport",
    "Resolved",
    "Route",
    "TAG_PATTERN",
    "RouteError",
    "select_binding",
    "split_address",
]
