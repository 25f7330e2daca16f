"""James's spam mailets and matcher: ``SpamAssassin`` and ``RspamdScanner`` scan mail in
the container (after the SMTP session, e.g. in ``local-delivery``) and record the verdict per
recipient; ``IsMarkedAsSpam`` matches the recipients the verdict calls spam, so that a
following mailet can file their copy in a Spam folder.

James keeps the verdict as *per-recipient headers* written at delivery.  chainmail's mail
has no per-recipient headers: the verdict is the mail attribute James names
(``org.apache.james.spamassassin.status`` ...), a mapping recipient → value, and the header
field of that name is set on the message when every recipient got the same verdict (the
usual case: one scan, or per-user scans that agree)."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from chainmail.mailet.api import GHOST, GenericMailet, GenericMatcher, Mail, MailetError
from ..smtp import spam_rspamd, spam_spamd
from ..smtp.spam_net import FilterUnavailable, get_port, get_seconds, split_http_url

__all__ = ["SpamAssassin", "RspamdScanner", "IsMarkedAsSpam", "record_verdict"]

log = logging.getLogger("chainmail.mailet.spam")


def record_verdict(mail: Mail, name: str, by_recipient: Mapping[str, str]) -> None:
    """Store ``by_recipient`` as attribute ``name`` and, when all recipients agree, as the
    header field ``name`` (replacing any the message brought)."""
    mail.attributes[name] = dict(by_recipient)
    values = set(by_recipient.values())
    if len(values) == 1:
        mail.set_header(name, values.pop())
    else:
        mail.remove_header(name)


class _Resolver:
    """The container's ``dnsservice.xml`` resolver, made the first time a filter is named
    by host name rather than by address."""

    def __init__(self, mailet: GenericMailet) -> None:
        self.mailet = mailet
        self._dns: Any = None

    def __call__(self) -> Any:
        if self._dns is None:
            from chainmail.remote.dns import DnsService, load_dnsservice
            path = os.path.join(self.mailet.context.conf_dir, "dnsservice.xml")
            self._dns = DnsService(load_dnsservice(path))
        return self._dns


def _check_processor(mailet: GenericMailet, key: str) -> str | None:
    value = mailet.config.get(key)
    if value is None or not value.strip():
        return None
    state = value.strip()
    states = mailet.context.states if mailet.context is not None else frozenset()
    if states and state not in states and state != GHOST:
        raise mailet.config.error(key, f"no processor named {state!r}; the processors are "
                                       + ", ".join(sorted(states)))
    return state


class SpamAssassin(GenericMailet):
    """Scan the mail with spamd (``spamdHost``:``spamdPort``, ``localhost:783``) once per
    recipient, naming the recipient in spamd's ``User`` header (per-user preferences), and
    record ``org.apache.james.spamassassin.flag`` (``YES``/``NO``) and ``.status``
    (``Yes, hits=7.5 required=5.0``).  spamd unavailable within ``spamdTimeout`` seconds
    (10) is a mailet error (``onMailetException`` decides, as in James)."""

    parameters = ("spamdHost", "spamdPort", "spamdTimeout")

    def configure(self, config):
        self.host = (config.get("spamdHost") or "localhost").strip()
        self.port = get_port(config, "spamdPort", 783)
        self.timeout = get_seconds(config, "spamdTimeout", 10.0)
        self.dns = _Resolver(self)

    async def service(self, mail):
        flags: dict[str, str] = {}
        statuses: dict[str, str] = {}
        for recipient in mail.recipients:
            try:
                result = await spam_spamd.check(self.host, self.port, mail.content, user=recipient,
                                                timeout=self.timeout, dns=self.dns)
            except FilterUnavailable as exc:
                raise MailetError(f"SpamAssassin: {exc}") from None
            flags[recipient], statuses[recipient] = result.flag, result.status
            log.info("%s: SpamAssassin for <%s>: %s", mail.name, recipient, result.status)
        record_verdict(mail, spam_spamd.FLAG_ATTRIBUTE, flags)
        record_verdict(mail, spam_spamd.STATUS_ATTRIBUTE, statuses)


def _mail_headers(mail: Mail) -> list[tuple[str, str]]:
    """The envelope as rspamd's request headers (what the SMTP server recorded)."""
    attributes = mail.attributes
    headers: list[tuple[str, str]] = []
    for header, attribute in (("IP", "remote_addr"), ("Helo", "helo"), ("User", "auth_user"),
                              ("TLS-Version", "tls_protocol"), ("TLS-Cipher", "tls_cipher")):
        value = attributes.get(attribute)
        if isinstance(value, str) and value:
            headers.append((header, value))
    if mail.sender:
        headers.append(("From", mail.sender))
    headers += [("Rcpt", r) for r in mail.recipients]
    headers.append(("Queue-Id", mail.name))
    return headers


class RspamdScanner(GenericMailet):
    """Scan the mail with rspamd (``rspamdUrl``, ``http://localhost:11333``; ``rspamdPassword``;
    ``rspamdTimeout`` seconds, 15) and record ``org.apache.james.rspamd.flag`` and
    ``.status`` (``Yes, actions=add header score=7.5 requiredScore=15.0``).  ``reject`` sends
    the mail to ``rejectSpamProcessor`` when given; a virus (rspamd's ``CLAM_VIRUS``) to
    ``virusProcessor``; ``rewriteSubject`` (false) applies rspamd's rewritten Subject.  With
    ``perUserBayes`` (false) each recipient is scanned on its own (``Deliver-To``) and only
    its copy is sent to those processors; the Subject is then never rewritten."""

    parameters = ("rspamdUrl", "rspamdPassword", "rspamdTimeout", "perUserBayes",
                  "rewriteSubject", "virusProcessor", "rejectSpamProcessor")

    def configure(self, config):
        self.url = (config.get("rspamdUrl") or "http://localhost:11333").strip()
        try:
            split_http_url(self.url)
        except ValueError as exc:
            raise config.error("rspamdUrl", f"{exc} (expected e.g. http://localhost:11333)") from None
        self.password = config.get("rspamdPassword") or ""
        self.timeout = get_seconds(config, "rspamdTimeout", 15.0)
        self.per_user = config.get_bool("perUserBayes", False)
        self.rewrite_subject = config.get_bool("rewriteSubject", False)
        self.virus_processor = _check_processor(self, "virusProcessor")
        self.reject_processor = _check_processor(self, "rejectSpamProcessor")
        self.dns = _Resolver(self)

    async def _scan(self, mail: Mail, extra: list[tuple[str, str]]) -> spam_rspamd.RspamdResult:
        try:
            return await spam_rspamd.checkv2(self.url, mail.content, _mail_headers(mail) + extra,
                                             timeout=self.timeout, password=self.password,
                                             dns=self.dns)
        except FilterUnavailable as exc:
            raise MailetError(f"RspamdScanner: {exc}") from None

    async def service(self, mail):
        if self.per_user:
            await self._scan_per_user(mail)
            return
        result = await self._scan(mail, [])
        log.info("%s: rspamd: %s", mail.name, result.status)
        if result.action == "reject" and self.reject_processor:
            mail.state = self.reject_processor
        record_verdict(mail, spam_rspamd.FLAG_ATTRIBUTE, {r: result.flag for r in mail.recipients})
        record_verdict(mail, spam_rspamd.STATUS_ATTRIBUTE, {r: result.status for r in mail.recipients})
        if self.rewrite_subject and result.subject:
            mail.set_header("Subject", result.subject)
        if result.virus is not None:
            log.info("%s: rspamd found a virus; mail sent to %s", mail.name, self.virus_processor)
            mail.error_message = result.virus
            if self.virus_processor:
                mail.state = self.virus_processor

    async def _scan_per_user(self, mail: Mail) -> None:
        flags: dict[str, str] = {}
        statuses: dict[str, str] = {}
        for recipient in list(mail.recipients):
            result = await self._scan(mail, [("Deliver-To", recipient)])
            log.info("%s: rspamd for <%s>: %s", mail.name, recipient, result.status)
            flags[recipient], statuses[recipient] = result.flag, result.status
            if result.action == "reject" and self.reject_processor:
                await self._divert(mail, recipient, self.reject_processor, "Rejected due to high spam score")
            elif result.virus is not None and self.virus_processor:
                await self._divert(mail, recipient, self.virus_processor, result.virus)
        kept = set(mail.recipients)
        record_verdict(mail, spam_rspamd.FLAG_ATTRIBUTE, {r: v for r, v in flags.items() if r in kept})
        record_verdict(mail, spam_rspamd.STATUS_ATTRIBUTE,
                       {r: v for r, v in statuses.items() if r in kept})

    async def _divert(self, mail: Mail, recipient: str, processor: str, error: str) -> None:
        """Send ``recipient``'s copy to ``processor`` and drop it from ``mail``."""
        copy = mail.duplicate([recipient])
        copy.error_message = error
        await self.context.send_mail(copy, processor)
        mail.recipients = [r for r in mail.recipients if r != recipient]


class IsMarkedAsSpam(GenericMatcher):
    """The recipients whose spam verdict starts with ``Yes`` (any case): the attribute named
    by the condition (default ``org.apache.james.spamassassin.status``; write
    ``IsMarkedAsSpam=org.apache.james.rspamd.status`` for rspamd), as the mailets record it
    per recipient, or as the SMTP handlers record it for the whole mail."""

    takes_condition = True

    def configure(self, condition):
        self.attribute = (condition or "").strip() or spam_spamd.STATUS_ATTRIBUTE

    def match(self, mail):
        verdict = mail.attributes.get(self.attribute)
        if isinstance(verdict, str):
            return list(mail.recipients) if _is_yes(verdict) else []
        if isinstance(verdict, dict):
            return [r for r in mail.recipients if _is_yes(verdict.get(r))]
        return []


def _is_yes(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith("yes")
