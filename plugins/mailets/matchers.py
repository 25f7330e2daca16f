"""The standard matchers (``org.apache.james.transport.matchers.*``).

A matcher returns the recipients of the mail it matches.  Sender- and connection-based
matchers match all recipients or none.  Conditions follow ``=`` in ``match="Name=..."``.
"""

from __future__ import annotations

import re

from chainmail.config.netmatch import NetworkSet
from chainmail.mailet.api import ATTR_SENT_BY_MAILET, GenericMatcher, GenericRecipientMatcher, Mail

__all__ = [
    "All", "RecipientIsLocal", "HostIsLocal", "HostIs", "RecipientIs", "SenderIs", "SenderIsNull",
    "SenderIsLocal", "SenderHostIs", "SMTPAuthSuccessful", "SMTPAuthUserIs", "SMTPIsAuthNetwork",
    "RemoteAddrInNetwork", "RemoteAddrNotInNetwork", "RelayLimit", "HasHeader", "HasAttribute",
    "SizeGreaterThan", "IsSingleRecipient", "RecipientIsRegex", "SenderIsRegex", "SentByMailet",
    "IsSenderInRRTLoop",
]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _list(condition: str | None) -> list[str]:
    return [x.strip() for x in re.split(r"[,\s]+", condition or "") if x.strip()]


def _all_or_none(mail: Mail, yes: bool) -> list[str]:
    return list(mail.recipients) if yes else []


class All(GenericMatcher):
    """Every recipient."""

    takes_condition = False

    def match(self, mail):
        return list(mail.recipients)


class RecipientIsLocal(GenericRecipientMatcher):
    """Recipients that are local users (local domain, or a domain alias of one, and an existing
    user; ``+detail`` ignored)."""

    takes_condition = False

    def match_recipient(self, recipient):
        return self.context.is_local_email(recipient)


class HostIsLocal(GenericRecipientMatcher):
    """Recipients whose domain is local (whether or not the user exists)."""

    takes_condition = False

    def match_recipient(self, recipient):
        return self.context.is_local_server(_domain(recipient))


class HostIs(GenericRecipientMatcher):
    """``HostIs=example.org,example.net``: recipients in one of these domains."""

    takes_condition = True

    def configure(self, condition):
        self.domains = {d.lower().rstrip(".") for d in _list(self.config.require_condition())}

    def match_recipient(self, recipient):
        return _domain(recipient) in self.domains


class RecipientIs(GenericRecipientMatcher):
    """``RecipientIs=a@example.org,b@example.org``: these recipients (case-insensitive)."""

    takes_condition = True

    def configure(self, condition):
        self.addresses = {a.lower() for a in _list(self.config.require_condition())}

    def match_recipient(self, recipient):
        return recipient.lower() in self.addresses


class SenderIs(GenericMatcher):
    """``SenderIs=a@example.org,...``: every recipient when the envelope sender is one of these."""

    takes_condition = True

    def configure(self, condition):
        self.senders = {a.lower() for a in _list(self.config.require_condition())}

    def match(self, mail):
        return _all_or_none(mail, mail.sender.lower() in self.senders)


class SenderIsNull(GenericMatcher):
    """Every recipient when the envelope sender is the null sender ``<>`` (bounces)."""

    takes_condition = False

    def match(self, mail):
        return _all_or_none(mail, mail.has_null_sender)


class SenderIsLocal(GenericMatcher):
    """Every recipient when the sender is a local user."""

    takes_condition = False

    def match(self, mail):
        return _all_or_none(mail, self.context.is_local_email(mail.sender))


class SenderHostIs(GenericMatcher):
    """``SenderHostIs=example.org,...``: every recipient when the sender's domain is one of these."""

    takes_condition = True

    def configure(self, condition):
        self.domains = {d.lower().rstrip(".") for d in _list(self.config.require_condition())}

    def match(self, mail):
        return _all_or_none(mail, bool(mail.sender) and mail.sender_domain in self.domains)


class SMTPAuthSuccessful(GenericMatcher):
    """Every recipient when the client authenticated (SMTP AUTH)."""

    takes_condition = False

    def match(self, mail):
        return _all_or_none(mail, bool(mail.auth_user))


class SMTPAuthUserIs(GenericMatcher):
    """``SMTPAuthUserIs=bob@example.org,...``: every recipient when the client authenticated as
    one of these users."""

    takes_condition = True

    def configure(self, condition):
        self.users = {u.lower() for u in _list(self.config.require_condition())}

    def match(self, mail):
        return _all_or_none(mail, (mail.auth_user or "").lower() in self.users)


class SMTPIsAuthNetwork(GenericMatcher):
    """Every recipient when the client's address is in its server's ``authorizedAddresses``."""

    takes_condition = False

    def match(self, mail):
        return _all_or_none(mail, self.context.is_auth_network(mail))


class RemoteAddrInNetwork(GenericMatcher):
    """``RemoteAddrInNetwork=127.0.0.1,192.168.0.0/16,10.*``: every recipient when the client's
    IP address is in one of these networks (the syntax of ``authorizedAddresses``)."""

    takes_condition = True

    expected = True

    def configure(self, condition):
        self.networks = NetworkSet(self.config.require_condition(), file=self.config.file,
                                   line=self.config.line, element=f"matcher {self.config.name}")

    def match(self, mail):
        addr = mail.remote_addr
        inside = bool(addr) and self.networks.contains(addr)
        return _all_or_none(mail, inside == self.expected)


class RemoteAddrNotInNetwork(RemoteAddrInNetwork):
    """``RemoteAddrNotInNetwork=...``: every recipient when the client's IP address is in none
    of these networks."""

    expected = False


class RelayLimit(GenericMatcher):
    """``RelayLimit=30``: every recipient when the message carries at least that many
    ``Received:`` headers (a mail loop)."""

    takes_condition = True

    def configure(self, condition):
        try:
            self.limit = int(self.config.require_condition())
        except ValueError:
            raise self.config.error(f"{condition!r} is not a number of Received headers") from None
        if self.limit < 1:
            raise self.config.error("the limit must be at least 1")

    def match(self, mail):
        return _all_or_none(mail, len(mail.get_headers("Received")) >= self.limit)


class HasHeader(GenericMatcher):
    """``HasHeader=X-Spam-Flag`` or ``HasHeader=X-Spam-Flag=YES`` (value compared exactly,
    case-insensitively); several conditions joined by ``+`` must all hold."""

    takes_condition = True

    def configure(self, condition):
        self.conditions = []
        for part in self.config.require_condition().split("+"):
            name, eq, value = part.partition("=")
            if not name.strip():
                raise self.config.error(f"empty header name in {condition!r}")
            self.conditions.append((name.strip(), value.strip() if eq else None))

    def match(self, mail):
        for name, value in self.conditions:
            values = mail.get_headers(name)
            if not values:
                return []
            if value is not None and not any(v.strip().lower() == value.lower() for v in values):
                return []
        return list(mail.recipients)


class HasAttribute(GenericMatcher):
    """``HasAttribute=name`` (or ``name1,name2``: all of them): every recipient when the mail
    has these attributes."""

    takes_condition = True

    def configure(self, condition):
        self.names = _list(self.config.require_condition())

    def match(self, mail):
        return _all_or_none(mail, all(n in mail.attributes for n in self.names))


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.IGNORECASE)


class SizeGreaterThan(GenericMatcher):
    """``SizeGreaterThan=1m`` (units ``k``, ``m``, ``g``; bytes without): every recipient when
    the message is larger."""

    takes_condition = True

    def configure(self, condition):
        m = _SIZE_RE.match(self.config.require_condition())
        if not m:
            raise self.config.error(f"{condition!r} is not a size; expected e.g. 100, 10k or 1m")
        self.limit = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]

    def match(self, mail):
        return _all_or_none(mail, mail.size > self.limit)


class IsSingleRecipient(GenericMatcher):
    """The recipient of a mail that has exactly one."""

    takes_condition = False

    def match(self, mail):
        return _all_or_none(mail, len(mail.recipients) == 1)


class _RegexMatcher(GenericMatcher):
    takes_condition = True

    def configure(self, condition):
        try:
            self.pattern = re.compile(self.config.require_condition())
        except re.error as exc:
            raise self.config.error(f"invalid regular expression: {exc}") from None


class RecipientIsRegex(_RegexMatcher):
    """``RecipientIsRegex=^sales-.*@example\\.org$``: recipients the expression matches
    (whole address, as Java's ``matches``)."""

    def match(self, mail):
        return [r for r in mail.recipients if self.pattern.fullmatch(r)]


class SenderIsRegex(_RegexMatcher):
    """``SenderIsRegex=.*@example\\.org``: every recipient when the expression matches the
    whole sender address (the null sender is the empty string)."""

    def match(self, mail):
        return _all_or_none(mail, self.pattern.fullmatch(mail.sender) is not None)


class SentByMailet(GenericMatcher):
    """Every recipient of mail a mailet sent (bounces, forwards, redirects)."""

    takes_condition = False

    def match(self, mail):
        return _all_or_none(mail, bool(mail.attributes.get(ATTR_SENT_BY_MAILET)))


class IsSenderInRRTLoop(GenericMatcher):
    """Every recipient when the sender's own address loops in the recipient rewrite table
    (do not bounce to an address that cannot be delivered)."""

    takes_condition = False

    def match(self, mail):
        rrt = self.context.rrt
        if rrt is None or not mail.sender:
            return []
        from chainmail.store.rrt import RewriteLoopError
        try:
            rrt.resolve(mail.sender)
        except RewriteLoopError:
            return list(mail.recipients)
        return []
