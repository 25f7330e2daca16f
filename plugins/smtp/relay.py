"""Never an open relay: a recipient outside the local domains is accepted only from a client
that may relay (``authorizedAddresses``, or an authenticated user).

Only a handler declared a relay authoriser (``authorizes_relay = True``) decides relaying: an
OK from any other ``on_rcpt`` hook still goes through the relay decision (``RcptCmdHandler``).
"""

from __future__ import annotations

from chainmail.protocol.replies import R
from chainmail.verdict import HookResult


def auth_announced(session) -> bool:
    """Whether AUTH is announced to this session (James's ``isAuthAnnounced``): the chain has
    an AUTH command, the channel satisfies ``auth.requireSSL``, and ``auth.announce`` is
    ``always``, or ``forUnauthorizedAddresses`` for a client outside ``authorizedAddresses``.
    Decides 530 (authenticate first) against 550 (relaying denied)."""
    auth = session.config.auth
    if not session.server.chain.implements("AUTH"):
        return False
    if auth.require_ssl and session.tls is None:
        return False
    if auth.announce == "always":
        return True
    if auth.announce == "forUnauthorizedAddresses":
        networks = session.config.authorized_addresses
        return not networks or not networks.contains(session.remote_ip)
    return False


def needs_relay(session, recipient) -> bool:
    """Whether accepting ``recipient`` would relay for a client that may not relay: a domain
    outside the local ones, or sender-specified routing in the local part."""
    if session.relaying_allowed:
        return False
    return not session.server.is_local_domain(recipient.domain_lower) or \
        _routes_by_local_part(recipient.local)


class RelayCheckRcptHook:
    """James's ``AuthRequiredToRelayRcptHook``: the relay decision itself."""

    parameters = ()

    authorizes_relay = True

    def on_rcpt(self, session, recipient):
        if not needs_relay(session, recipient):
            return None
        return HookResult.reply(R.auth_required if auth_announced(session) else R.relay_denied)


def _routes_by_local_part(local: str) -> bool:
    """Sender-specified routing (``user%remote@local``, ``remote!user@local``,
    ``"user@remote"@local``): refused from clients that may not relay, as Postfix does with
    ``allow_untrusted_routing = no``; a later hop could otherwise route on it."""
    return any(c in local for c in "%!@")


class PostmasterAbuseRcptHook:
    """RFC 5321 §4.5.1: mail to postmaster (and abuse, RFC 2142) is always accepted.  Not a
    relay authoriser: ``postmaster@elsewhere`` still needs a client that may relay."""

    parameters = ()

    def on_rcpt(self, session, recipient):
        if recipient.local.lower() in ("postmaster", "abuse"):
            return HookResult.ok()
        return None
