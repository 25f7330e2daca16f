"""Never an open relay: a recipient outside the local domains is accepted only from a client
that may relay (``authorizedAddresses``, or later an authenticated user)."""

from __future__ import annotations

from chainmail.protocol.replies import R
from chainmail.verdict import HookResult


def auth_announced(session) -> bool:
    """Whether this session was offered AUTH (decides 530 vs 550 on a relay refusal)."""
    return bool(session.state.get("auth_announced"))


class RelayCheckRcptHook:
    """James's ``AuthRequiredToRelayRcptHook``."""

    def on_rcpt(self, session, recipient):
        if session.relaying_allowed:
            return None
        if session.server.domains.contains(recipient.domain_lower):
            return None
        return HookResult.reply(R.auth_required if auth_announced(session) else R.relay_denied)


class PostmasterAbuseRcptHook:
    """RFC 5321 §4.5.1: mail to postmaster (and abuse, RFC 2142) is always accepted."""

    def on_rcpt(self, session, recipient):
        if recipient.local.lower() in ("postmaster", "abuse"):
            return HookResult.ok()
        return None
