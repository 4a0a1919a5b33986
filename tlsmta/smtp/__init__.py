"""SMTP wire format, pure: command and parameter parsing, the DATA reader
(dot-unstuffing, line limits, hop counting), and the client's reply parser
and dot-stuffer.

No I/O and no reactor.  May import only the standard library; nothing else
of tlsmta.
"""
