"""SMTP wire format, pure: command and parameter parsing, the DATA reader
(dot-unstuffing, line limits, hop counting), the client's reply parser
and dot-stuffer, and domain names in their one canonical form with the
domain of an address (``names``).

No I/O and no reactor.  May import only the standard library, attrs and
idna; of tlsmta only ``tlsmta.errors``.
"""
