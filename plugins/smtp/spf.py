"""James's ``SPFHandler``: refuse at MAIL a sender whose domain does not allow the client
to send for it (SPF, RFC 7208), and record the result on accepted mail.

The evaluation is pyspf's (``mailauth_spf``); the result is kept in the transaction for
``DMARCHandler``, written on top of the message as ``Received-SPF`` (RFC 7208 §9.1) and
kept as James's mail attribute ``org.apache.james.spf.header``.
"""

from __future__ import annotations

import logging

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

from .mailauth_spf import SpfOutcome, check_spf

__all__ = ["SPFHandler", "SPF_STATE", "ATTR_SPF_HEADER", "ATTR_SPF_RESULT", "spf_outcome"]

log = logging.getLogger("chainmail.spf")

#: Transaction state key of the :class:`SpfOutcome` (read by DMARCHandler).
SPF_STATE = "mailauth.spf"
#: James's mail attribute: the Received-SPF header text.
ATTR_SPF_HEADER = "org.apache.james.spf.header"
#: chainmail's mail attribute: the SPF result and the domain it was checked for.
ATTR_SPF_RESULT = "chainmail.spf.result"

TEMP_REJECTED = Reply.of(451, "Temporarily rejected: Problem on SPF lookup", "4.4.3")
INVALID_RECORD = "Block caused by an invalid SPF record"


def spf_outcome(session) -> SpfOutcome | None:
    """The SPF result an ``SPFHandler`` recorded for the current transaction, if any."""
    return session.transaction.state.get(SPF_STATE)


def refusal_text(outcome: SpfOutcome) -> str:
    """What James means to answer (its code prints ``false`` instead): the domain's own
    explanation (``exp=``) when it gave one, else which sender the client may not use."""
    if outcome.result == "permerror":
        return INVALID_RECORD
    if not outcome.default_explanation:
        return f"Blocked - see: {outcome.explanation}"
    sender = outcome.sender
    return f"Blocked - SPF {outcome.result}: {sender} is not allowed to send from {outcome.ip}"


class SPFHandler:
    """Check SPF at MAIL for clients that may not relay (not authenticated, outside
    ``authorizedAddresses``), once a HELO/EHLO name is known.  ``fail`` is refused, and so
    are ``softfail`` when ``blockSoftFail`` (default false) and ``permerror`` when
    ``blockPermError`` (default true): ``554 5.7.1 <explanation>``.  ``temperror`` answers
    ``451 4.4.3 Temporarily rejected: Problem on SPF lookup``.  Other results pass, and the
    accepted message gets ``Received-SPF``."""

    parameters = ("blockSoftFail", "blockPermError")

    def configure(self, config):
        self.block_softfail = config.get_bool("blockSoftFail", False)
        self.block_permerror = config.get_bool("blockPermError", True)

    def blocks(self, result: str) -> bool:
        return (result == "fail" or (result == "softfail" and self.block_softfail)
                or (result == "permerror" and self.block_permerror))

    async def on_mail(self, session, sender):
        if session.relaying_allowed or session.auth_user is not None or not session.helo_name:
            return None
        text = "" if sender is None else str(sender)
        outcome = await check_spf(session.server.dns, session.remote_ip, text,
                                  session.helo_name, session.hostname)
        log.info("%s: SPF %s for %s from %s (helo %s)", session, outcome.result,
                 outcome.sender, outcome.ip, session.helo_name)
        if self.blocks(outcome.result):
            return HookResult.reply(Reply.of(554, refusal_text(outcome), "5.7.1"))
        if outcome.result == "temperror":
            return HookResult.reply(TEMP_REJECTED)
        session.transaction.state[SPF_STATE] = outcome
        return None

    def prepend_headers(self, session):
        outcome = spf_outcome(session)
        if outcome is None:
            return None
        return f"Received-SPF: {outcome.header}\r\n".encode("utf-8", "replace")

    def on_message(self, session, message):
        outcome = spf_outcome(session)
        if outcome is not None:
            message.attributes[ATTR_SPF_HEADER] = outcome.header
            message.attributes[ATTR_SPF_RESULT] = {"result": outcome.result,
                                                   "domain": outcome.domain,
                                                   "identity": outcome.identity}
        return None
