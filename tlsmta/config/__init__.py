"""Configuration as data and syntax: the TOML loader with its option tables,
validation that names file, table and key, scope resolution per
(binding, domain) (``loader``) and route strings (``routes``).

The bottom of the house: imports nothing of tlsmta but itself (today
``loader`` still reaches into tls, inbound.auth and devrelay for its
environment checks; see docs/architecture.md).
"""
