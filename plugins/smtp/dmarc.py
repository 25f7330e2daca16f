"""``DMARCHandler``: apply the author domain's DMARC policy (RFC 7489) to a received message.

The author domain is the From field's; its policy is ``_dmarc.<domain>``'s TXT record, else
its organisational domain's.  The message passes when SPF (MAIL FROM's domain) or a DKIM
signature (``d=``) passed for a domain aligned with it.  The SPF and DKIM results are those
``SPFHandler`` and ``DKIMHandler`` recorded in the transaction; when they did not run, this
handler checks them itself.  What a failing message's policy leads to is the operator's
choice (``rejectAction``, ``quarantineAction``): refusal, quarantine (a header field and a
mail attribute that a matcher or Sieve files by), or nothing but the result field.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

from .dkim import dkim_verification
from .mailauth_dkim import header_fields, verify_message
from .mailauth_dmarc import (DmarcRecord, MalformedFrom, evaluate, from_domain,
                             organizational_domain, select_record)
from .mailauth_dns import DnsTemporaryError, txt_records
from .mailauth_results import HEADER, dkim_results, dmarc_result, header_value, spf_result
from .mailauth_spf import SpfOutcome, check_spf
from .spf import spf_outcome

__all__ = ["DMARCHandler", "ATTR_DMARC_RESULT", "ATTR_DMARC_QUARANTINE"]

log = logging.getLogger("chainmail.dmarc")

#: Mail attribute: ``{"result", "domain", "policy", "disposition"}``.
ATTR_DMARC_RESULT = "chainmail.dmarc.result"
#: Mail attribute set on a quarantined message: the author domain.
ATTR_DMARC_QUARANTINE = "chainmail.dmarc.quarantine"

_ACTIONS = ("reject", "quarantine", "none")


def _choice(config, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (config.get(key) or default).strip().lower()
    if value not in allowed:
        raise config.error(key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


class DMARCHandler:
    """Apply DMARC at the end of DATA for clients that may not relay.

    Parameters: ``rejectAction`` (what ``p=reject`` does: ``reject``, ``quarantine`` or
    ``none``; default ``reject``), ``quarantineAction`` (for ``p=quarantine``; default
    ``quarantine``), ``quarantineHeader`` (the field a quarantined message gets, value
    ``yes``; default ``X-DMARC-Quarantine``), ``tempErrorAction`` (``defer``: 451, or
    ``accept`` with ``dmarc=temperror``; default ``defer``), ``malformedFromAction``
    (``reject`` or ``accept`` a message without exactly one author domain; default
    ``reject``)."""

    parameters = ("rejectAction", "quarantineAction", "quarantineHeader", "tempErrorAction",
                  "malformedFromAction")

    def configure(self, config):
        self.reject_action = _choice(config, "rejectAction", "reject", _ACTIONS)
        self.quarantine_action = _choice(config, "quarantineAction", "quarantine", _ACTIONS)
        self.temp_error_action = _choice(config, "tempErrorAction", "defer", ("defer", "accept"))
        self.malformed_action = _choice(config, "malformedFromAction", "reject",
                                        ("reject", "accept"))
        header = (config.get("quarantineHeader") or "X-DMARC-Quarantine").strip()
        if not header or ":" in header or any(c.isspace() for c in header):
            raise config.error("quarantineHeader", f"{header!r} is not a header field name")
        self.quarantine_header = header
        self.rng = None   # the module's random generator; tests may set their own

    async def on_message(self, session, message):
        if session.relaying_allowed or session.auth_user is not None:
            return None
        results: list[Any] = []
        froms = [v.decode("utf-8", "replace") for n, v in header_fields(message.head)
                 if n == b"from"]
        try:
            author = from_domain(froms)
        except MalformedFrom as exc:
            log.info("%s: DMARC permerror: %s", session, exc)
            if self.malformed_action == "reject":
                return HookResult.reply(Reply.of(
                    550, "Rejected: a single From field with one author domain is required",
                    "5.7.1"))
            self._add(session, message, [dmarc_result("permerror", None, comment=str(exc))])
            return None
        try:
            record, record_domain = await self._policy(session.server.dns, author)
        except DnsTemporaryError as exc:
            log.info("%s: DMARC temperror for %s: %s", session, author, exc)
            return self._temperror(session, message, author)
        if record is None:
            self._add(session, message, [dmarc_result("none", author)])
            message.attributes[ATTR_DMARC_RESULT] = {"result": "none", "domain": author}
            return None
        spf = spf_outcome(session)
        if spf is None:
            spf = await self._spf(session)
            if spf is not None:
                results.append(spf_result(spf))
        verification = dkim_verification(session)
        if verification is None:
            content = await trio.to_thread.run_sync(message.read)
            verification = await verify_message(session.server.dns, content, arc=False)
            results.extend(dkim_results(verification.signatures))
        verdict = evaluate(author, record, record_domain,
                           (spf.result, spf.domain) if spf is not None else None,
                           [(s.result, s.domain) for s in verification.signatures], self.rng)
        temporary = (spf is not None and spf.result == "temperror") or any(
            s.result == "temperror" for s in verification.signatures)
        if verdict.result == "fail" and temporary:
            return self._temperror(session, message, author, results)
        log.info("%s: DMARC %s for %s (policy %s, disposition %s)", session, verdict.result,
                 author, verdict.policy, verdict.disposition)
        message.attributes[ATTR_DMARC_RESULT] = {
            "result": verdict.result, "domain": author, "policy": verdict.policy,
            "disposition": verdict.disposition}
        action = {"reject": self.reject_action, "quarantine": self.quarantine_action}.get(
            verdict.disposition, "none")
        if action == "reject":
            return HookResult.reply(Reply.of(550, f"Rejected by DMARC policy for {author}",
                                             "5.7.1"))
        results.append(dmarc_result(verdict.result, author, verdict.policy,
                                    comment=f"p={record.p} sp={record.sp} "
                                            f"dis={verdict.disposition.upper()}"))
        self._add(session, message, results)
        if action == "quarantine":
            message.add_header(self.quarantine_header, "yes")
            message.attributes[ATTR_DMARC_QUARANTINE] = author
        return None

    async def _policy(self, dns, author: str) -> tuple[DmarcRecord | None, str]:
        """The author domain's record, else its organisational domain's (§6.6.3)."""
        record = select_record(t.decode("utf-8", "replace")
                               for t in await txt_records(dns, f"_dmarc.{author}"))
        if record is not None:
            return record, author
        org = organizational_domain(author)
        if org != author:
            record = select_record(t.decode("utf-8", "replace")
                                   for t in await txt_records(dns, f"_dmarc.{org}"))
            if record is not None:
                return record, org
        return None, author

    async def _spf(self, session) -> SpfOutcome | None:
        """SPF of the transaction when no SPFHandler checked it (needs the HELO name)."""
        if not session.helo_name:
            return None
        return await check_spf(session.server.dns, session.remote_ip,
                               session.transaction.sender_text, session.helo_name,
                               session.hostname)

    def _temperror(self, session, message, author: str, results: list[Any] | None = None):
        if self.temp_error_action == "defer":
            return HookResult.reply(Reply.of(
                451, f"Temporarily rejected: Problem on DMARC lookup for {author}", "4.7.1"))
        self._add(session, message, [*(results or []), dmarc_result("temperror", author)])
        message.attributes[ATTR_DMARC_RESULT] = {"result": "temperror", "domain": author}
        return None

    @staticmethod
    def _add(session, message, results: list[Any]) -> None:
        message.add_header(HEADER, header_value(session.hostname, results))
