"""Evaluating a compiled Sieve script (RFC 5228) for one recipient of one message.

Evaluation only decides: it returns the actions to take (:class:`Outcome`) and changes
nothing, so that an error met half-way (RFC 5228 §2.10.6) leaves nothing half-done and
the caller falls back to the implicit keep.  Matching is regex-free: ``:matches`` runs a
glob matcher that remembers one ``*`` to go back to, so its time is bounded by the product
of the two lengths whatever the pattern (no catastrophic backtracking).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import getaddresses
from typing import Callable, Sequence

from chainmail.sieve_script import (MAX_REDIRECTS, Action, AddressTest, ConstTest, ExistsTest,
                           HeaderTest, If, ListTest, Match, NotTest, Script, SizeTest, Test,
                           VacationAction)

__all__ = ["Envelope", "Outcome", "SieveRuntimeError", "evaluate", "glob_match"]

INBOX = "INBOX"


class SieveRuntimeError(Exception):
    """The script asked for something that cannot be done (RFC 5228 §2.10.6: keep)."""


@dataclass(frozen=True)
class Envelope:
    """What a script sees of one delivery: the envelope sender (``""`` for ``<>``), the
    recipient being delivered to, the message's size and its header fields (name, raw
    unfolded value) in order."""

    sender: str
    recipient: str
    size: int
    headers: Sequence[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [value for n, value in self.headers if n.lower() == key]


@dataclass
class Outcome:
    """What the script decided: the folders to file into (``INBOX`` for keep), the
    addresses to redirect to, a rejection (``reject`` or ``ereject`` and its text), a
    vacation reply, and whether the implicit keep still holds."""

    folders: list[str] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: tuple[str, str] | None = None
    vacation: VacationAction | None = None
    implicit_keep: bool = True
    discarded: bool = False

    @property
    def delivered_to(self) -> list[str]:
        """The folders the message goes to (the implicit keep included)."""
        if self.implicit_keep and INBOX not in self.folders:
            return [*self.folders, INBOX]
        return list(self.folders)


class _Stop(Exception):
    """``stop``: end the script (not an error)."""


def evaluate(script: Script, envelope: Envelope) -> Outcome:
    """Run ``script`` for ``envelope``; :class:`SieveRuntimeError` for a runtime error."""
    outcome = Outcome()
    with contextlib.suppress(_Stop):
        _run(script.commands, envelope, outcome)
    if outcome.reject is not None and (outcome.folders or outcome.vacation is not None):
        raise SieveRuntimeError(f"{outcome.reject[0]} cannot be combined with keep, fileinto "
                                "or vacation (RFC 5429 §2.1)")
    return outcome


def _run(commands: Sequence[Action | If], env: Envelope, outcome: Outcome) -> None:
    for command in commands:
        if isinstance(command, If):
            for test, block in command.branches:
                if test is None or _test(test, env):
                    _run(block, env, outcome)
                    break
        else:
            _act(command, outcome)


def _act(action: Action, outcome: Outcome) -> None:
    name = action.name
    if name == "stop":
        raise _Stop
    if name == "keep":
        _file(outcome, INBOX)
        outcome.implicit_keep = False
    elif name == "fileinto":
        _file(outcome, action.folder)
        if not action.copy:
            outcome.implicit_keep = False
    elif name == "discard":
        outcome.implicit_keep = False
        outcome.discarded = True
    elif name == "redirect":
        address = action.address
        if address.lower() not in (a.lower() for a in outcome.redirects):
            if len(outcome.redirects) >= MAX_REDIRECTS:
                raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
            outcome.redirects.append(address)
        if not action.copy:
            outcome.implicit_keep = False
    elif name in ("reject", "ereject"):
        if outcome.reject is not None:
            raise SieveRuntimeError("more than one reject")
        outcome.reject = (name, action.text)
        outcome.implicit_keep = False
    elif name == "vacation":
        if outcome.vacation is not None:
            raise SieveRuntimeError("more than one vacation")
        outcome.vacation = action.vacation
    else:
        raise SieveRuntimeError(f"unknown action {name!r}")


def _file(outcome: Outcome, folder: str) -> None:
    key = INBOX if folder.upper() == INBOX else folder
    if key not in outcome.folders:
        outcome.folders.append(key)


# ---------------------------------------------------------------------------- tests

def _test(test: Test, env: Envelope) -> bool:
    if isinstance(test, ConstTest):
        return test.value
    if isinstance(test, NotTest):
        return not _test(test.test, env)
    if isinstance(test, ListTest):
        if test.all_of:
            return all(_test(t, env) for t in test.tests)
        return any(_test(t, env) for t in test.tests)
    if isinstance(test, ExistsTest):
        return all(env.values(name) for name in test.names)
    if isinstance(test, SizeTest):
        return env.size > test.limit if test.over else env.size < test.limit
    if isinstance(test, HeaderTest):
        values = [_decoded(v) for name in test.names for v in env.values(name)]
        return _matches_any(test.match, values)
    if isinstance(test, AddressTest):
        return _matches_any(test.match, [_part(a, test.part) for a in _addresses(test, env)])
    raise SieveRuntimeError(f"unknown test {test!r}")


def _addresses(test: AddressTest, env: Envelope) -> list[str]:
    if test.envelope:
        out = []
        for name in test.names:
            out.append(env.sender if name == "from" else env.recipient)
        return out
    raw = [v for name in test.names for v in env.values(name)]
    return [addr for _, addr in getaddresses(raw) if addr]


def _part(address: str, part: str) -> str:
    if not address:
        return ""   # the null reverse-path: every part is the empty string
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    return address


def _decoded(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded (the raw value if broken)."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


def _matches_any(match: Match, values: list[str]) -> bool:
    fold: Callable[[str], str] = _ascii_lower if match.comparator == "i;ascii-casemap" else str
    for value in values:
        v = fold(value)
        for key in match.keys:
            k = fold(key)
            if match.match_type == "is":
                if v == k:
                    return True
            elif match.match_type == "contains":
                if k in v:
                    return True
            elif glob_match(k, v):
                return True
    return False


def _ascii_lower(text: str) -> str:
    """``i;ascii-casemap``: only A-Z are folded (RFC 4790 §9.2)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def glob_match(pattern: str, text: str) -> bool:
    """``:matches``: ``*`` any run, ``?`` one character, ``\\`` quotes the next one.

    Greedy with one remembered ``*``: on a mismatch, the last ``*`` takes one more
    character.  Linear in the text for each ``*`` segment, O(len(pattern) * len(text)) at
    worst, never exponential."""
    tokens: list[tuple[str, str]] = []   # ("*", ""), ("?", ""), ("c", char)
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            tokens.append(("c", pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            if not tokens or tokens[-1][0] != "*":
                tokens.append(("*", ""))
        elif ch == "?":
            tokens.append(("?", ""))
        else:
            tokens.append(("c", ch))
        i += 1
    p = t = 0
    star_p, star_t = -1, 0
    while t < len(text):
        if p < len(tokens) and (tokens[p][0] == "?" or
                                (tokens[p][0] == "c" and tokens[p][1] == text[t])):
            p += 1
            t += 1
        elif p < len(tokens) and tokens[p][0] == "*":
            star_p, star_t = p, t
            p += 1
        elif star_p >= 0:
            star_t += 1
            p, t = star_p + 1, star_t
        else:
            return False
    while p < len(tokens) and tokens[p][0] == "*":
        p += 1
    return p == len(tokens)
