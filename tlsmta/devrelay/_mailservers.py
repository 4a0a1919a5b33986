"""The dev relay's POP3 and IMAP services (``[dev] pop3``, ``[dev] imap``) for one configuration."""

from __future__ import annotations

import time

from tlsmta.config import Config
from tlsmta.devrelay._capture import CapturedMail, captured_maildir
from tlsmta.devrelay._imap import IMAPFactory, IMAPRealm, Uids
from tlsmta.devrelay._mailaccess import (
    Access,
    LoginCheck,
    MailAccessService,
    RunBlocking,
    dev_tls_context,
    login_portal,
)
from tlsmta.devrelay._pop3 import POP3Factory, POP3Realm
from tlsmta.network import IServiceReactor
from tlsmta.reporting import EventBus


def mail_access_services(reactor: IServiceReactor, config: Config, hostname: str, logins: LoginCheck,
                         run_blocking: RunBlocking, run_in_thread: RunBlocking, events: EventBus) -> list[MailAccessService]:
    """One service per ``[dev]`` endpoint that is set (none: an empty list); deletes are told to ``events``."""
    dev = config.dev
    if not (dev["pop3"] or dev["imap"]):
        return []
    maildir = captured_maildir(config)
    assert maildir is not None, "the loader refuses [dev] pop3/imap without a Maildir to serve"
    access = Access(CapturedMail(maildir), logins, run_blocking, run_in_thread, events)
    context = dev_tls_context(config, hostname)
    services = []
    if dev["pop3"]:
        implicit = dev["pop3_tls"] == "implicit"
        pop3 = POP3Factory(login_portal(POP3Realm(access), access), None if implicit else context)
        services.append(MailAccessService(reactor, "pop3", dev["pop3"], pop3, context if implicit else None))
    if dev["imap"]:
        implicit = dev["imap_tls"] == "implicit"
        realm = IMAPRealm(access, Uids(validity=int(time.time())))
        imap = IMAPFactory(login_portal(realm, access), None if implicit else context)
        services.append(MailAccessService(reactor, "imap", dev["imap"], imap, context if implicit else None))
    return services
