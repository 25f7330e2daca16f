"""MT-PRIORITY (RFC 6710) and James's ``MailPriorityHandler``: how urgent a mail is.

The outgoing queue (``chainmail.remote.queue``, with RemoteDelivery's ``usePriority``) orders
entries by the ``MAIL_PRIORITY`` attribute, else by the envelope's ``MT-PRIORITY`` MAIL
parameter, and sends ``MT-PRIORITY`` onward to servers that offer it.  These handlers decide
what reaches the envelope:

- ``SmtpMtPriorityEhloHook``: announces ``MT-PRIORITY`` (plain, as James; no policy name);
- ``SmtpMtPriorityParameterHook``: the value is an integer from -9 to 9, else ``501 5.5.4``
  (a second ``MT-PRIORITY`` on one MAIL is refused by the grammar, ``501 5.5.4``);
- ``SmtpMtPriorityMessageHook``: a client that neither authenticated nor connects from
  ``authorizedAddresses`` may lower its mail's priority, not raise it (RFC 6710 §5, James):
  a positive value becomes 0 in the stored envelope;
- ``MailPriorityHandler``: ``MAIL_PRIORITY`` by recipient domain (the highest of the
  recipients' domains), from ``<priorityEntries>``.
"""

from __future__ import annotations

import logging
import re

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

__all__ = ["SmtpMtPriorityEhloHook", "SmtpMtPriorityParameterHook",
           "SmtpMtPriorityMessageHook", "MailPriorityHandler", "ATTR_PRIORITY", "PARAMETER"]

log = logging.getLogger("chainmail.priority")

PARAMETER = "MT-PRIORITY"
#: James's mail attribute, read by the outgoing queue (``chainmail.remote.queue``).
ATTR_PRIORITY = "MAIL_PRIORITY"

_VALUE = re.compile(r"(?:[+-]?[1-9]|0)\Z")   # RFC 6710 §3: priority-value
BAD_PRIORITY = Reply.of(501, "MT-PRIORITY must be an integer from -9 to 9", "5.5.4")


def parse_priority(value: str | None) -> int | None:
    """The priority of an ``MT-PRIORITY`` value, or None when it is not one."""
    if value is None or not _VALUE.match(value):
        return None
    return int(value)


def _trusted(session) -> bool:
    return session.relaying_allowed or session.auth_user is not None


def effective_priority(session, value: str | None) -> int | None:
    """The priority the mail gets from its ``MT-PRIORITY`` value: an untrusted client's
    positive priority is 0 (James); None when the value is not a priority."""
    priority = parse_priority(value)
    if priority is not None and priority > 0 and not _trusted(session):
        return 0
    return priority


class SmtpMtPriorityEhloHook:
    """Announces ``MT-PRIORITY`` in the EHLO reply."""

    parameters = ()

    def ehlo_keywords(self, session):
        return (PARAMETER,)


class SmtpMtPriorityParameterHook:
    """Checks ``MT-PRIORITY=<-9..9>`` on MAIL."""

    parameters = ()

    mail_parameters = (PARAMETER,)

    def on_mail_parameter(self, session, name, value):
        if parse_priority(value) is None:
            return HookResult.reply(BAD_PRIORITY)
        return None


class SmtpMtPriorityMessageHook:
    """Stores the priority the queue will use: an untrusted client's positive priority
    is reset to 0 (its own negative one is kept); a value no check refused but that is not
    a priority is dropped."""

    parameters = ()

    def on_message(self, session, message):
        params = message.transaction.mail_params
        if PARAMETER not in params:
            return None
        priority = effective_priority(session, params[PARAMETER])
        if priority is None:
            del params[PARAMETER]
            return None
        if str(priority) != params[PARAMETER].lstrip("+"):
            log.info("%s: MT-PRIORITY %s of an unauthenticated client lowered to %d",
                     session, params[PARAMETER], priority)
        params[PARAMETER] = str(priority)
        return None


class MailPriorityHandler:
    """James's ``MailPriorityHandler``: the ``MAIL_PRIORITY`` attribute by recipient domain::

        <handler class="org.apache.james.smtpserver.fastfail.MailPriorityHandler">
            <priorityEntries>
                <priorityEntry><domain>example.org</domain><priority>9</priority></priorityEntry>
            </priorityEntries>
        </handler>

    ``priority`` is 1 (low) to 9 (high), 5 normal.  A mail for several domains gets the
    highest of theirs; a mail for none of them gets no attribute."""

    parameters = ("priorityEntries", "priorityEntries.*")

    def configure(self, config) -> None:
        from chainmail.store.domains import normalize_domain
        self.priorities: dict[str, int] = {}
        for domain, priority, key in _entries(config):
            try:
                name = normalize_domain(domain)
            except ValueError as exc:
                raise config.error(key, f"domain {domain!r}: {exc}") from None
            try:
                number = int(priority)
            except ValueError:
                number = 0
            if not 1 <= number <= 9:
                raise config.error(key, f"priority {priority!r} for {domain}: expected a "
                                        "whole number from 1 (low) to 9 (high)")
            self.priorities[name] = number

    def on_message(self, session, message):
        if not self.priorities:
            return None
        found = [p for p in (self.priorities.get(_domain_key(r.domain_lower))
                             for r in message.recipients) if p is not None]
        if found:
            message.attributes[ATTR_PRIORITY] = max(found)
        return None


def _domain_key(domain: str) -> str:
    if domain.isascii() and domain[-1:] != ".":
        return domain
    from chainmail.store.domains import normalize_domain
    try:
        return normalize_domain(domain)
    except ValueError:
        return domain


def _entries(config):
    """``(domain, priority, parameter key)`` of each ``priorityEntries/priorityEntry``."""
    key = "priorityEntries.priorityEntry"
    element = config.element
    if element is None:   # a plain mapping: the joined lists, paired in order
        domains = config.get_list(f"{key}.domain")
        priorities = config.get_list(f"{key}.priority")
        if len(domains) != len(priorities):
            raise config.error(key, "every priorityEntry needs one <domain> and one <priority>")
        return [(d, p, key) for d, p in zip(domains, priorities)]
    found = []
    for group in element.iterchildren("priorityEntries"):
        for entry in group.iterchildren("priorityEntry"):
            domain = entry.findtext("domain")
            priority = entry.findtext("priority")
            if not (domain or "").strip() or not (priority or "").strip():
                raise config.error(key, f"line {entry.sourceline}: a priorityEntry needs "
                                        "<domain> and <priority>")
            found.append((domain.strip(), priority.strip(), key))
    return found
