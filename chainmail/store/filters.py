"""Users' filtering rules (James's JMAP filters), kept in the shared SQLite database.

A rule has James's shape (``org.apache.james.jmap.api.filtering.Rule``, stored as its JSON
form)::

    {"id": "1", "name": "news",
     "conditionGroup": {"conditionCombiner": "AND",
                        "conditions": [{"field": "subject", "comparator": "contains",
                                        "value": "[news]"}]},
     "action": {"appendIn": {"mailboxIds": ["News"]}, "moveTo": null, "reject": false,
                "forwardTo": null}}

``JMAPFiltering`` reads the rules of each local recipient at delivery; ``chainmail filter``
manages them.  chainmail has no mailbox ids: ``appendIn.mailboxIds`` holds folder names.
Lookups answer from memory; changes made by another process are seen within a second
(``PRAGMA data_version``, see :class:`chainmail.store.sqlite.RefreshedCache`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from chainmail.store import sqlite as _sqlite

__all__ = ["Condition", "Rule", "FilterStore", "RuleError", "FIELDS", "COMPARATORS",
           "MAX_RULES", "parse_rule"]

COMPONENT = "filters"
log = logging.getLogger("chainmail.store")

MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE filter_rules (username TEXT NOT NULL, position INTEGER NOT NULL,"
        " id TEXT NOT NULL, rule TEXT NOT NULL, PRIMARY KEY (username, id)) WITHOUT ROWID",
    ),
]

#: James's fields that a received mail has (``sentDate``, ``savedDate``, ``internalDate``
#: and ``flag`` concern stored messages); ``header:Name`` names any header field.
FIELDS = ("from", "to", "cc", "recipient", "subject")
HEADER_PREFIX = "header:"
COMPARATORS = ("contains", "not-contains", "exactly-equals", "not-exactly-equals",
               "start-with", "any")
COMBINERS = ("AND", "OR")
#: bounds that keep one user's rules cheap to evaluate at every delivery
MAX_RULES = 200
MAX_CONDITIONS = 20
MAX_VALUE = 1000
MAX_FOLDER = 255


class RuleError(ValueError):
    """A rule that is not in James's shape or exceeds a bound; the message says what."""


@dataclass(frozen=True)
class Condition:
    field: str
    comparator: str
    value: str


@dataclass(frozen=True)
class Rule:
    """One filtering rule; :meth:`to_json` gives James's JSON form."""

    id: str
    name: str
    conditions: tuple[Condition, ...]
    combiner: str = "AND"
    folders: tuple[str, ...] = ()          # appendIn.mailboxIds (folder names here)
    move_to: str | None = None             # moveTo.mailboxName
    reject: bool = False
    forward: tuple[str, ...] = ()          # forwardTo.addresses
    keep_a_copy: bool = False              # forwardTo.keepACopy
    extra: Mapping[str, Any] = field(default_factory=dict)   # other action keys, kept

    def to_json(self) -> dict[str, Any]:
        action: dict[str, Any] = dict(self.extra)
        action.update({
            "appendIn": {"mailboxIds": list(self.folders)},
            "moveTo": {"mailboxName": self.move_to} if self.move_to else None,
            "reject": self.reject,
            "forwardTo": ({"addresses": list(self.forward), "keepACopy": self.keep_a_copy}
                          if self.forward else None),
        })
        return {"id": self.id, "name": self.name,
                "conditionGroup": {"conditionCombiner": self.combiner,
                                   "conditions": [{"field": c.field, "comparator": c.comparator,
                                                   "value": c.value} for c in self.conditions]},
                "action": action}


def check_field(name: str) -> str:
    if name in FIELDS:
        return name
    if name.startswith(HEADER_PREFIX) and name[len(HEADER_PREFIX):].strip():
        header = name[len(HEADER_PREFIX):].strip()
        if any(ch in header for ch in ": \t\r\n") or not header.isascii():
            raise RuleError(f"{name!r}: a header name is ASCII without ':' or blanks")
        return HEADER_PREFIX + header
    raise RuleError(f"{name!r} is not a field; expected one of {', '.join(FIELDS)} or "
                    "header:NAME")


def check_folder(name: str) -> str:
    """A folder name a rule may file into (LocalDelivery encodes it on disk)."""
    if not isinstance(name, str) or not name.strip():
        raise RuleError("a folder name is empty")
    if name != name.strip() or len(name) > MAX_FOLDER:
        raise RuleError(f"{name!r}: a folder name has no leading or trailing blanks and at most "
                        f"{MAX_FOLDER} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise RuleError(f"{name!r}: a folder name has no control characters")
    parts = name.replace(".", "/").split("/")
    if any(part in ("", "..") for part in parts):
        raise RuleError(f"{name!r}: every level of a folder name must be named "
                        "(no empty level, no '..')")
    return name


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RuleError(f"{what} must be a string")
    if len(value) > MAX_VALUE:
        raise RuleError(f"{what} is longer than {MAX_VALUE} characters")
    return value


def parse_rule(data: Mapping[str, Any]) -> Rule:
    """A rule from James's JSON form (``condition`` alone, the older form, is accepted)."""
    if not isinstance(data, Mapping):
        raise RuleError("a rule is a JSON object")
    rule_id = _text(data.get("id"), "id").strip()
    if not rule_id:
        raise RuleError("a rule needs an id")
    name = _text(data.get("name") or rule_id, "name")
    group = data.get("conditionGroup")
    if group is None and data.get("condition") is not None:
        group = {"conditionCombiner": "AND", "conditions": [data["condition"]]}
    if not isinstance(group, Mapping):
        raise RuleError("a rule needs a conditionGroup with conditions")
    combiner = str(group.get("conditionCombiner") or "AND").upper()
    if combiner not in COMBINERS:
        raise RuleError(f"conditionCombiner {combiner!r}: expected AND or OR")
    raw_conditions = group.get("conditions")
    if not isinstance(raw_conditions, list) or not raw_conditions:
        raise RuleError("a rule needs at least one condition")
    if len(raw_conditions) > MAX_CONDITIONS:
        raise RuleError(f"a rule has at most {MAX_CONDITIONS} conditions")
    conditions = []
    for raw in raw_conditions:
        if not isinstance(raw, Mapping):
            raise RuleError("a condition is an object with field, comparator and value")
        comparator = _text(raw.get("comparator"), "comparator")
        if comparator not in COMPARATORS:
            raise RuleError(f"{comparator!r} is not a comparator; expected one of "
                            + ", ".join(COMPARATORS))
        conditions.append(Condition(check_field(_text(raw.get("field"), "field")), comparator,
                                    _text(raw.get("value") or "", "value")))
    action = data.get("action") or {}
    if not isinstance(action, Mapping):
        raise RuleError("action is an object")
    append = action.get("appendIn") or {}
    folders = tuple(check_folder(f) for f in (append.get("mailboxIds") or []))
    move = action.get("moveTo") or {}
    move_to = check_folder(move["mailboxName"]) if move.get("mailboxName") else None
    forward = action.get("forwardTo") or {}
    addresses = tuple(_text(a, "forward address").strip() for a in forward.get("addresses") or [])
    if any("@" not in a or any(ch in a for ch in " <>\r\n") for a in addresses):
        raise RuleError(f"forward addresses must be plain addresses (user@domain): {addresses}")
    reject = bool(action.get("reject"))
    if not (folders or move_to or reject or addresses):
        raise RuleError("a rule needs an action: a folder (appendIn/moveTo), reject or forward")
    extra = {k: v for k, v in action.items()
             if k not in ("appendIn", "moveTo", "reject", "forwardTo")}
    return Rule(rule_id, name, tuple(conditions), combiner, folders, move_to, reject, addresses,
                bool(forward.get("keepACopy")), extra)


class FilterStore(_sqlite.RefreshedCache):
    """Every user's rules, in order.  One instance per process; thread-safe."""

    def __init__(self, db_path: str | os.PathLike[str], *, refresh_interval: float = 1.0) -> None:
        self._rules: dict[str, list[Rule]] = {}
        self._open(db_path, COMPONENT, MIGRATIONS, refresh_interval)

    def _load(self, conn) -> None:
        rules: dict[str, list[Rule]] = {}
        for username, text in conn.execute(
                "SELECT username, rule FROM filter_rules ORDER BY username, position"):
            try:
                rules.setdefault(username, []).append(parse_rule(json.loads(text)))
            except ValueError as exc:   # RuleError, or JSON: a bad row must not stop mail
                log.warning("filter rule of %s ignored: %s", username, exc)
        self._rules = rules

    # -- reading

    def rules(self, username: str) -> list[Rule]:
        """The rules of ``username`` (lower-cased full address), in order."""
        self._refresh()
        return list(self._rules.get(username.lower(), ()))

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._rules)

    # -- changing

    def add(self, username: str, rule: Rule) -> None:
        """Append ``rule``; :class:`RuleError` if the user has one with that id or too many."""
        user = username.lower()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                count, last = conn.execute(
                    "SELECT COUNT(*), COALESCE(MAX(position), 0) FROM filter_rules"
                    " WHERE username = ?", (user,)).fetchone()
                if count >= MAX_RULES:
                    raise RuleError(f"{user} has {count} rules already (at most {MAX_RULES})")
                if conn.execute("SELECT 1 FROM filter_rules WHERE username = ? AND id = ?",
                                (user, rule.id)).fetchone():
                    raise RuleError(f"{user} has a rule with id {rule.id!r} already")
                conn.execute("INSERT INTO filter_rules (username, position, id, rule)"
                             " VALUES (?, ?, ?, ?)",
                             (user, last + 1, rule.id, json.dumps(rule.to_json())))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._reload_locked()

    def next_id(self, username: str) -> str:
        """The smallest number not used as an id by ``username``'s rules."""
        used = {rule.id for rule in self.rules(username)}
        return next(str(n) for n in range(1, len(used) + 2) if str(n) not in used)

    def remove(self, username: str, rule_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM filter_rules WHERE username = ? AND id = ?",
                                     (username.lower(), rule_id))
            self._reload_locked()
        return cur.rowcount > 0

    def clear(self, username: str) -> int:
        with self._lock:
            cur = self._conn.execute("DELETE FROM filter_rules WHERE username = ?",
                                     (username.lower(),))
            self._reload_locked()
        return cur.rowcount

    def close(self) -> None:
        self._conn.close()
