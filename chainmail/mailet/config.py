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
from typing import Mapping, Union

from lxml import etree

from ..config.errors import ConfigError, ConfigErrors, ConfigWarning
from ..config.xml import Reader, children_named, element_parameters, elements, first_child, parse_file

__all__ = ["FILE", "DEFAULT_THREADS", "DEFAULT_ERROR_REPOSITORY", "MatcherRef",
           "CompositeMatcherConfig", "MailetEntry", "ProcessorConfig", "MailetContainerConfig",
           "load_mailetcontainer", "parse_mailetcontainer", "collect_mailetcontainer", "split_match"]

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
    """One ``<mailet match|notmatch="..." class="...">``.  ``params`` is a
    :class:`~chainmail.config.xml.Parameters`: it knows the line of each parameter, so
    that warnings and errors about one name that parameter's own line."""

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


def load_mailetcontainer(path: str | os.PathLike[str],
                         errors: list[ConfigError] | None = None) -> MailetContainerConfig | None:
    """Read ``path``; ``None`` if the file does not exist (no mailet container configured).

    Every error of the file is raised at once (:class:`ConfigErrors` when there are
    several); with an ``errors`` list they are appended to it instead and what could be
    read is returned (None when nothing could), so that ``check-config`` goes on to the
    mailets and matchers."""
    file = os.fspath(path)
    if not os.path.exists(file):
        return None
    try:
        root = parse_file(file)
    except ConfigError as exc:
        if errors is None:
            raise
        errors.append(exc)
        return None
    config, found = collect_mailetcontainer(root, file)
    if found and errors is None:
        raise ConfigErrors.of(found)
    if errors is not None:
        errors.extend(found)
    return config


def parse_mailetcontainer(root: etree._Element, file: str) -> MailetContainerConfig:
    """Build the configuration from a parsed document; every error is raised at once."""
    config, errors = collect_mailetcontainer(root, file)
    if errors:
        raise ConfigErrors.of(errors)
    return config


def collect_mailetcontainer(root: etree._Element, file: str,
                            ) -> tuple[MailetContainerConfig, list[ConfigError]]:
    """Every error of the document in one pass: an element with an error is reported and
    left out, a bad value is read as its default, and the rest is still read."""
    reader = Reader(file, collect=True)
    if root.tag != "mailetcontainer":
        reader.fail(root, root.tag, "expected <mailetcontainer> as the document element")
        return MailetContainerConfig(file=file, line=root.sourceline), reader.errors
    reader.check_children(root, ("context", "spooler", "processors"),
                          extra={"mailetpackages": "ignored: mailets are found through entry points",
                                 "matcherpackages": "ignored: matchers are found through entry points"})
    postmaster = "postmaster"
    context = first_child(root, "context")
    if context is not None:
        reader.check_children(context, ("postmaster",))
        postmaster = reader.child_text(context, "postmaster", "postmaster") or "postmaster"
        if any(c in postmaster for c in " <>\t") or postmaster.count("@") > 1:
            reader.fail(first_child(context, "postmaster"), "postmaster",
                        f"{postmaster!r} is not an address; expected user or user@domain")
            postmaster = "postmaster"
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
        reader.fail(root, "processors", "missing; expected <processors> with at least "
                                        "a <processor state=\"root\">")
    else:
        reader.check_children(procs_el, ("processor",), repeatable=("processor",))
        seen: dict[str, int | None] = {}
        for p in children_named(procs_el, "processor"):
            state = (p.get("state") or "").strip()
            if not state:
                reader.fail(p, "processor", "needs a state attribute; expected "
                                            "<processor state=\"name\">")
                continue
            if state == "ghost":
                reader.fail(p, "processor", "'ghost' is not a processor: it is the state of "
                                            "finished mail; choose another name")
                continue
            if state in seen:
                reader.fail(p, "processor", f"state {state!r} is already defined at line "
                                            f"{seen[state]}; expected unique states")
                continue
            seen[state] = p.sourceline
            if p.get("class"):
                reader.warn(p, "processor[@class]", "ignored: every processor is a list of "
                                                    "matcher/mailet pairs")
            processors.append(_processor(reader, p, state))
        if "root" not in seen:
            reader.fail(procs_el, "processors", "no <processor state=\"root\">: received "
                                                "mail starts there")
    return MailetContainerConfig(file=file, postmaster=postmaster, threads=threads,
                                 error_repository=error_repository, processors=tuple(processors),
                                 line=root.sourceline, warnings=tuple(reader.warnings)), \
        sorted(reader.errors, key=lambda e: e.line or 0)


def _processor(reader: Reader, p: etree._Element, state: str) -> ProcessorConfig:
    mailets: list[MailetEntry] = []
    composites: list[CompositeMatcherConfig] = []
    names: set[str] = set()
    for child in elements(p):
        if child.tag == "matcher":
            comp = _composite(reader, child)
            if comp is None:
                continue
            if comp.name in names:
                reader.fail(child, "matcher", f"composite matcher {comp.name!r} is already "
                                              f"defined in processor {state!r}")
                continue
            names.add(comp.name)
            composites.append(comp)
        elif child.tag == "mailet":
            entry = _mailet(reader, child)
            if entry is not None:
                mailets.append(entry)
        else:
            reader.warn(child, child.tag, f"unknown element inside <processor state=\"{state}\"> "
                                          "is ignored; expected <mailet> or <matcher>")
    return ProcessorConfig(state=state, mailets=tuple(mailets), composites=tuple(composites),
                           line=p.sourceline)


def _composite(reader: Reader, el: etree._Element) -> CompositeMatcherConfig | None:
    """None (after reporting why) when the composite has an error."""
    before = len(reader.errors)
    name = (el.get("name") or "").strip()
    op = (el.get("match") or "").strip()
    if not name:
        reader.fail(el, "matcher", "a composite matcher needs a name attribute")
    if not op:
        reader.fail(el, "matcher", f"composite matcher {name!r} needs match=\"Or|And|Not|Xor\"")
    children: list[MatcherRef | CompositeMatcherConfig] = []
    for child in elements(el):
        if child.tag != "matcher":
            reader.warn(child, child.tag, f"ignored inside composite matcher {name!r}; "
                                          "expected <matcher match=\"...\"/>")
            continue
        if child.get("name") is not None and next(elements(child), None) is not None:
            inner = _composite(reader, child)
            if inner is not None:
                children.append(inner)
            continue
        text = (child.get("match") or "").strip()
        if not text:
            reader.fail(child, "matcher", f"a matcher inside {name!r} needs match=\"...\"")
            continue
        mname, cond = split_match(text)
        children.append(MatcherRef(mname, cond, child.sourceline))
    if not children and len(reader.errors) == before:
        reader.fail(el, "matcher", f"composite matcher {name!r} has no child <matcher>")
    if len(reader.errors) > before:
        return None
    return CompositeMatcherConfig(name=name, operator=op, children=tuple(children),
                                  line=el.sourceline)


def _mailet(reader: Reader, el: etree._Element) -> MailetEntry | None:
    """None (after reporting why) when the element has an error."""
    cls = (el.get("class") or "").strip()
    if not cls:
        reader.fail(el, "mailet", "needs a class attribute; expected "
                                  "<mailet match=\"...\" class=\"...\">")
        return None
    match, notmatch = el.get("match"), el.get("notmatch")
    if match is not None and notmatch is not None:
        reader.fail(el, "mailet", "has both match and notmatch; expected one of them")
        return None
    invert = notmatch is not None
    text = (notmatch if invert else match) or "All"
    if not text.strip():
        reader.fail(el, "mailet", "empty match attribute; expected a matcher name")
        return None
    mname, cond = split_match(text)
    params = element_parameters(el)
    on_mailet = (el.get("onMailetException") or params.get("onMailetException") or "error").strip()
    on_match = (el.get("onMatchException") or params.get("onMatchException") or "error").strip()
    params = params.without(*CONTAINER_PARAMS)
    return MailetEntry(class_name=cls, matcher=MatcherRef(mname, cond, el.sourceline),
                       invert=invert, params=params,
                       on_mailet_exception=on_mailet, on_match_exception=on_match,
                       line=el.sourceline)

