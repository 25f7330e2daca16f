"""``mailetcontainer.xml``: processors of matcher/mailet pairs (James's format).

::

    <mailetcontainer>
      <context><postmaster>postmaster</postmaster></context>
      <spooler><threads>20</threads><errorRepository>file://var/mail/error/</errorRepository></spooler>
      <processors>
        <processor state="root">
          <matcher name="relay-allowed" match="org.apache.james.mailetcontainer.impl.matchers.Or">
            <matcher match="SMTPAuthSuccessful"/>
            <matcher match="SMTPIsAuthNetwork"/>
          </matcher>
          <mailet match="RecipientIsLocal" class="ToProcessor"><processor>local-delivery</processor></mailet>
          <mailet notmatch="relay-allowed" class="ToProcessor"><processor>relay-denied</processor></mailet>
          ...

Everything is parsed into frozen dataclasses here; names are resolved to entry points
when the engine is built (:func:`chainmail.mailet.engine.build_engine`), so that errors
name the file and line of the element.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Union

from lxml import etree

from ..config.errors import ConfigWarning
from ..config.xml import Reader, children_named, elements, first_child, parse_file, text_of

__all__ = ["FILE", "DEFAULT_THREADS", "DEFAULT_ERROR_REPOSITORY", "MatcherRef",
           "CompositeMatcherConfig", "MailetEntry", "ProcessorConfig", "MailetContainerConfig",
           "load_mailetcontainer", "parse_mailetcontainer", "split_match"]

FILE = "mailetcontainer.xml"
#: James's code default is 100 spool threads; its samples use 20.  These are trio tasks.
DEFAULT_THREADS = 20
DEFAULT_ERROR_REPOSITORY = "file://var/mail/error/"
#: Per-mailet settings read by the container, not passed to the mailet.
CONTAINER_PARAMS = ("onMailetException", "onMatchException")


def split_match(text: str) -> tuple[str, str | None]:
    """``"HostIs=a.org,b.org"`` -> ``("HostIs", "a.org,b.org")``; ``"All"`` -> ``("All", None)``."""
    name, eq, condition = text.strip().partition("=")
    return name.strip(), (condition if eq else None)


@dataclass(frozen=True)
class MatcherRef:
    """A ``match="Name[=condition]"`` (of a mailet or inside a composite matcher)."""

    name: str
    condition: str | None
    line: int | None = None

    @property
    def text(self) -> str:
        return self.name if self.condition is None else f"{self.name}={self.condition}"


@dataclass(frozen=True)
class CompositeMatcherConfig:
    """``<matcher name="..." match="...Or|And|Not|Xor">`` with child matchers."""

    name: str
    operator: str                 # as written in match= (e.g. org.apache.james...Or)
    children: tuple[Union[MatcherRef, "CompositeMatcherConfig"], ...]
    line: int | None = None


@dataclass(frozen=True)
class MailetEntry:
    """One ``<mailet match|notmatch="..." class="...">``."""

    class_name: str
    matcher: MatcherRef
    invert: bool
    params: Mapping[str, str]
    on_mailet_exception: str = "error"
    on_match_exception: str = "error"
    line: int | None = None


@dataclass(frozen=True)
class ProcessorConfig:
    state: str
    mailets: tuple[MailetEntry, ...]
    composites: tuple[CompositeMatcherConfig, ...] = ()
    line: int | None = None


@dataclass(frozen=True)
class MailetContainerConfig:
    file: str
    postmaster: str = "postmaster"
    threads: int = DEFAULT_THREADS
    error_repository: str = DEFAULT_ERROR_REPOSITORY
    processors: tuple[ProcessorConfig, ...] = ()
    line: int | None = None
    warnings: tuple[ConfigWarning, ...] = ()

    def processor(self, state: str) -> ProcessorConfig | None:
        for p in self.processors:
            if p.state == state:
                return p
        return None

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(p.state for p in self.processors)


def load_mailetcontainer(path: str | os.PathLike[str]) -> MailetContainerConfig | None:
    """Read ``path``; ``None`` if the file does not exist (no mailet container configured)."""
    file = os.fspath(path)
    if not os.path.exists(file):
        return None
    return parse_mailetcontainer(parse_file(file), file)


def _params(el: etree._Element) -> dict[str, str]:
    params: dict[str, str] = {}

    def add(key: str, value: str) -> None:
        params[key] = f"{params[key]},{value}" if key in params else value

    def walk(node: etree._Element, prefix: str) -> None:
        for child in elements(node):
            key = f"{prefix}{child.tag}"
            has_children = next(elements(child), None) is not None
            if not has_children or text_of(child):
                add(key, text_of(child))
            walk(child, key + ".")

    walk(el, "")
    return params


def parse_mailetcontainer(root: etree._Element, file: str) -> MailetContainerConfig:
    reader = Reader(file)
    if root.tag != "mailetcontainer":
        raise reader.error(root, root.tag, "expected <mailetcontainer> as the document element")
    reader.check_children(root, ("context", "spooler", "processors"),
                          extra={"mailetpackages": "ignored: mailets are found through entry points",
                                 "matcherpackages": "ignored: matchers are found through entry points"})
    postmaster = "postmaster"
    context = first_child(root, "context")
    if context is not None:
        reader.check_children(context, ("postmaster",))
        postmaster = reader.child_text(context, "postmaster", "postmaster") or "postmaster"
        if any(c in postmaster for c in " <>\t") or postmaster.count("@") > 1:
            raise reader.error(first_child(context, "postmaster"), "postmaster",
                               f"{postmaster!r} is not an address; expected user or user@domain")
    threads = DEFAULT_THREADS
    error_repository = DEFAULT_ERROR_REPOSITORY
    spooler = first_child(root, "spooler")
    if spooler is not None:
        reader.check_children(spooler, ("threads", "errorRepository"))
        threads = reader.child_int(spooler, "threads", DEFAULT_THREADS, minimum=0, maximum=10_000)
        error_repository = reader.child_text(spooler, "errorRepository") or DEFAULT_ERROR_REPOSITORY
    processors: list[ProcessorConfig] = []
    procs_el = first_child(root, "processors")
    if procs_el is None:
        raise reader.error(root, "processors", "missing; expected <processors> with at least "
                                               "a <processor state=\"root\">")
    reader.check_children(procs_el, ("processor",), repeatable=("processor",))
    seen: dict[str, int | None] = {}
    for p in children_named(procs_el, "processor"):
        state = (p.get("state") or "").strip()
        if not state:
            raise reader.error(p, "processor", "needs a state attribute; expected "
                                               "<processor state=\"name\">")
        if state == "ghost":
            raise reader.error(p, "processor", "'ghost' is not a processor: it is the state of "
                                               "finished mail; choose another name")
        if state in seen:
            raise reader.error(p, "processor", f"state {state!r} is already defined at line "
                                               f"{seen[state]}; expected unique states")
        seen[state] = p.sourceline
        if p.get("class"):
            reader.warn(p, "processor[@class]", "ignored: every processor is a list of "
                                                "matcher/mailet pairs")
        processors.append(_processor(reader, p, state))
    if "root" not in seen:
        raise reader.error(procs_el, "processors", "no <processor state=\"root\">: received "
                                                   "mail starts there")
    return MailetContainerConfig(file=file, postmaster=postmaster, threads=threads,
                                 error_repository=error_repository, processors=tuple(processors),
                                 line=root.sourceline, warnings=tuple(reader.warnings))


def _processor(reader: Reader, p: etree._Element, state: str) -> ProcessorConfig:
    mailets: list[MailetEntry] = []
    composites: list[CompositeMatcherConfig] = []
    names: set[str] = set()
    for child in elements(p):
        if child.tag == "matcher":
            comp = _composite(reader, child)
            if comp.name in names:
                raise reader.error(child, "matcher", f"composite matcher {comp.name!r} is already "
                                                     f"defined in processor {state!r}")
            names.add(comp.name)
            composites.append(comp)
        elif child.tag == "mailet":
            mailets.append(_mailet(reader, child))
        else:
            reader.warn(child, child.tag, f"unknown element inside <processor state=\"{state}\"> "
                                          "is ignored; expected <mailet> or <matcher>")
    return ProcessorConfig(state=state, mailets=tuple(mailets), composites=tuple(composites),
                           line=p.sourceline)


def _composite(reader: Reader, el: etree._Element) -> CompositeMatcherConfig:
    name = (el.get("name") or "").strip()
    op = (el.get("match") or "").strip()
    if not name:
        raise reader.error(el, "matcher", "a composite matcher needs a name attribute")
    if not op:
        raise reader.error(el, "matcher", f"composite matcher {name!r} needs match=\"Or|And|Not|Xor\"")
    children: list[MatcherRef | CompositeMatcherConfig] = []
    for child in elements(el):
        if child.tag != "matcher":
            reader.warn(child, child.tag, f"ignored inside composite matcher {name!r}; "
                                          "expected <matcher match=\"...\"/>")
            continue
        if child.get("name") is not None and next(elements(child), None) is not None:
            children.append(_composite(reader, child))
            continue
        text = (child.get("match") or "").strip()
        if not text:
            raise reader.error(child, "matcher", f"a matcher inside {name!r} needs match=\"...\"")
        mname, cond = split_match(text)
        children.append(MatcherRef(mname, cond, child.sourceline))
    if not children:
        raise reader.error(el, "matcher", f"composite matcher {name!r} has no child <matcher>")
    return CompositeMatcherConfig(name=name, operator=op, children=tuple(children),
                                  line=el.sourceline)


def _mailet(reader: Reader, el: etree._Element) -> MailetEntry:
    cls = (el.get("class") or "").strip()
    if not cls:
        raise reader.error(el, "mailet", "needs a class attribute; expected "
                                         "<mailet match=\"...\" class=\"...\">")
    match, notmatch = el.get("match"), el.get("notmatch")
    if match is not None and notmatch is not None:
        raise reader.error(el, "mailet", "has both match and notmatch; expected one of them")
    invert = notmatch is not None
    text = (notmatch if invert else match) or "All"
    if not text.strip():
        raise reader.error(el, "mailet", "empty match attribute; expected a matcher name")
    mname, cond = split_match(text)
    params = _params(el)
    on_mailet = (el.get("onMailetException") or params.pop("onMailetException", None) or "error").strip()
    on_match = (el.get("onMatchException") or params.pop("onMatchException", None) or "error").strip()
    for key in CONTAINER_PARAMS:
        params.pop(key, None)
    return MailetEntry(class_name=cls, matcher=MatcherRef(mname, cond, el.sourceline),
                       invert=invert, params=MappingProxyType(params),
                       on_mailet_exception=on_mailet, on_match_exception=on_match,
                       line=el.sourceline)

