"""James's simple fast-fail handlers: limits and checks that refuse a bad client early, at
MAIL, RCPT or an unknown command, before it costs a message transfer.

Each class is James's handler of the same name (``docs/handlers.md``), configured by James's
parameters and answering James's replies with an RFC 3463 enhanced status added.
"""

from __future__ import annotations

import trio

from chainmail.config.netmatch import NetworkSet
from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

__all__ = ["MaxRcptHandler", "MaxUnknownCmdHandler", "SupressDuplicateRcptHandler",
           "TarpitHandler", "AllowedUnauthenticatedSender"]

_UNKNOWN_COUNT = "fastfail.unknown_commands"


class MaxRcptHandler:
    """Refuse recipients past ``maxRcpt`` in one transaction, so one message cannot fan out
    to an unbounded list.  ``0`` (James's default) means no limit: James's code would refuse
    every recipient then, which its documentation does not mean."""

    parameters = ("maxRcpt",)

    def configure(self, config):
        self.max_rcpt = config.get_int("maxRcpt", 0)

    def on_rcpt(self, session):
        if self.max_rcpt and len(session.transaction.recipients) + 1 > self.max_rcpt:
            return HookResult.reply(Reply.of(
                452, "Requested action not taken: max recipients reached", "4.5.3"))
        return None


class MaxUnknownCmdHandler:
    """Close the connection after more than ``maxUnknownCmdCount`` unknown commands, which
    are the mark of a scanner or a confused client rather than of a mail sender.  As in
    James the count belongs to the transaction: RSET, HELO/EHLO and the end of DATA reset it."""

    parameters = ("maxUnknownCmdCount",)

    def configure(self, config):
        self.max_unknown = config.get_int("maxUnknownCmdCount", 5)

    def on_unknown(self, session):
        state = session.transaction.state
        count = state[_UNKNOWN_COUNT] = state.get(_UNKNOWN_COUNT, 0) + 1
        if count > self.max_unknown:
            return HookResult.reply(Reply.of(
                521, "Closing connection as too many unknown commands received", "5.5.1",
                close=True))
        return None


class SupressDuplicateRcptHandler:
    """Answer a recipient given twice in one transaction with 250 without listing it again,
    so the message is not delivered twice.  (James's spelling of the class name.)"""

    parameters = ()

    def on_rcpt(self, session, recipient):
        if any(_same(recipient, seen) for seen in session.transaction.recipients):
            return HookResult.reply(Reply.of(250, f"Recipient <{recipient}> OK", "2.1.5"))
        return None


class TarpitHandler:
    """Slow down a client that gives many recipients (a dictionary attack or bulk spam):
    past ``tarpitRcptCount`` recipients each RCPT waits ``tarpitSleepTime`` ms times the
    number of recipients over the count.  The wait is a trio sleep, so only this session
    waits; it must stay under the server's ``handlerTimeout``, past which RCPT answers 451."""

    parameters = ("tarpitRcptCount", "tarpitSleepTime")

    def configure(self, config):
        self.rcpt_count = config.get_int("tarpitRcptCount", 2)
        self.sleep_ms = config.get_int("tarpitSleepTime", 5000)

    async def on_rcpt(self, session):
        over = len(session.transaction.recipients) + 1 - self.rcpt_count
        if over > 0 and self.sleep_ms:
            await trio.sleep(self.sleep_ms * over / 1000)
        return None


class AllowedUnauthenticatedSender:
    """A client allowed to relay by its address (``authorizedAddresses``) but not
    authenticated may only use the senders listed in ``allowedSenders/allowedSender``
    (whole addresses, or ``@domain`` for a domain), each optionally only from the networks of
    its ``fromIps`` attribute, and the null sender when ``allowNullSender`` is true.
    Authenticated and non-relaying sessions are left alone."""

    parameters = ("allowNullSender", "allowedSenders", "allowedSenders.allowedSender")

    def configure(self, config):
        self.allow_null = config.get_bool("allowNullSender", False)
        #: (address or "@domain", networks or None), in the order given
        self.entries: list[tuple[str, NetworkSet | None]] = []
        for text, from_ips, line in _allowed_sender_elements(config):
            if text.startswith("@") and len(text) > 1:
                key = "@" + text[1:].lower()
            elif "@" in text.strip("@"):
                local, _, domain = text.rpartition("@")
                key = f"{local}@{domain.lower()}"
            else:
                raise config.error("allowedSenders.allowedSender",
                                   f"{text!r} is not an address (local@domain) or @domain")
            networks = None
            if from_ips is not None:
                networks = NetworkSet(from_ips.split(","), file=config.file, line=line,
                                      element="allowedSender fromIps")
                if networks.warnings:
                    raise config.error("allowedSenders.allowedSender[@fromIps]",
                                       networks.warnings[0].message)
            self.entries.append((key, networks))
        if not self.entries:
            raise config.error("allowedSenders.allowedSender",
                               "at least one <allowedSender> entry (as James requires)")

    def on_mail(self, session, sender):
        if not session.relaying_allowed or session.auth_user is not None:
            return None
        ip = session.remote_ip
        if sender is None:
            if self.allow_null:
                return None
        else:
            whole, domain = f"{sender.local}@{sender.domain_lower}", f"@{sender.domain_lower}"
            for key, networks in self.entries:
                if key in (whole, domain) and (networks is None or networks.contains(ip)):
                    return None
        text = "" if sender is None else str(sender)
        return HookResult.reply(Reply.of(
            550, f"Sender <{text}> is not allowed for unauthenticated connection from {ip}",
            "5.7.1"))


def _allowed_sender_elements(config):
    """``(text, fromIps or None, line)`` of each ``allowedSenders/allowedSender``: read from
    the XML element when there is one (attributes do not reach ``get_list``)."""
    element = config.element
    if element is None:
        return [(text, None, config.line) for text in config.get_list("allowedSenders.allowedSender")]
    found = []
    for group in element.iterchildren("allowedSenders"):
        for entry in group.iterchildren("allowedSender"):
            found.append(((entry.text or "").strip(), entry.get("fromIps"), entry.sourceline))
    return found


def _same(a, b) -> bool:
    """Recipients are the same mailbox: local part as given, domain in any case."""
    return a.local == b.local and a.domain_lower == b.domain_lower
