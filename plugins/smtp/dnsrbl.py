"""James's ``DNSRBLHandler``: refuse mail from clients listed on a DNS block list.

A block list (RFC 5782) answers an A record for ``<reversed address>.<zone>`` when the
address is listed.  The client is looked up once per connection, at its first MAIL (after
AUTH, so that an authenticated user is never refused), and a listed client is refused at
MAIL and at every RCPT.  Every question goes through the server's resolver
(``dnsservice.xml``), asynchronously and with its timeout.
"""

from __future__ import annotations

import logging
import math

import trio

from chainmail.protocol.replies import Reply
from chainmail.remote.dns import DnsTemporaryError, reversed_address
from chainmail.verdict import HookResult

__all__ = ["DNSRBLHandler", "zone_names", "first_txt", "lookup_budget"]

log = logging.getLogger("chainmail.dnsrbl")

#: connection state: None (not listed) or the refusal, once the lookup was made
_CHECKED = "dnsrbl.checked"
_LISTED = "dnsrbl.listed"


#: seconds the lookups of one check may take at most (kept below the hook's own budget)
LOOKUP_BUDGET = 20.0


def lookup_budget(server, cap: float = LOOKUP_BUDGET) -> float:
    """Seconds a handler's DNS questions for one command may take: ``cap``, or 80 % of the
    server's ``handlerTimeout`` when that is lower, so that the handler answers itself."""
    chain_timeout = getattr(getattr(server, "chain", None), "timeout", math.inf)
    return min(cap, chain_timeout * 0.8)


def zone_names(config, key: str) -> list[str]:
    """The DNS zones of a repeated parameter, without their final dot (James's samples write
    absolute names: ``sbl-xbl.spamhaus.org.``)."""
    zones = []
    for text in config.get_list(key):
        zone = text.strip().rstrip(".").lower()
        if not zone or any(not label for label in zone.split(".")) or " " in zone:
            raise config.error(key, f"{text!r} is not a DNS zone name (such as zen.example.org)")
        zones.append(zone)
    return zones


class DNSRBLHandler:
    """Look the client's address up in the ``rblservers/whitelist`` zones, then in the
    ``rblservers/blacklist`` zones (at least one zone in all).  A whitelist hit ends the
    check: not listed.  A blacklist hit refuses MAIL and RCPT with James's
    ``554 5.7.1 Rejected: unauthenticated e-mail from /<ip> is restricted.  Contact the
    postmaster for details.``, or, with ``getDetail``, ``554 5.7.1 <the zone's TXT record>``.
    Clients allowed to relay and authenticated sessions are never looked up.  A lookup that
    fails (timeout, SERVFAIL) counts as not listed, as in James, and is logged; so do the
    lists not answered within :func:`lookup_budget`."""

    parameters = ("rblservers", "rblservers.whitelist", "rblservers.blacklist", "getDetail")

    def configure(self, config):
        self.whitelist = zone_names(config, "rblservers.whitelist")
        self.blacklist = zone_names(config, "rblservers.blacklist")
        if not self.whitelist and not self.blacklist:
            raise config.error("rblservers", "at least one <rblservers><whitelist> or "
                                             "<rblservers><blacklist> zone (as James requires)")
        self.get_detail = config.get_bool("getDetail", False)

    async def on_mail(self, session):
        return await self.check(session)

    async def on_rcpt(self, session):
        return await self.check(session)

    async def check(self, session) -> HookResult | None:
        """The refusal for a listed client, None otherwise; looked up once per connection."""
        if session.relaying_allowed or session.auth_user is not None:
            return None
        state = session.state
        if not state.get(_CHECKED):
            state[_LISTED] = None
            with trio.move_on_after(lookup_budget(session.server)) as scope:
                state[_LISTED] = await self.lookup(session.server.dns, session.remote_ip)
            if scope.cancelled_caught:
                log.warning("%s: DNS block lists did not answer about %s in time: taken as "
                            "not listed", session.id, session.remote_ip)
            state[_CHECKED] = True
        reply = state.get(_LISTED)
        return None if reply is None else HookResult.reply(reply)

    async def lookup(self, dns, ip: str) -> Reply | None:
        """The refusal for ``ip`` when a blacklist lists it and no whitelist does."""
        try:
            reversed_ip = reversed_address(ip)
        except ValueError:
            return None   # not an IP address (a test peer): nothing to look up
        for zone in self.whitelist:
            if await _listed(dns, f"{reversed_ip}.{zone}", ip, zone):
                log.info("connection from %s whitelisted by %s", ip, zone)
                return None
        for zone in self.blacklist:
            name = f"{reversed_ip}.{zone}"
            if not await _listed(dns, name, ip, zone):
                continue
            log.info("connection from %s restricted by %s to authenticated mail", ip, zone)
            detail = await first_txt(dns, name) if self.get_detail else None
            if detail:
                return Reply.of(554, detail, "5.7.1")
            return Reply.of(554, f"Rejected: unauthenticated e-mail from /{ip} is restricted.  "
                                 "Contact the postmaster for details.", "5.7.1")
        return None


async def _listed(dns, name: str, ip: str, zone: str) -> bool:
    try:
        return bool(await dns.a_records(name))
    except DnsTemporaryError as exc:
        log.warning("DNS block list %s could not be asked about %s (%s): taken as not listed",
                    zone, ip, exc)
        return False


async def first_txt(dns, name: str) -> str | None:
    """The first TXT record of ``name``, made safe for a reply line (no control characters)."""
    try:
        records = await dns.txt(name)
    except DnsTemporaryError as exc:
        log.warning("TXT record of %s not available (%s)", name, exc)
        return None
    for text in records:
        line = "".join(c if c.isprintable() else " " for c in text).strip()
        if line:
            return line[:400]
    return None
