"""Sieve scripts (RFC 5228) checked and turned into a small tree that is quick to evaluate.

sievelib parses the grammar; this module checks what sievelib leaves open (``require``
of an extension chainmail does not run, a script over the size limit, a bad ``:days``) and
builds frozen nodes with decoded strings and numbers, so that evaluating a script for a
delivery never parses anything.  The same check runs when a script is uploaded by
``chainmail sieve put`` and when the ``Sieve`` mailet loads it, so a script that passes
the upload runs at delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

from sievelib import commands as _commands
from sievelib.parser import Parser

__all__ = ["SieveScriptError", "Script", "compile_script", "SUPPORTED_EXTENSIONS",
           "MAX_SCRIPT_BYTES", "MAX_REDIRECTS"]

#: extensions a script may ``require``
SUPPORTED_EXTENSIONS = frozenset({
    "fileinto", "reject", "ereject", "envelope", "vacation", "copy", "mailbox",
    "comparator-i;octet", "comparator-i;ascii-casemap",
})
MAX_SCRIPT_BYTES = 64 * 1024
#: redirects one script may make for one message (RFC 5228 §4.2 asks for a limit)
MAX_REDIRECTS = 5
COMPARATORS = ("i;ascii-casemap", "i;octet")
VACATION_MAX_DAYS = 365


class SieveScriptError(ValueError):
    """The script does not parse, or needs what chainmail does not run."""


class ErejectCommand(_commands.ActionCommand):
    """``ereject`` (RFC 5429 §2.1): ``reject`` that would refuse at the protocol level."""

    extension = "ereject"
    args_definition = [{"name": "text", "type": ["string"], "required": True}]


_commands.add_commands(ErejectCommand)


# ---------------------------------------------------------------------------- the tree

@dataclass(frozen=True)
class Match:
    """How a test compares: comparator, match type (``is``, ``contains``, ``matches``) and
    the keys."""

    comparator: str
    match_type: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class HeaderTest:
    names: tuple[str, ...]
    match: Match


@dataclass(frozen=True)
class AddressTest:
    """``address`` (``envelope`` False) or ``envelope``; ``part`` is ``all``, ``localpart``
    or ``domain``."""

    names: tuple[str, ...]
    part: str
    match: Match
    envelope: bool = False


@dataclass(frozen=True)
class ExistsTest:
    names: tuple[str, ...]


@dataclass(frozen=True)
class SizeTest:
    over: bool
    limit: int


@dataclass(frozen=True)
class ListTest:
    """``allof`` (``all_of`` True) or ``anyof``."""

    all_of: bool
    tests: tuple["Test", ...]


@dataclass(frozen=True)
class NotTest:
    test: "Test"


@dataclass(frozen=True)
class ConstTest:
    value: bool


Test = Union[HeaderTest, AddressTest, ExistsTest, SizeTest, ListTest, NotTest, ConstTest]


@dataclass(frozen=True)
class Action:
    """An action: ``keep``, ``discard``, ``stop``, ``fileinto`` (``folder``, ``copy``),
    ``redirect`` (``address``, ``copy``), ``reject`` / ``ereject`` (``text``),
    ``vacation`` (``vacation``)."""

    name: str
    folder: str = ""
    address: str = ""
    text: str = ""
    copy: bool = False
    vacation: "VacationAction | None" = None


@dataclass(frozen=True)
class VacationAction:
    """``vacation`` (RFC 5230): ``days`` between replies to one sender, ``handle`` (``""``
    when not given: the reason, subject and from stand for it)."""

    reason: str
    days: int = 7
    subject: str | None = None
    from_addr: str | None = None
    addresses: tuple[str, ...] = ()
    handle: str = ""
    mime: bool = False


@dataclass(frozen=True)
class If:
    """``if`` / ``elsif`` / ``else``: each branch a test (``None`` for ``else``) and its
    commands."""

    branches: tuple[tuple[Test | None, tuple["Command", ...]], ...]


Command = Union[Action, If]


@dataclass(frozen=True)
class Script:
    commands: tuple[Command, ...]
    requires: frozenset[str]


# ---------------------------------------------------------------------------- compiling

def compile_script(text: str | bytes) -> Script:
    """Parse and check ``text``; :class:`SieveScriptError` saying what is wrong."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(data) > MAX_SCRIPT_BYTES:
        raise SieveScriptError(f"script of {len(data)} bytes is over the limit of "
                               f"{MAX_SCRIPT_BYTES} bytes")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveScriptError("script is not UTF-8") from None
    parser = Parser()
    if not parser.parse(data):
        raise SieveScriptError(str(getattr(parser, "error", "does not parse")))
    requires: set[str] = set()
    nodes = list(parser.result)
    body: list[Any] = []
    at_start = True
    for node in nodes:
        if node.name == "require":
            if not at_start:
                raise SieveScriptError("require must come before any other command")
            for ext in _strings(node.arguments["capabilities"]):
                if ext not in SUPPORTED_EXTENSIONS:
                    raise SieveScriptError(
                        f"extension {ext!r} is not supported; supported: "
                        + ", ".join(sorted(SUPPORTED_EXTENSIONS)))
                requires.add(ext)
            continue
        at_start = False
        body.append(node)
    return Script(_block(body), frozenset(requires))


def _block(nodes: list[Any]) -> tuple[Command, ...]:
    out: list[Command] = []
    for node in nodes:
        name = node.name
        if name == "require":
            raise SieveScriptError("require is only allowed at the start of the script")
        if name == "if":
            out.append(If(((_test(node.arguments["test"]), _block(node.children)),)))
        elif name in ("elsif", "else"):
            last = out[-1] if out else None
            if not isinstance(last, If) or last.branches[-1][0] is None:
                raise SieveScriptError(f"{name} without if")
            test = _test(node.arguments["test"]) if name == "elsif" else None
            out[-1] = If(last.branches + ((test, _block(node.children)),))
        else:
            out.append(_action(node))
    return tuple(out)


def _action(node: Any) -> Action:
    name = node.name
    args = node.arguments
    if name in ("keep", "discard", "stop"):
        if name == "keep" and "flags" in args:
            raise SieveScriptError("keep :flags is not supported")
        return Action(name)
    if name == "fileinto":
        if "flags" in args:
            raise SieveScriptError("fileinto :flags is not supported")
        folder = _string(args["mailbox"])
        if not folder.strip():
            raise SieveScriptError("fileinto: empty folder name")
        return Action("fileinto", folder=folder, copy="copy" in args)
    if name == "redirect":
        address = _string(args["address"]).strip()
        if not _ADDRESS.fullmatch(address):
            raise SieveScriptError(f"redirect: {address!r} is not an address")
        return Action("redirect", address=address, copy="copy" in args)
    if name in ("reject", "ereject"):
        return Action(name, text=_string(args["text"]))
    if name == "vacation":
        return Action("vacation", vacation=_vacation(node))
    raise SieveScriptError(f"command {name!r} is not supported")


def _vacation(node: Any) -> VacationAction:
    args, extra = node.arguments, node.extra_arguments
    if "seconds" in args:
        raise SieveScriptError("vacation :seconds is not supported")
    days = 7
    if "days" in args:
        days = _number(extra["days"])
    days = max(1, min(VACATION_MAX_DAYS, days))
    from_addr = _string(extra["from"]) if "from" in args else None
    addresses = tuple(_strings(extra["addresses"])) if "addresses" in args else ()
    return VacationAction(reason=_string(args["reason"]), days=days,
                          subject=_string(extra["subject"]) if "subject" in args else None,
                          from_addr=from_addr, addresses=addresses,
                          handle=_string(extra["handle"]) if "handle" in args else "",
                          mime="mime" in args)


def _test(node: Any) -> Test:
    name = node.name
    args = node.arguments
    if name in ("true", "false"):
        return ConstTest(name == "true")
    if name == "not":
        return NotTest(_test(args["test"]))
    if name in ("allof", "anyof"):
        return ListTest(name == "allof", tuple(_test(t) for t in args["tests"]))
    if name == "exists":
        return ExistsTest(tuple(_strings(args["header-names"])))
    if name == "size":
        return SizeTest(args["comparator"] == ":over", _number(args["limit"]))
    if name == "header":
        return HeaderTest(tuple(_strings(args["header-names"])), _match(node))
    if name in ("address", "envelope"):
        part = args.get("address-part", ":all")[1:]
        names = tuple(n.lower() for n in _strings(args["header-list"]))
        if name == "envelope":
            for n in names:
                if n not in ("from", "to"):
                    raise SieveScriptError(f"envelope: unknown part {n!r} (from or to)")
        return AddressTest(names, part, _match(node), envelope=name == "envelope")
    raise SieveScriptError(f"test {name!r} is not supported")


def _match(node: Any) -> Match:
    args, extra = node.arguments, node.extra_arguments
    match_type = args.get("match-type", ":is")[1:]
    if match_type not in ("is", "contains", "matches"):
        raise SieveScriptError(f"match type :{match_type} is not supported")
    comparator = "i;ascii-casemap"
    if "comparator" in args:
        comparator = _string(extra["comparator"])
        if comparator not in COMPARATORS:
            raise SieveScriptError(f"comparator {comparator!r} is not supported")
    return Match(comparator, match_type, tuple(_strings(args["key-list"])))


# ---------------------------------------------------------------------------- literals

_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"]+@[A-Za-z0-9.\-\[\]:]+")
_NUMBER = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _number(value: Any) -> int:
    m = _NUMBER.fullmatch(str(value).strip())
    if not m:
        raise SieveScriptError(f"{value!r} is not a number")
    return int(m.group(1)) * _MULTIPLIERS[m.group(2).lower()]


def _strings(value: Any) -> list[str]:
    """A string or a string list as a list of decoded strings."""
    if isinstance(value, list):
        return [_string(v) for v in value]
    return [_string(value)]


def _string(value: Any) -> str:
    """A quoted string (``\\`` escapes removed) or a multi-line ``text:`` (the first line
    and the final ``.`` removed, ``..`` at the start of a line made ``.``)."""
    text = str(value)
    if text.startswith("text:"):
        _, _, rest = text.partition("\n")
        lines = rest.split("\n")
        if lines and lines[-1].rstrip("\r") == ".":
            lines = lines[:-1]
        lines = [line[1:] if line.startswith("..") else line for line in lines]
        return "\n".join(line.rstrip("\r") for line in lines) + ("\n" if lines else "")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
    return text
