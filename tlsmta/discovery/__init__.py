"""What the recipient domain publishes: DNS lookups with pinned answers
(``resolver``), MTA-STS discovery and policy cache (``mtasts``), DANE TLSA
lookups and chain checks (``dane``), and all of it gathered for one
destination (``published``).

May import ``tlsmta.tls`` and ``tlsmta.config``; never inbound, delivery or app.
"""
