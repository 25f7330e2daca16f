"""Plugins of every kind (SMTP/LMTP handlers, mailets, matchers) are loaded the same way.

One module so that the three kinds cannot drift apart: how a name written in the XML
finds its entry point, how the object is made and configured (an exception from a
plugin's own code becomes a :class:`ConfigError` naming the file and line), which run
modes a callable may declare, how typed parameters are read, and which parameters a
plugin declares, so that a misspelt one is a warning with a suggestion instead of
being silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable, Mapping

from .config.errors import ConfigError, ConfigWarning
from .config.xml import parse_bool  # the one boolean rule for every configuration file

__all__ = [
    "HANDLER_GROUP", "MAILET_GROUP", "MATCHER_GROUP", "installed", "resolve",
    "instantiate", "configure", "SYNC", "TRIO", "ASYNCIO", "THREAD", "RUN_MODES", "run_mode",
    "check_run_modes", "parse_bool", "ParameterReader", "declared_parameters",
    "unknown_parameters", "parameter_warnings", "parameter_line", "MAILET_ATTRIBUTES",
]

HANDLER_GROUP = "chainmail.handlers"
MAILET_GROUP = "chainmail.mailets"
MATCHER_GROUP = "chainmail.matchers"


# ----------------------------------------------------------------------------- resolution


@lru_cache(maxsize=None)
def installed(group: str) -> dict[str, EntryPoint]:
    """Every entry point of ``group`` by name (scanned once per process: ~1.4 ms)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def resolve(name: str, group: str, what: str, file: str = "", line: int | None = None,
            eps: Mapping[str, EntryPoint] | None = None) -> tuple[Any, EntryPoint]:
    """Find and load ``name``: the exact entry-point name, else the unique entry point whose
    last dotted part equals ``name``'s (``com.example.Foo`` finds ``Foo``).

    ``what`` (``handler``, ``mailet``, ``matcher``) names the element in messages; unknown
    and ambiguous names list what is installed.
    """
    eps = installed(group) if eps is None else eps
    ep = eps.get(name)
    if ep is None:
        short = name.rsplit(".", 1)[-1]
        matches = {e.value: e for n, e in eps.items() if n.rsplit(".", 1)[-1] == short}
        if len(matches) > 1:
            raise ConfigError(file, line, what, f"{name!r} is ambiguous: it may mean any of "
                              + ", ".join(sorted(e.name for e in matches.values()))
                              + "; write the full name")
        ep = next(iter(matches.values()), None)
    if ep is None:
        known = ", ".join(sorted(n for n in eps if "." not in n)) or "(none installed)"
        raise ConfigError(file, line, what, f"no installed {what} provides {name!r}; expected "
                          f"one of the '{group}' entry points: {known}")
    try:
        return ep.load(), ep
    except Exception as exc:  # an installed plugin that fails to import
        raise ConfigError(file, line, what, f"{name!r} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------- making and configuring


def instantiate(obj: Any, what: str, name: str, file: str, line: int | None) -> Any:
    """``obj()`` for a class (an instance is used as it is); a failing constructor is a
    configuration error at the element's line, not a traceback."""
    if not isinstance(obj, type):
        return obj
    try:
        return obj()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(file, line, f"{what} {name}",
                          f"could not be created: {type(exc).__name__}: {exc}") from exc


def configure(instance: Any, method: str, config: Any, what: str, name: str, file: str,
              line: int | None) -> None:
    """Call ``instance.<method>(config)`` if it exists (``configure`` for handlers, ``init``
    for mailets and matchers).  A :class:`ConfigError` passes through; any other exception
    (``ValueError``, ``KeyError`` ...) becomes one naming the file, line and plugin."""
    fn = getattr(instance, method, None)
    if fn is None:
        return
    try:
        fn(config)
    except ConfigError:
        raise
    except Exception as exc:
        detail = str(exc) or "(no message)"
        raise ConfigError(file, line, f"{what} {name}",
                          f"{method}() failed: {type(exc).__name__}: {detail}") from exc


# ---------------------------------------------------------------------------------- run modes

SYNC, TRIO, ASYNCIO, THREAD = "sync", "trio", "asyncio", "thread"
#: What ``runs_on`` (on a class or on one method) may say.
RUN_MODES = (SYNC, TRIO, ASYNCIO, THREAD)


def run_mode(owner: Any, fn: Callable) -> str:
    """How ``fn`` is called: ``asyncio`` when declared so (on the method or its class),
    ``trio`` for an ``async def``, ``thread`` when declared so, else inline (``sync``)."""
    declared = getattr(fn, "runs_on", None) or getattr(owner, "runs_on", None)
    if declared == ASYNCIO:
        return ASYNCIO
    if inspect.iscoroutinefunction(fn):
        return TRIO
    if declared == THREAD:
        return THREAD
    return SYNC


def check_run_modes(owner: Any, methods: Iterable[str], what: str, name: str, file: str,
                    line: int | None, allowed: Iterable[str] = RUN_MODES) -> None:
    """A misspelt or unsupported ``runs_on`` is a configuration error, not a silent
    fall-back to running inline on the event loop."""
    allowed = tuple(allowed)
    for where, declared in [("class", getattr(owner, "runs_on", None))] + [
            (m, getattr(getattr(owner, m, None), "runs_on", None)) for m in methods]:
        if declared is None:
            continue
        if declared not in allowed:
            on = "" if where == "class" else f" on {where}()"
            raise ConfigError(file, line, f"{what} {name}",
                              f"runs_on={declared!r}{on} is not a run mode a {what} may use; "
                              f"expected one of {', '.join(allowed)}")


# ------------------------------------------------------------------------ typed parameters


class ParameterReader:
    """Typed getters over ``self.params`` shared by :class:`~chainmail.chain.HandlerConfig`
    and :class:`~chainmail.mailet.api.MailetConfig`.  An absent or empty parameter gives the
    default; a malformed one raises :class:`ConfigError` with the file and the line of the
    parameter's own element when ``params`` knows it (else the plugin element's line)."""

    params: Mapping[str, str]
    name: str
    file: str
    line: int | None
    kind = "plugin"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.file, parameter_line(self.params, key) or self.line,
                           f"{self.kind} {self.name}: {key}", message)

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.params.get(key)
        return default if value is None else value

    def require(self, key: str) -> str:
        """The parameter's value; a :class:`ConfigError` when it is absent or empty."""
        value = self.params.get(key)
        if value is None or not value.strip():
            raise self.error(key, f"is required; add <{key}>...</{key}> to the element")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.params.get(key)
        if value is None or not value.strip():
            return default
        try:
            return parse_bool(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def get_int(self, key: str, default: int, minimum: int | None = 0) -> int:
        value = self.params.get(key)
        if value is None or not value.strip():
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise self.error(key, f"{value!r} is not an integer") from None
        if minimum is not None and number < minimum:
            raise self.error(key, f"{number} is below the minimum {minimum}")
        return number

    def get_list(self, key: str, default: Iterable[str] = ()) -> list[str]:
        """A comma-separated list (blanks around items ignored, empty items dropped)."""
        value = self.params.get(key)
        if value is None:
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]


# --------------------------------------------------------------------- declared parameters

#: Attributes and child elements the container reads on every ``<mailet>`` (James allows
#: them on any mailet), so they are never "unknown".
MAILET_ATTRIBUTES = ("class", "match", "notmatch", "onMailetException", "onMatchException")


def parameter_line(params: Mapping[str, str], key: str) -> int | None:
    """The line of parameter ``key`` when ``params`` came from an element
    (:class:`~chainmail.config.xml.Parameters`); None for a plain mapping."""
    line_of = getattr(params, "line_of", None)
    return line_of(key) if callable(line_of) else None


def declared_parameters(obj: Any) -> tuple[str, ...] | None:
    """The class's ``parameters`` declaration, or None when it declares nothing (then no
    parameter is checked: plugins written before declarations existed keep working)."""
    declared = getattr(obj, "parameters", None)
    if declared is None:
        return None
    if isinstance(declared, str):
        return (declared,)
    return tuple(declared)


def _known(key: str, names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    if key in names or any(fnmatch.fnmatchcase(key, p) for p in patterns):
        return True
    # <a><b>x</b></a> gives "a" and "a.b": a declared "a" covers what is nested in it
    head = key
    while "." in head:
        head = head.rsplit(".", 1)[0]
        if head in names:
            return True
    return False


def unknown_parameters(declared: Iterable[str], params: Iterable[str],
                       always: Iterable[str] = ()) -> list[tuple[str, str | None]]:
    """``(parameter, closest declared name or None)`` for every parameter not declared.

    A declared name may be a glob (``mail.*``) for families of parameters."""
    declared = tuple(declared) + tuple(always)
    patterns = tuple(d for d in declared if any(c in d for c in "*?["))
    names = tuple(d for d in declared if d not in patterns)
    out = []
    for key in params:
        if _known(key, names, patterns):
            continue
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if not close:  # a case slip (<maxretries>) is too short a distance for difflib
            close = [n for n in names if n.lower() == key.lower()]
        out.append((key, close[0] if close else None))
    return out


def parameter_warnings(obj: Any, params: Mapping[str, str], what: str, name: str, file: str,
                       line: int | None, always: Iterable[str] = (),
                       line_of: Callable[[str], int | None] | None = None) -> list[ConfigWarning]:
    """Warnings for the parameters in ``params`` that ``obj`` does not declare (at the
    parameter's own line when ``line_of`` or ``params`` knows it, else at the element's)."""
    declared = declared_parameters(obj)
    if declared is None:
        return []
    out = []
    for key, suggestion in unknown_parameters(declared, params, always):
        hint = f"did you mean <{suggestion}>?" if suggestion else (
            "expected one of " + ", ".join(f"<{d}>" for d in declared) if declared
            else f"{name} takes no parameters")
        at = (line_of(key) if line_of else parameter_line(params, key)) or line
        out.append(ConfigWarning(file, at, f"{what} {name}: {key}",
                                 f"unknown parameter is ignored; {hint}"))
    return out
