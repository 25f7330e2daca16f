"""James's ``ValidSenderDomainHandler``: refuse a sender whose domain cannot receive mail.

Bounces and replies to such a sender could never be delivered, so the mail is refused at
MAIL.  A domain can receive mail when it has MX records or, failing those, an address
(James's ``findMXRecords`` falls back to the domain's own A record; RFC 5321 §5.1 calls it
the implicit MX).  Asked through the server's resolver (``dnsservice.xml``).
"""

from __future__ import annotations

import logging

import trio

from chainmail.protocol.replies import Reply
from chainmail.remote.dns import DnsError, DnsTemporaryError
from chainmail.verdict import HookResult

from .dnsrbl import lookup_budget
from .helo import exempt, ip_literal, temporary_failure

__all__ = ["ValidSenderDomainHandler"]

log = logging.getLogger("chainmail.senderdomain")


class ValidSenderDomainHandler:
    """Refuse ``MAIL FROM`` whose domain has neither MX nor address records with
    ``501 5.1.7 sender <x> contains a domain with no valid MX records``.  The null sender
    passes.  A DNS failure (timeout, SERVFAIL) answers ``451 4.4.3 Temporarily rejected:
    Problem on DNS lookup of <domain>`` so that the client retries.  Clients allowed to relay
    (unless ``checkAuthNetworks``) and authenticated users (unless ``checkAuthUsers``) are
    not checked."""

    parameters = ("checkAuthNetworks", "checkAuthUsers")

    def configure(self, config):
        self.check_networks = config.get_bool("checkAuthNetworks", False)
        self.check_users = config.get_bool("checkAuthUsers", False)

    async def on_mail(self, session, sender):
        if sender is None or not sender.domain:
            return None
        if exempt(session, self.check_networks, self.check_users):
            return None
        domain = sender.domain.rstrip(".")
        if ip_literal(domain) is not None:
            return None   # an address literal names its host directly
        try:
            with trio.fail_after(lookup_budget(session.server)):
                valid = await receives_mail(session.server.dns, domain)
        except (DnsTemporaryError, trio.TooSlowError) as exc:
            log.warning("%s: sender domain %s not checked: %s", session.id, domain,
                        str(exc) or "no answer in time")
            return HookResult.reply(temporary_failure(domain))
        if valid:
            return None
        return HookResult.reply(Reply.of(
            501, f"sender <{sender}> contains a domain with no valid MX records", "5.1.7"))


async def receives_mail(dns, domain: str) -> bool:
    """MX records, or an address for the domain itself.  A null MX (RFC 7505: the domain
    accepts no mail) and NXDOMAIN are False; a failed lookup raises DnsTemporaryError."""
    try:
        if await dns.find_mx(domain):
            return True
    except DnsTemporaryError:
        raise
    except DnsError:
        return False   # NXDOMAIN or a null MX
    return bool(await dns.addresses(domain))
