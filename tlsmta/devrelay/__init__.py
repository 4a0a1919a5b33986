"""The dev test relay: the web page and JSON API (``webui`` and ``web/``),
captured messages indexed from the Maildir (``capture``, ``mailview``),
search, filters and automatic tags (``search``), the TLS lab (``tlslab``),
SMTP failures on purpose (``chaos``), POP3 and IMAP over the captured mail
(``mailservers``, ``mailaccess``, ``pop3``, ``imap``), checks per message
(``checks``, ``checks_html``, ``checks_mime``, ``css``, ``linkcheck``), the
send API and the webhook (``webui_tools``, ``send``, ``webhook``), the dev CA
and its certificates (``devcert``) and "Release" to a smarthost (``release``,
and each release's state: ``releases``).

May import storage, smtp, tls, reporting and config.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.devrelay._capture import CapturedMail, MessageNotFound, captured_maildir
from tlsmta.devrelay._chaos import ChaosError, ChaosRules, FailureRule
from tlsmta.devrelay._checks_html import html_problems, links_of
from tlsmta.devrelay._devcert import LAB_MODES, dev_ca_path, ensure_dev_ca, ensure_dev_certificate
from tlsmta.devrelay._mailaccess import MailAccessService
from tlsmta.devrelay._mailservers import mail_access_services
from tlsmta.devrelay._mailview import envelope_of, parse_message
from tlsmta.devrelay._tlslab import (
    LabError,
    LabListener,
    dev_names,
    lab_listener,
    lab_server_tls,
    log_dev_ca,
    with_tls_lab,
)
from tlsmta.devrelay._webui import web_service

__all__ = [
    "captured_maildir",
    "CapturedMail",
    "ChaosError",
    "ChaosRules",
    "dev_ca_path",
    "dev_names",
    "ensure_dev_ca",
    "ensure_dev_certificate",
    "envelope_of",
    "FailureRule",
    "html_problems",
    "lab_listener",
    "LAB_MODES",
    "lab_server_tls",
    "LabError",
    "LabListener",
    "links_of",
    "log_dev_ca",
    "mail_access_services",
    "MailAccessService",
    "MessageNotFound",
    "parse_message",
    "web_service",
    "with_tls_lab",
]
