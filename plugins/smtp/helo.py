"""James's HELO/EHLO checks: the name a client greets with must resolve
(``ResolvableEhloHeloHandler``) or be the client's own reverse DNS name
(``ReverseEqualsEhloHeloHandler``).  A client that lies about its name is refused at MAIL
and RCPT with ``501 5.5.4 Provided EHLO/HELO <name> can not resolved.``.

The name is checked at the first MAIL or RCPT after the greeting (by then an authenticated
user is known and exempt) and the verdict is kept for the connection until the next
HELO/EHLO.  Every question goes through the server's resolver (``dnsservice.xml``).
"""

from __future__ import annotations

import abc
import ipaddress
import logging

import trio

from chainmail.protocol.replies import Reply
from chainmail.remote.dns import DnsTemporaryError
from chainmail.verdict import HookResult

from .dnsrbl import lookup_budget

__all__ = ["ResolvableEhloHeloHandler", "ReverseEqualsEhloHeloHandler", "exempt",
           "ip_literal", "temporary_failure"]

log = logging.getLogger("chainmail.helo")


def exempt(session, check_networks: bool, check_users: bool) -> bool:
    """Whether the client is left alone: it may relay by its address (``authorizedAddresses``)
    and ``checkAuthNetworks`` is false, or it authenticated and ``checkAuthUsers`` is false."""
    if session.relaying_allowed and not check_networks:
        return True
    return session.auth_user is not None and not check_users


def ip_literal(name: str) -> str | None:
    """The address of an address literal (``1.2.3.4``, ``[1.2.3.4]``, ``[IPv6:2001:db8::1]``),
    None for a domain name."""
    text = name.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def temporary_failure(name: str) -> Reply:
    """The reply when the DNS could not answer: try again later (James's SPF wording)."""
    return Reply.of(451, f"Temporarily rejected: Problem on DNS lookup of {name}", "4.4.3")


class _HeloCheck(abc.ABC):
    """The shared part: parameters, exemptions, the verdict kept per greeting."""

    parameters = ("checkAuthNetworks", "checkAuthUsers")
    _key = ""

    def configure(self, config):
        self.check_networks = config.get_bool("checkAuthNetworks", False)
        self.check_users = config.get_bool("checkAuthUsers", False)

    async def on_mail(self, session):
        return await self.verdict(session)

    async def on_rcpt(self, session):
        return await self.verdict(session)

    async def verdict(self, session) -> HookResult | None:
        helo = session.helo_name
        if not helo or exempt(session, self.check_networks, self.check_users):
            return None
        kept = session.state.get(self._key)
        if kept is None or kept[0] != (session.helo_mode, helo):
            reply: Reply | None = temporary_failure(helo)
            try:
                with trio.fail_after(lookup_budget(session.server)):
                    if await self.is_bad(session, helo):
                        reply = Reply.of(501, f"Provided EHLO/HELO {helo} can not resolved.",
                                         "5.5.4")
                    else:
                        reply = None
            except (DnsTemporaryError, trio.TooSlowError) as exc:
                log.warning("%s: HELO/EHLO %s not checked: %s", session.id, helo,
                            str(exc) or "no answer in time")
            kept = session.state[self._key] = ((session.helo_mode, helo), reply)
        reply = kept[1]
        return None if reply is None else HookResult.reply(reply)

    @abc.abstractmethod
    async def is_bad(self, session, helo: str) -> bool:
        """Whether ``helo`` is not an acceptable name for this client; raises
        :class:`DnsTemporaryError` when the DNS cannot tell."""


class ResolvableEhloHeloHandler(_HeloCheck):
    """Refuse mail from a client whose HELO/EHLO name has no address (A or AAAA record).
    Address literals pass.  Clients allowed to relay (unless ``checkAuthNetworks``) and
    authenticated users (unless ``checkAuthUsers``) are not checked.  A DNS failure answers
    ``451 4.4.3`` (try again) rather than refusing for good."""

    _key = "helo.resolvable"

    async def is_bad(self, session, helo: str) -> bool:
        if ip_literal(helo) is not None:
            return False
        return not await session.server.dns.addresses(helo.rstrip("."))


class ReverseEqualsEhloHeloHandler(_HeloCheck):
    """Refuse mail from a client whose HELO/EHLO name (compared without case) is not a
    reverse DNS name of its address that resolves back to that address (forward-confirmed,
    as Java's ``getHostName`` checks).  A client without such a name must greet with its
    address (``192.0.2.7`` or ``[192.0.2.7]``).  Exemptions and DNS failures as
    :class:`ResolvableEhloHeloHandler`."""

    _key = "helo.reverse"

    async def is_bad(self, session, helo: str) -> bool:
        names = await session.server.dns.confirmed_names(session.remote_ip)
        if names:
            return helo.rstrip(".").lower() not in names
        return ip_literal(helo) != str(ipaddress.ip_address(session.remote_ip))
