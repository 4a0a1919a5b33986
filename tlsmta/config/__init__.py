"""Configuration as data and syntax: the TOML loader with its option tables,
validation that names file, table and key, scope resolution per
(binding, domain) (``loader``) and route strings (``routes``).

The bottom of the house: imports nothing of tlsmta but itself, its errors
and the domain names of ``tlsmta.smtp.names``, and no OpenSSL.  The checks
that need this machine (OpenSSL strings, key pairs, hooks, users files) are
asked through ``loader.Environment``, which ``tlsmta.app.preflight``
implements.
"""
