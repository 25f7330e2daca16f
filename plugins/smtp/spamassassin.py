"""James's ``SpamAssassinHandler``: every received message is checked by SpamAssassin's
daemon before it is accepted, so that spam above a chosen score is refused while the client
is still connected (the sender gets the bounce, not the recipient) and accepted mail carries
spamd's verdict for the mailbox rules."""

from __future__ import annotations

import logging

import trio

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

from . import spam_spamd
from .spam_net import FilterUnavailable, get_float, get_port, get_seconds

__all__ = ["SpamAssassinHandler", "REJECTED"]

log = logging.getLogger("chainmail.spamassassin")

#: James's reply (its spelling kept: operators match on it).
REJECTED = Reply.of(554, "This message reach the spam hits treshold. Please contact the "
                         "Postmaster if the email is not SPAM. Message rejected", "5.7.0")


class SpamAssassinHandler:
    """Send the message to spamd (``spamdHost``:``spamdPort``, default ``localhost:783``)
    with ``CHECK SPAMC/1.2``; put ``X-Spam-Flag``/``X-Spam-Status`` on top of it and James's
    attributes ``org.apache.james.spamassassin.flag``/``.status`` on the mail; refuse it with
    James's 554 when its hits reach ``spamdRejectionHits`` (0.0, the default, never refuses).
    spamd unreachable or slower than ``spamdTimeout`` seconds (10): the message is accepted
    without a verdict and the failure logged, as James does."""

    parameters = ("spamdHost", "spamdPort", "spamdRejectionHits", "spamdTimeout")

    def configure(self, config):
        self.host = (config.get("spamdHost") or "localhost").strip()
        self.port = get_port(config, "spamdPort", 783)
        self.rejection_hits = get_float(config, "spamdRejectionHits", 0.0)
        self.timeout = get_seconds(config, "spamdTimeout", 10.0)

    async def on_message(self, session, message):
        content = await trio.to_thread.run_sync(message.read)
        server = session.server
        try:
            result = await spam_spamd.check(self.host, self.port, content, timeout=self.timeout,
                                            dns=lambda: server.dns)
        except FilterUnavailable as exc:
            log.error("%s: message accepted without a spam check: %s", session, exc)
            return None
        message.attributes[spam_spamd.FLAG_ATTRIBUTE] = result.flag
        message.attributes[spam_spamd.STATUS_ATTRIBUTE] = result.status
        message.add_header("X-Spam-Status", result.status)
        message.add_header("X-Spam-Flag", result.flag)   # on top, as SpamAssassin orders them
        hits = result.hits_number()
        if self.rejection_hits > 0 and hits is not None and hits >= self.rejection_hits:
            log.info("%s: rejected message from <%s> from host %s (%s): this message reach the "
                     "spam hits treshold. Required rejection hits: %s hits: %s", session,
                     message.transaction.sender_text, session.helo_name, session.remote_ip,
                     self.rejection_hits, hits)
            return HookResult.reply(REJECTED)
        return None
