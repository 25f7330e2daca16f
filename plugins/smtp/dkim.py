"""``DKIMHandler``: verify the DKIM signatures (and the ARC chain) of a received message and
say so in ``Authentication-Results`` (RFC 8601), for filters, Sieve and the reader.

It refuses nothing unless asked (``rejectOnFail``): a failed signature is, by RFC 6376 §6.3,
no worse than none, and DMARC (``DMARCHandler``) is the policy that decides what a failure
means for a domain.  The results stay in the transaction for ``DMARCHandler`` and travel
as the mail attribute ``chainmail.dkim.results``.
"""

from __future__ import annotations

import logging

import trio

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

from .mailauth_dkim import Verification, verify_message
from .mailauth_results import HEADER, arc_result, dkim_results, header_value

__all__ = ["DKIMHandler", "DKIM_STATE", "ATTR_DKIM_RESULTS", "dkim_verification"]

log = logging.getLogger("chainmail.dkim")

#: Transaction state key of the :class:`Verification` (read by DMARCHandler).
DKIM_STATE = "mailauth.dkim"
#: Mail attribute: one ``{"result", "domain", "selector"}`` per signature, top first.
ATTR_DKIM_RESULTS = "chainmail.dkim.results"
#: Mail attribute: the ARC chain's validation (``none``, ``pass``, ``fail``).
ATTR_ARC_RESULT = "chainmail.arc.result"


def dkim_verification(session) -> Verification | None:
    """The verification a ``DKIMHandler`` made of the current message, if any."""
    return session.transaction.state.get(DKIM_STATE)


def record(message, verification: Verification) -> None:
    """Keep the results as mail attributes."""
    message.attributes[ATTR_DKIM_RESULTS] = [
        {"result": s.result, "domain": s.domain, "selector": s.selector}
        for s in verification.signatures]
    if verification.arc is not None:
        message.attributes[ATTR_ARC_RESULT] = verification.arc.result


class DKIMHandler:
    """Verify every DKIM signature (up to five) of the received message and, with ``arc``
    (default true), its ARC chain; add ``Authentication-Results: <hostname>; dkim=...``.
    ``rejectOnFail`` (default false) refuses a message with signatures of which none
    passes: ``550 5.7.20 DKIM check failed: no valid signature``; a key lookup that could
    not complete then answers ``451 4.7.5 Temporarily rejected: Problem on DKIM key
    lookup`` instead.  ``minimumKeyBits`` (default 1024) fails RSA keys shorter than that."""

    parameters = ("arc", "rejectOnFail", "minimumKeyBits")

    def configure(self, config):
        self.arc = config.get_bool("arc", True)
        self.reject_on_fail = config.get_bool("rejectOnFail", False)
        self.minkey = config.get_int("minimumKeyBits", 1024, minimum=512)

    async def on_message(self, session, message):
        if session.relaying_allowed or session.auth_user is not None:
            return None
        content = await trio.to_thread.run_sync(message.read)
        verification = await verify_message(session.server.dns, content, arc=self.arc,
                                            minkey=self.minkey)
        session.transaction.state[DKIM_STATE] = verification
        for sig in verification.signatures:
            log.info("%s: DKIM %s d=%s s=%s%s", session, sig.result, sig.domain, sig.selector,
                     f" ({sig.reason})" if sig.reason else "")
        if self.reject_on_fail and verification.signatures and not verification.passing():
            if any(s.result == "temperror" for s in verification.signatures):
                return HookResult.reply(Reply.of(
                    451, "Temporarily rejected: Problem on DKIM key lookup", "4.7.5"))
            return HookResult.reply(Reply.of(550, "DKIM check failed: no valid signature",
                                             "5.7.20"))
        results = dkim_results(verification.signatures)
        if verification.arc is not None:
            results.append(arc_result(verification.arc))
        message.add_header(HEADER, header_value(session.hostname, results))
        record(message, verification)
        return None

