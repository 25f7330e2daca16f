"""Safe XML loading and small typed readers shared by the configuration modules.

The parser never resolves entities, never touches the network and never loads
a DTD; a document that carries any ``<!DOCTYPE>`` is rejected outright.  Every
element keeps its ``sourceline`` so that errors can point at the file and line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar, overload

from lxml import etree

from .errors import ConfigError, ConfigErrors, ConfigWarning

_T = TypeVar("_T")

__all__ = [
    "make_parser",
    "parse_file",
    "parse_bytes",
    "elements",
    "first_child",
    "children_named",
    "text_of",
    "parse_bool",
    "Parameters",
    "element_parameters",
    "Reader",
]

_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")


def make_parser() -> etree.XMLParser:
    """The one parser configuration used for every configuration file."""
    return etree.XMLParser(
        remove_comments=True,
        remove_pis=True,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
    )


def parse_bytes(data: bytes, file: str) -> etree._Element:
    """Parse an in-memory document; ``file`` is only used in messages."""
    file = str(file)
    try:
        root = etree.fromstring(data, make_parser(), base_url=file)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        msg = exc.msg or str(exc)
        # lxml appends ", line N, column M" to the message; the line is already in front.
        msg = re.sub(r", line \d+, column \d+$", "", msg)
        column = exc.position[1] if exc.position else None
        where = f" (column {column})" if column else ""
        raise ConfigError(file, line, "xml", f"{msg}{where}; expected a well-formed XML document") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        idx = data.find(b"<!DOCTYPE")
        line = data[:idx].count(b"\n") + 1 if idx >= 0 else None
        raise ConfigError(
            file, line, "DOCTYPE",
            "document type declarations are not allowed in configuration files "
            "(entities are never expanded); expected a plain XML document without <!DOCTYPE>",
        )
    return root


def parse_file(path: str | os.PathLike[str]) -> etree._Element:
    """Read and parse ``path`` safely; any problem becomes a :class:`ConfigError`."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(file, None, "", f"cannot read file ({exc.strerror}); expected a readable XML file") from None
    return parse_bytes(data, file)


def elements(parent: etree._Element) -> Iterator[etree._Element]:
    """Child *elements* of ``parent`` (comments, PIs and entity references skipped)."""
    for child in parent:
        if isinstance(child.tag, str):
            yield child


def first_child(parent: etree._Element, tag: str) -> etree._Element | None:
    for child in elements(parent):
        if child.tag == tag:
            return child
    return None


def children_named(parent: etree._Element, tag: str) -> list[etree._Element]:
    return [c for c in elements(parent) if c.tag == tag]


def text_of(el: etree._Element | None) -> str:
    """The element's own text, stripped (``""`` when absent)."""
    if el is None or el.text is None:
        return ""
    return el.text.strip()


def parse_bool(value: str) -> bool:
    """``true``/``false`` (case-insensitive, surrounding blanks ignored); else ``ValueError``.

    The one boolean rule of every file and plugin parameter (James's mailets accept only
    these two words too); the message says what is expected."""
    v = value.strip().lower()
    if v == "true":
        return True
    if v == "false":
        return False
    raise ValueError(f"{value!r} is not a boolean; expected true or false")


class Parameters(Mapping[str, str]):
    """A plugin's parameters (its element's children) that remember the line of each, so
    that a warning or an error about one parameter names that parameter's own line."""

    def __init__(self, values: Mapping[str, str] | None = None,
                 lines: Mapping[str, int] | None = None) -> None:
        self._values = dict(values or {})
        self._lines = dict(lines or {})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Parameters({self._values!r})"

    def line_of(self, key: str) -> int | None:
        """The line of the (first) element ``key`` was read from; None when not known."""
        return self._lines.get(key)

    def without(self, *keys: str) -> "Parameters":
        return Parameters({k: v for k, v in self._values.items() if k not in keys},
                          {k: v for k, v in self._lines.items() if k not in keys})


def element_parameters(el: etree._Element) -> Parameters:
    """The children of ``el`` as parameters: element name to text, repeated elements joined
    with ``,``, grandchildren also as ``parent.child``; each with its line."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}

    def walk(node: etree._Element, prefix: str) -> None:
        for child in elements(node):
            key = f"{prefix}{child.tag}"
            has_children = next(elements(child), None) is not None
            if not has_children or text_of(child):
                values[key] = f"{values[key]},{text_of(child)}" if key in values else text_of(child)
                if child.sourceline is not None:
                    lines.setdefault(key, child.sourceline)
            walk(child, key + ".")

    walk(el, "")
    return Parameters(values, lines)


class Reader:
    """Typed access to one file's elements, collecting warnings as it goes.

    Errors raise :class:`ConfigError` with the element's line, unless the reader was made
    with ``collect=True``: then every error is kept in ``errors``, a bad value is read as
    its default and reading goes on, so that one pass finds them all; the caller ends with
    :meth:`raise_errors`.
    """

    def __init__(self, file: str, *, collect: bool = False) -> None:
        self.file = str(file)
        self.collect = collect
        self.warnings: list[ConfigWarning] = []
        self.errors: list[ConfigError] = []

    # -- reporting -------------------------------------------------------------------------
    def error(self, el: etree._Element | int | None, element: str, message: str) -> ConfigError:
        line = el if isinstance(el, int) or el is None else el.sourceline
        return ConfigError(self.file, line, element, message)

    def fail(self, el: etree._Element | int | None, element: str, message: str) -> None:
        """Report an error: kept when collecting, else raised."""
        self.record(self.error(el, element, message))

    def record(self, error: ConfigError) -> None:
        if not self.collect:
            raise error
        self.errors.append(error)

    def attempt(self, make: Callable[[], _T], default: _T) -> _T:
        """``make()``; when collecting, a :class:`ConfigError` it raises is kept and
        ``default`` returned (for parts that cannot go on after their own first error)."""
        if not self.collect:
            return make()
        try:
            return make()
        except ConfigError as exc:
            self.errors.append(exc)
            return default

    def raise_errors(self) -> None:
        """Raise what was collected: the error itself, or :class:`ConfigErrors`."""
        if self.errors:
            raise ConfigErrors.of(self.errors)

    def warn(self, el: etree._Element | int | None, element: str, message: str) -> None:
        line = el if isinstance(el, int) or el is None else el.sourceline
        self.warnings.append(ConfigWarning(self.file, line, element, message))

    def check_children(
        self,
        parent: etree._Element,
        known: Iterable[str],
        *,
        repeatable: Iterable[str] = (),
        where: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Warn about unknown children of ``parent`` and about repeated single-valued ones.

        ``extra`` maps element names to a specific warning text (used for elements that
        are known but deliberately not supported, or that do not apply to this server kind).
        """
        known = set(known)
        repeatable = set(repeatable)
        extra = extra or {}
        seen: set[str] = set()
        where = where or parent.tag
        for child in elements(parent):
            tag = child.tag
            if tag in extra:
                self.warn(child, tag, extra[tag])
                continue
            if tag not in known:
                self.warn(
                    child, tag,
                    f"unknown element inside <{where}> is ignored; check the spelling "
                    f"(element names are case-sensitive)",
                )
                continue
            if tag in seen and tag not in repeatable:
                self.warn(child, tag, f"repeated inside <{where}>; only the first one is used")
            seen.add(tag)
        if parent.text and parent.text.strip() and known:
            self.warn(parent, parent.tag, f"unexpected text {parent.text.strip()!r} is ignored")

    # -- typed values ----------------------------------------------------------------------
    def bool_value(self, el: etree._Element, value: str, element: str, default: bool = False) -> bool:
        try:
            return parse_bool(value)
        except ValueError as exc:
            self.fail(el, element, str(exc))
            return default

    def attr_bool(self, el: etree._Element, name: str, default: bool) -> bool:
        value = el.get(name)
        if value is None:
            return default
        return self.bool_value(el, value, f"{el.tag}[@{name}]", default)

    def child_text(self, parent: etree._Element, tag: str, default: str | None = None) -> str | None:
        el = first_child(parent, tag)
        if el is None:
            return default
        return text_of(el)

    def child_bool(self, parent: etree._Element, tag: str, default: bool) -> bool:
        el = first_child(parent, tag)
        if el is None:
            return default
        return self.bool_value(el, text_of(el), tag, default)

    def int_value(
        self, el: etree._Element, value: str, element: str, *, minimum: int | None = 0, maximum: int | None = None,
    ) -> int | None:
        """The integer, or None after reporting why it is not one."""
        v = value.strip()
        if not _INT_RE.match(v):
            self.fail(el, element, f"{value!r} is not an integer; expected {_int_range(minimum, maximum)}")
            return None
        n = int(v)
        if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
            self.fail(el, element, f"{n} is out of range; expected {_int_range(minimum, maximum)}")
            return None
        return n

    @overload
    def child_int(self, parent: etree._Element, tag: str, default: int, *,
                  minimum: int | None = 0, maximum: int | None = None) -> int: ...

    @overload
    def child_int(self, parent: etree._Element, tag: str, default: None, *,
                  minimum: int | None = 0, maximum: int | None = None) -> int | None: ...

    def child_int(
        self, parent: etree._Element, tag: str, default: int | None, *, minimum: int | None = 0, maximum: int | None = None,
    ) -> int | None:
        el = first_child(parent, tag)
        if el is None:
            return default
        n = self.int_value(el, text_of(el), tag, minimum=minimum, maximum=maximum)
        return default if n is None else n

    def child_float(self, parent: etree._Element, tag: str, default: float, *, minimum: float = 0.0) -> float:
        el = first_child(parent, tag)
        if el is None:
            return default
        v = text_of(el)
        if not _FLOAT_RE.match(v):
            self.fail(el, tag, f"{v!r} is not a number; expected a number of seconds >= {minimum:g}")
            return default
        n = float(v)
        if n < minimum:
            self.fail(el, tag, f"{v} is out of range; expected a number of seconds >= {minimum:g}")
            return default
        return n


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer between {minimum} and {maximum}"
    if minimum == 0:
        return "a non-negative integer"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"
