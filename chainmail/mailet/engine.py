"""The mailet engine: processors of matcher/mailet pairs, routing between them (James's
``MailProcessorList`` / ``MailetProcessorImpl``).

A mail enters the processor named by its ``state`` (``root`` for received mail).  For each
pair in order, the matcher returns the recipients it matches:

- none: the pair is skipped;
- all of them: the mailet services the mail;
- some: the mail is **split**: a duplicate holding the matched recipients goes through the
  mailet, the original keeps the others and goes on with the next pair.

After a mailet, a mail without recipients or in state ``ghost`` is finished; a mail whose
state changed goes to that processor (in memory, from its first pair); otherwise it goes on
with the next pair.  A mail that falls off the end of a processor is finished (``ghost``),
with a warning unless the processor is ``error``.

Errors: a matcher that raises follows its ``onMatchException`` (``error`` by default,
``matchall``, ``nomatch``, or a processor name); a mailet that raises follows its
``onMailetException`` (``error`` by default, ``ignore``, ``propagate`` or a processor name).
``propagate`` lets the exception out of :meth:`MailetEngine.service`: the spooler then
retries the whole mail later.

Processing is bounded: a mail (and its copies) may change processor at most ``max_hops``
times; past that it goes to ``error`` with the reason, and past ``max_hops + 20`` (the error
processor loops too) it is stored in the error repository directly.

Mail sent by mailets (``context.send_mail``, bounces) during :meth:`MailetEngine.service`
is collected in :attr:`ProcessingResult.outputs`; the spooler commits it to the spool
before it removes the mail it came from.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from typing import Any, Callable, Mapping

from .. import metrics, plugin_loader
from ..config.errors import ConfigError, ConfigWarning
from ..plugin_loader import SYNC, THREAD, TRIO
from .api import ERROR, GHOST, Mail, MailetConfig, MailetContext, MatcherConfig
from .config import CompositeMatcherConfig, MailetContainerConfig, MatcherRef
from .outbox import current_outputs

__all__ = ["MAILET_GROUP", "MATCHER_GROUP", "MAX_HOPS", "MailetEngine", "Processor", "Pair",
           "ProcessingResult", "PropagatedError", "build_engine", "installed_mailets",
           "installed_matchers", "resolve_mailet", "resolve_matcher", "current_outputs"]

log = logging.getLogger("chainmail.mailet")

MAILET_GROUP = plugin_loader.MAILET_GROUP
MATCHER_GROUP = plugin_loader.MATCHER_GROUP
MAX_HOPS = 100
_LOOP_HARD_LIMIT = 20

class PropagatedError(Exception):
    """A mailet with ``onMailetException=propagate`` (or ``onMatchException=propagate``) failed."""


# -------------------------------------------------------------------------- entry points


def _installed(group: str) -> dict[str, EntryPoint]:
    return plugin_loader.installed(group)


def installed_mailets() -> dict[str, EntryPoint]:
    return _installed(MAILET_GROUP)


def installed_matchers() -> dict[str, EntryPoint]:
    return _installed(MATCHER_GROUP)


def resolve_mailet(name: str, file: str = "", line: int | None = None) -> tuple[Any, EntryPoint]:
    """See :func:`chainmail.plugin_loader.resolve`."""
    return plugin_loader.resolve(name, MAILET_GROUP, "mailet", file, line, _installed(MAILET_GROUP))


def resolve_matcher(name: str, file: str = "", line: int | None = None) -> tuple[Any, EntryPoint]:
    return plugin_loader.resolve(name, MATCHER_GROUP, "matcher", file, line,
                                 _installed(MATCHER_GROUP))


# ------------------------------------------------------------------------------- calling

#: Mailets and matchers run inline, on trio (``async def``) or in a worker thread; asyncio
#: is for SMTP handlers only (the container has no asyncio loop).
RUN_MODES = (SYNC, TRIO, THREAD)
ASYNC = TRIO


def _kind(owner: Any, fn: Callable) -> str:
    return plugin_loader.run_mode(owner, fn)


async def _call(kind: str, fn: Callable, arg: Any, context: Any) -> Any:
    if kind == SYNC:
        return fn(arg)
    if kind == ASYNC:
        return await fn(arg)
    return await context.run_blocking(fn, arg)


# ------------------------------------------------------------------------ composite matchers

COMPOSITE_OPERATORS = ("And", "Or", "Not", "Xor")


class CompositeMatcher:
    """James's ``org.apache.james.mailetcontainer.impl.matchers.{And,Or,Not,Xor}``:

    ``Or`` the union of what the children match, ``And`` the intersection, ``Not`` the
    recipients no child matches, ``Xor`` those matched by an odd number of children."""

    def __init__(self, name: str, operator: str, children: list[tuple[Any, str]], context: Any):
        self.name = name
        self.operator = operator
        self.children = children
        self.context = context

    async def match(self, mail: Mail) -> list[str]:
        results: list[set[str]] = []
        for matcher, kind in self.children:
            results.append(_as_set(mail, await _call(kind, matcher.match, mail, self.context)))
        op = self.operator
        chosen: set[str]
        if op == "Or":
            chosen = set().union(*results)
        elif op == "And":
            chosen = set.intersection(*results) if results else set()
        elif op == "Not":
            chosen = set(mail.recipients) - set().union(*results)
        else:  # Xor
            chosen = set()
            for s in results:
                chosen = (chosen | s) - (chosen & s)
        return [r for r in mail.recipients if r in chosen]


def _as_set(mail: Mail, result: Any) -> set[str]:
    """A matcher's answer as a subset of ``mail.recipients`` (case-insensitive comparison)."""
    if not result:
        return set()
    if isinstance(result, str):
        result = (result,)
    wanted = {str(r).lower() for r in result}
    return {r for r in mail.recipients if r.lower() in wanted}


# --------------------------------------------------------------------------------- engine


@dataclass
class Pair:
    """One ``<mailet>`` element: a matcher, a mailet and what to do when they fail."""

    matcher: Any
    mailet: Any
    name: str                      # the mailet class as written
    match: str = "All"             # the matcher as written
    invert: bool = False
    on_mailet_exception: str = ERROR
    on_match_exception: str = ERROR
    line: int | None = None
    match_kind: str = SYNC
    service_kind: str = SYNC

    def __post_init__(self) -> None:
        self.match_kind = _kind(self.matcher, self.matcher.match)
        self.service_kind = _kind(self.mailet, self.mailet.service)


@dataclass
class Processor:
    state: str
    pairs: list[Pair]


@dataclass
class ProcessingResult:
    """What became of one mail: ``outputs`` to commit to the spool (each in its ``state``),
    ``finished`` copies (ghost), and the error-repository keys of mail stored there."""

    outputs: list[Mail] = field(default_factory=list)
    finished: list[Mail] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)


class MailetEngine:
    """The processors of one container, and :meth:`service` to run a mail through them."""

    def __init__(self, processors: Mapping[str, Processor], context: MailetContext | None, *,
                 max_hops: int = MAX_HOPS, error_repository: str | None = None) -> None:
        self.processors = dict(processors)
        self.context = context
        self.max_hops = max_hops
        self.error_repository = error_repository

    @property
    def states(self) -> tuple[str, ...]:
        """The processor states, in the order of the configuration."""
        return tuple(self.processors)

    async def service(self, mail: Mail) -> ProcessingResult:
        """Run ``mail`` (and the copies split from it) until every copy is finished."""
        result = ProcessingResult()
        token = current_outputs.set(result.outputs)
        try:
            queue: deque[tuple[Mail, int]] = deque([(mail, 0)])
            while queue:
                m, start = queue.popleft()
                if m.state not in self.processors:
                    await self._reroute(m, queue, result, hop=False)
                    continue
                await self._run(m, start, queue, result)
        finally:
            current_outputs.reset(token)
        return result

    async def _finish(self, mail: Mail, result: ProcessingResult) -> None:
        mail.state = GHOST
        result.finished.append(mail)

    async def _reroute(self, mail: Mail, queue: deque, result: ProcessingResult, *,
                       hop: bool = True) -> bool:
        """Send ``mail`` to the processor named by its state; False if it was finished instead."""
        if hop:
            mail.hops += 1
        if mail.hops > self.max_hops + _LOOP_HARD_LIMIT:
            await self._store_error(mail, result, f"processing loop: more than "
                                    f"{self.max_hops + _LOOP_HARD_LIMIT} processor changes "
                                    f"(last processors: {' -> '.join(mail.trace[-6:])})")
            return False
        if mail.hops > self.max_hops and mail.state != ERROR:
            mail.error_message = (f"processing loop: more than {self.max_hops} processor changes "
                                  f"(last processors: {' -> '.join(mail.trace[-6:])})")
            log.warning("%s: %s; sent to the error processor", mail.name, mail.error_message)
            mail.state = ERROR
        if mail.state not in self.processors:
            reason = f"no processor named {mail.state!r}"
            if mail.state == ERROR or ERROR not in self.processors:
                await self._store_error(mail, result, reason)
                return False
            log.warning("%s: %s; sent to the error processor", mail.name, reason)
            mail.error_message = reason
            mail.state = ERROR
        queue.append((mail, 0))
        return True

    async def _store_error(self, mail: Mail, result: ProcessingResult, reason: str) -> None:
        mail.error_message = reason
        mail.state = ERROR
        if self.error_repository is None or self.context is None:
            raise PropagatedError(f"{mail.name}: {reason}; no error repository to store it in")
        repo = self.context.repository(self.error_repository)
        key = await self.context.run_blocking(repo.store, mail)
        log.error("%s: %s; stored in %s as %s", mail.name, reason, repo.url, key)
        result.stored.append(key)
        await self._finish(mail, result)

    async def _run(self, mail: Mail, start: int, queue: deque, result: ProcessingResult) -> None:
        state = mail.state
        pairs = self.processors[state].pairs
        if start == 0:
            mail.trace.append(state)
        i = start
        while i < len(pairs):
            if not mail.recipients:
                await self._finish(mail, result)
                return
            pair = pairs[i]
            i += 1
            try:
                matched = _as_set(mail, await _call(pair.match_kind, pair.matcher.match, mail,
                                                    self.context))
            except Exception as exc:
                action = pair.on_match_exception
                log.warning("%s: matcher %s of %s in processor %s failed (%s: %s); "
                            "onMatchException=%s", mail.name, pair.match, pair.name, state,
                            type(exc).__name__, exc, action)
                if action == "matchall":
                    matched = set(mail.recipients)
                elif action == "nomatch":
                    matched = set()
                elif action == "propagate":
                    raise PropagatedError(f"matcher {pair.match} in processor {state}: "
                                          f"{type(exc).__name__}: {exc}") from exc
                else:
                    mail.error_message = (f"matcher {pair.match} in processor {state} failed: "
                                          f"{type(exc).__name__}: {exc}")
                    if action == state:
                        continue
                    mail.state = action
                    await self._reroute(mail, queue, result)
                    return
            if pair.invert:
                matched = set(mail.recipients) - matched
            if not matched:
                continue
            target = mail
            if len(matched) < len(mail.recipients):
                target = mail.duplicate([r for r in mail.recipients if r in matched])
                mail.recipients = [r for r in mail.recipients if r not in matched]
                queue.append((mail, i))  # the rest goes on with the next pair
                mail = target
            started = time.perf_counter()
            try:
                await _call(pair.service_kind, pair.mailet.service, mail, self.context)
            except Exception as exc:
                action = pair.on_mailet_exception
                if action == "ignore":
                    log.info("%s: mailet %s in processor %s failed (ignored): %s: %s",
                             mail.name, pair.name, state, type(exc).__name__, exc)
                    mail.state = state
                elif action == "propagate":
                    log.warning("%s: mailet %s in processor %s failed: %s: %s",
                                mail.name, pair.name, state, type(exc).__name__, exc)
                    raise PropagatedError(f"mailet {pair.name} in processor {state}: "
                                          f"{type(exc).__name__}: {exc}") from exc
                else:
                    log.warning("%s: mailet %s in processor %s failed (%s: %s); sent to %s",
                                mail.name, pair.name, state, type(exc).__name__, exc, action,
                                exc_info=not isinstance(exc, (OSError, ValueError, LookupError)))
                    mail.error_message = (f"mailet {pair.name} in processor {state} failed: "
                                          f"{type(exc).__name__}: {exc}")
                    mail.state = action
            finally:
                metrics.mailet_time(state, pair.name, time.perf_counter() - started)
            if mail.state == GHOST or not mail.recipients:
                await self._finish(mail, result)
                return
            if mail.state != state:
                await self._reroute(mail, queue, result)
                return
        if state != ERROR:
            log.warning("%s: reached the end of processor %s without being handled; finished "
                        "(ghost)", mail.name, state)
        await self._finish(mail, result)

    def services(self) -> list[Any]:
        """The matchers and mailets that run in the background while the server runs: those
        with an ``async run(task_status)`` method (RemoteDelivery's delivery loop).  Each
        object appears once, however many pairs use it."""
        seen: dict[int, Any] = {}
        for processor in self.processors.values():
            for pair in processor.pairs:
                for obj in (pair.matcher, pair.mailet):
                    if inspect.iscoroutinefunction(getattr(obj, "run", None)):
                        seen.setdefault(id(obj), obj)
        return list(seen.values())

    def destroy(self) -> None:
        for proc in self.processors.values():
            for pair in proc.pairs:
                for obj in (pair.mailet, pair.matcher):
                    destroy = getattr(obj, "destroy", None)
                    if callable(destroy):
                        try:
                            destroy()
                        except Exception:  # pragma: no cover - best effort at shutdown
                            log.exception("destroying %s", obj)


# ---------------------------------------------------------------------------------- build


def _make(obj: Any, what: str, name: str, method: str, config: Any, file: str,
          line: int | None) -> Any:
    instance = plugin_loader.instantiate(obj, what, name, file, line)
    if not callable(getattr(instance, method, None)):
        raise ConfigError(file, line, what, f"{name!r} has no {method}(mail) method")
    plugin_loader.check_run_modes(instance, (method,), what, name, file, line, RUN_MODES)
    plugin_loader.configure(instance, "init", config, what, name, file, line)
    return instance


def _condition_warning(obj: Any, ref: MatcherRef, file: str) -> list[ConfigWarning]:
    """A matcher that declares ``takes_condition = False`` ignores ``Name=condition``."""
    if ref.condition is not None and getattr(obj, "takes_condition", None) is False:
        return [ConfigWarning(file, ref.line, f"matcher {ref.name}",
                              f"takes no condition; {ref.condition!r} is ignored "
                              f"(write match=\"{ref.name}\")")]
    return []


def _operator(text: str, file: str, line: int | None) -> str:
    short = text.rsplit(".", 1)[-1]
    if short not in COMPOSITE_OPERATORS:
        raise ConfigError(file, line, "matcher", f"{text!r} is not a composite matcher; expected "
                          "one of " + ", ".join(COMPOSITE_OPERATORS)
                          + " (org.apache.james.mailetcontainer.impl.matchers.Or ...)")
    return short


def build_engine(config: MailetContainerConfig, context: MailetContext | None, *,
                 max_hops: int = MAX_HOPS, errors: list[ConfigError] | None = None,
                 warnings: list[ConfigWarning] | None = None) -> MailetEngine:
    """Resolve every matcher and mailet of ``config`` through entry points, create and
    initialise them, and return the engine; its ``states`` are the processor states.
    Errors name the file and line.

    The context is not changed: a caller whose mailets should check the processors they
    name in ``init`` gives the context ``config.states`` first
    (``ContainerContext(states=config.states)``).

    Without ``errors`` the first error is raised; with a list, every matcher's and
    mailet's error is appended to it and the pair is left out, so that ``check-config``
    reports them all in one pass.  Undeclared parameters are warnings: appended to
    ``warnings``, else logged."""
    file = config.file
    processors: dict[str, Processor] = {}
    states = set(config.states)
    found: list[ConfigWarning] = []

    def attempt(make: Callable[[], Any]) -> Any:
        if errors is None:
            return make()
        try:
            return make()
        except ConfigError as exc:
            errors.append(exc)
            return None

    for pconf in config.processors:
        composites: dict[str, CompositeMatcher] = {}

        def make_matcher(ref: MatcherRef, processor: str = pconf.state) -> Any:
            if ref.name in composites:
                if ref.condition is not None:
                    raise ConfigError(file, ref.line, "matcher", f"composite matcher {ref.name!r} "
                                                                 "takes no condition")
                return composites[ref.name]
            cls, _ = resolve_matcher(ref.name, file, ref.line)
            found.extend(_condition_warning(cls, ref, file))
            return _make(cls, "matcher", ref.name, "match",
                         MatcherConfig(ref.name, ref.condition, context, processor, file, ref.line),
                         file, ref.line)

        def make_composite(comp: CompositeMatcherConfig) -> CompositeMatcher:
            op = _operator(comp.operator, file, comp.line)
            children = []
            for child in comp.children:
                obj = attempt(lambda: make_composite(child) if isinstance(child, CompositeMatcherConfig)
                              else make_matcher(child))
                if obj is not None:
                    children.append((obj, _kind(obj, obj.match)))
            if op == "Not" and len(children) < 1:
                raise ConfigError(file, comp.line, "matcher", "Not needs a child matcher")
            return CompositeMatcher(comp.name, op, children, context)

        for comp in pconf.composites:
            made = attempt(lambda: make_composite(comp))
            if made is not None:
                composites[comp.name] = made

        def make_pair(entry: Any, processor: str = pconf.state) -> Pair:
            for attr, value, allowed in (
                    ("onMailetException", entry.on_mailet_exception, ("ignore", "propagate", ERROR)),
                    ("onMatchException", entry.on_match_exception,
                     ("matchall", "nomatch", "propagate", ERROR))):
                if value not in allowed and value not in states:
                    raise ConfigError(file, entry.line, f"mailet {entry.class_name}: {attr}",
                                      f"{value!r} is neither one of {', '.join(allowed)} nor a "
                                      f"processor ({', '.join(config.states)})")
            matcher = attempt(lambda: make_matcher(entry.matcher))
            cls, _ = resolve_mailet(entry.class_name, file, entry.line)
            found.extend(plugin_loader.parameter_warnings(
                cls, entry.params, "mailet", entry.class_name, file, entry.line,
                always=plugin_loader.MAILET_ATTRIBUTES))
            mailet = _make(cls, "mailet", entry.class_name, "service",
                           MailetConfig(entry.class_name, entry.params, context, processor, file,
                                        entry.line), file, entry.line)
            if matcher is None:   # its error is already recorded
                raise _Reported()
            return Pair(matcher, mailet, entry.class_name, entry.matcher.text, entry.invert,
                        entry.on_mailet_exception, entry.on_match_exception, entry.line)

        pairs: list[Pair] = []
        for entry in pconf.mailets:
            try:
                pair = attempt(lambda: make_pair(entry))
            except _Reported:
                continue
            if pair is not None:
                pairs.append(pair)
        processors[pconf.state] = Processor(pconf.state, pairs)
    if warnings is None:
        for warning in found:
            log.warning("%s", warning)
    else:
        warnings.extend(found)
    return MailetEngine(processors, context, max_hops=max_hops,
                        error_repository=config.error_repository)


class _Reported(Exception):
    """A pair left out because its matcher's error is already in the list."""
