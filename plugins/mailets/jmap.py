"""James's JMAP mailets without a JMAP server: ``JMAPFiltering`` (each user's filtering
rules, applied at delivery) and the matcher ``SentByJmap``.

The rules are those of ``chainmail filter`` (:mod:`chainmail.store.filters`), in James's
shape.  Filing into a folder is James's storage directive: the mail attribute
``DeliveryPaths_<username>`` lists the folders, and ``LocalDelivery`` delivers there.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses
from typing import Iterable

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import GenericMailet, GenericMatcher, Mail
from chainmail.store.filters import HEADER_PREFIX, Condition, FilterStore, Rule

__all__ = ["JMAPFiltering", "SentByJmap", "matching_rules", "DELIVERY_PATHS"]

log = logging.getLogger("chainmail.mailet")

#: James's StorageDirective attribute: ``DeliveryPaths_<username>`` = folder names (the
#: username is the recipient's address, lower-cased, without ``+detail``)
DELIVERY_PATHS = "DeliveryPaths_"
#: recipients whose rules forwarded this mail already (James's LoopPrevention)
FORWARDED_BY = "chainmail.jmap_forwarded_by"
#: where James's JMAPFiltering sends a mail its forwards would drop entirely
RRT_ERROR = "rrt-error"


class SentByJmap(GenericMatcher):
    """Matches mail submitted through JMAP.  chainmail has no JMAP submission, so it
    matches no mail (James: every recipient of mail with a JMAP user attribute)."""

    takes_condition = False

    def match(self, mail):
        return []


# ------------------------------------------------------------------------------ matching


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


@dataclass(frozen=True)
class _Address:
    """An address as written in a header, James's ``ContentMatcher.AddressHeader``."""

    full: str
    address: str | None
    personal: str

    @classmethod
    def of(cls, name: str, addr: str, full: str | None = None) -> "_Address":
        text = full if full is not None else (f"{name} <{addr}>" if name and addr else addr or name)
        return cls(text, addr or None, name or addr or text)

    def matches(self, other: "_Address") -> bool:
        """James's ``matchesIgnoreCase``: the same address, personal name or whole text."""
        def same(a: str | None, b: str | None) -> bool:
            return a is not None and b is not None and a.lower() == b.lower()
        same_address = same(self.address, other.address)
        same_personal = same(self.personal, other.personal)
        return (self.full.lower() == other.full.lower()
                or (same_address and same_personal)
                or (same_personal and self.address is None)
                or (same(self.personal, other.address) and same_address)
                or (same(self.address, other.personal) and same_personal))


def _addresses(values: Iterable[str]) -> list[_Address]:
    return [_Address.of(name, addr) for name, addr in getaddresses([_decoded(v) for v in values])
            if name or addr]


def _field_values(mail: Mail, name: str) -> list[str] | list[_Address]:
    if name == "subject":
        subject = mail.get_header("Subject")
        return [] if subject is None else [_decoded(subject)]
    if name == "recipient":
        return _addresses(mail.get_headers("To")) + _addresses(mail.get_headers("Cc"))
    if name in ("from", "to", "cc"):
        return _addresses(mail.get_headers(name))
    return [_decoded(v) for v in mail.get_headers(name[len(HEADER_PREFIX):])]


def _condition_holds(mail: Mail, condition: Condition) -> bool:
    values = _field_values(mail, condition.field)
    wanted, comparator = condition.value, condition.comparator
    negate = comparator.startswith("not-")
    kind = comparator[4:] if negate else comparator
    if values and isinstance(values[0], _Address):
        addresses = [v for v in values if isinstance(v, _Address)]
        if kind == "contains":
            found = any(wanted.lower() in a.full.lower() for a in addresses)
        elif kind == "exactly-equals":
            parsed = _addresses([wanted]) if "@" in wanted else []
            # a value without "@" is a bare name (James: the personal part alone)
            target = parsed[0] if parsed else _Address(wanted, None, wanted.strip())
            found = any(target.matches(a) for a in addresses)
        elif kind == "start-with":
            found = any(a.full.startswith(wanted) for a in addresses)
        else:   # any
            found = any(a.full.strip() for a in addresses)
    else:
        texts = [v for v in values if isinstance(v, str)]
        if kind == "contains":
            found = any(wanted in t for t in texts)
        elif kind == "exactly-equals":
            found = wanted in texts
        elif kind == "start-with":
            found = any(t.startswith(wanted) for t in texts)
        else:   # any
            found = any(t.strip() for t in texts)
    return not found if negate else found


def matching_rules(mail: Mail, rules: Iterable[Rule]) -> list[Rule]:
    """The rules whose conditions ``mail`` meets (all of them for AND, one for OR)."""
    out = []
    for rule in rules:
        results = (_condition_holds(mail, c) for c in rule.conditions)
        if all(results) if rule.combiner == "AND" else any(results):
            out.append(rule)
    return out


# ------------------------------------------------------------------------------- mailet


class JMAPFiltering(GenericMailet):
    """Apply each local recipient's filtering rules (``chainmail filter``), in order, every
    rule that matches: ``reject`` drops the recipient, ``forwardTo`` sends a copy (from the
    recipient) to the addresses and drops the recipient unless ``keepACopy``, a folder
    (``appendIn``, ``moveTo``) sets ``DeliveryPaths_<username>`` for ``LocalDelivery``.
    Needs the processor ``rrt-error`` (as James), where a mail whose forwards would all
    loop goes."""

    parameters = ()

    def configure(self, config):
        states = self.context.states if self.context is not None else frozenset()
        if states and RRT_ERROR not in states:
            raise ConfigError(config.file, config.line, f"mailet {config.name}",
                              f"needs a processor named {RRT_ERROR!r} (for mail whose forwards "
                              "loop); the processors are " + ", ".join(sorted(states)))
        self._store: FilterStore | None = None
        self._opening = threading.Lock()

    def _open(self) -> FilterStore:
        """The rule store, opened at the first mail (``check-config`` creates no database)."""
        with self._opening:
            if self._store is None:
                from chainmail.store.sqlite import DB_FILENAME
                # asked at every mail (a PRAGMA, microseconds): a rule applies from the next mail
                self._store = FilterStore(os.path.join(self.context.var_dir, DB_FILENAME),
                                          refresh_interval=0)
            return self._store

    async def service(self, mail):
        store = self._store or await self.context.run_blocking(self._open)
        users = self.context.users
        for rcpt in list(mail.recipients):
            username = users.username_for(rcpt) if users is not None else rcpt.lower()
            if users is not None and not users.contains(username):
                continue
            rules = store.rules(username)
            if rules:
                for rule in matching_rules(mail, rules):
                    await self._apply(mail, rcpt, username, rule)

    async def _apply(self, mail: Mail, rcpt: str, username: str, rule: Rule) -> None:
        if rule.reject and rcpt in mail.recipients:
            log.info("%s: <%s> rejects it (filter rule %s)", mail.name, rcpt, rule.id)
            mail.recipients = [r for r in mail.recipients if r != rcpt]
        if rule.forward and rcpt in mail.recipients:
            await self._forward(mail, rcpt, rule)
        folders = list(rule.folders) + ([rule.move_to] if rule.move_to else [])
        if folders and rcpt in mail.recipients:
            mail.attributes[DELIVERY_PATHS + username] = folders
            log.info("%s: <%s> files it into %s (filter rule %s)", mail.name, rcpt,
                     ", ".join(folders), rule.id)

    async def _forward(self, mail: Mail, rcpt: str, rule: Rule) -> None:
        recorded = [str(r).lower() for r in mail.attributes.get(FORWARDED_BY) or []]
        if rcpt.lower() in recorded:
            return   # this recipient's forward went round and came back: deliver it
        targets = [a for a in rule.forward if a.lower() not in recorded and a.lower() != rcpt.lower()]
        keep = rule.keep_a_copy or any(a.lower() == rcpt.lower() for a in rule.forward)
        if targets:
            copy = mail.duplicate(targets)
            copy.sender = rcpt
            copy.attributes[FORWARDED_BY] = recorded + [rcpt.lower()]
            await self.context.send_mail(copy)
            log.info("%s: <%s> forwards it to %s (filter rule %s)", mail.name, rcpt,
                     ", ".join(f"<{t}>" for t in targets), rule.id)
        if not keep:
            mail.recipients = [r for r in mail.recipients if r != rcpt]
            if not targets:
                looped = mail.duplicate([rcpt])
                looped.error_message = f"forwards of <{rcpt}> loop"
                await self.context.send_mail(looped, RRT_ERROR)

    def destroy(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
