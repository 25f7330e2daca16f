"""James's ``fastfail.ValidRcptHandler``: refuse unknown local recipients at RCPT time."""

from __future__ import annotations

import logging

from chainmail.protocol.replies import R
from chainmail.verdict import HookResult

log = logging.getLogger("chainmail.validrcpt")


class ValidRcptHandler:
    """A recipient in a local domain is accepted when it is a user (``+detail`` ignored) or
    has a mapping in the recipient rewrite table (``enableRecipientRewriteTable``, default
    true).  Other domains are left to the relay check."""

    parameters = ("enableRecipientRewriteTable",)

    def configure(self, config):
        self.use_rrt = config.get_bool("enableRecipientRewriteTable", True)

    def on_rcpt(self, session, recipient):
        server = session.server
        if not server.is_local_domain(recipient.domain_lower):
            return None
        if recipient.local.lower() in ("postmaster", "abuse"):
            return None  # RFC 5321 §4.5.1: always accepted (James would refuse an unmapped one)
        address = str(recipient)
        try:
            users = server.users
            if users is not None and users.contains(users.username_for(address)):
                return None
            rrt = server.rrt
            if self.use_rrt and rrt is not None and (
                    rrt.has_mapping(address) or rrt.has_mapping(_without_detail(address))):
                return None
        except Exception:
            log.exception("%s: recipient lookup failed for %s", session, address)
            return HookResult.reply(R.rcpt_lookup_failed(address))
        return HookResult.reply(R.unknown_user(address))


def _without_detail(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"
