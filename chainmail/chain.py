"""The handler chain: XML names -> entry points -> ordered, validated, callable lists.

pluggy is used for what it is good at: validating each handler's hook methods against
:mod:`chainmail.hookspecs` and listing them.  The per-command path does not go through
pluggy's ``hook(...)`` call (synchronous, last-registered-first, ~5 us for ten plugins):
each hook is compiled once into a plain list of prepared callers in chain order, and the
runner awaits async ones itself (``docs/architecture.md`` gives the measurements).
"""

from __future__ import annotations

import inspect
import math
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import EntryPoint
from typing import Any, Callable, Iterable, Mapping

import pluggy
import trio

from . import plugin_loader
from .config.errors import ConfigError, ConfigWarning
from .hookspecs import COLLECTING_HOOKS, HandlerSpec
from .protocol.replies import Reply
from .plugin_loader import ASYNCIO, SYNC, THREAD, TRIO, ParameterReader
from .verdict import HookResult

__all__ = ["ENTRY_POINT_GROUP", "HandlersPackage", "HandlerConfig", "Chain", "ChainEntry",
           "build_chain", "installed_handlers", "resolve_handler"]

log = logging.getLogger("chainmail.chain")

ENTRY_POINT_GROUP = plugin_loader.HANDLER_GROUP
HOOK_NAMES = tuple(n for n in dir(HandlerSpec)
                   if n.startswith("on_") or n in COLLECTING_HOOKS or n == "deliver_to_recipient")


class HandlersPackage:
    """A named set of handler classes, like James's ``CoreCmdHandlerLoader``.

    Named in ``coreHandlersPackage`` it expands to its handlers.  Named in a ``<handler>``
    element it is inert, exactly as in James, whose sample configurations do that.
    """

    handlers: tuple[type, ...] = ()


@dataclass(frozen=True)
class HandlerConfig(ParameterReader):
    """What a handler gets in ``configure()``: its own ``<handler>`` element, nothing global.

    ``get``, ``require``, ``get_bool``, ``get_int`` and ``get_list`` read its parameters;
    a bad value raises :class:`ConfigError` naming the file and line of the element.
    """

    name: str
    params: Mapping[str, str]
    element: Any = field(default=None, repr=False)
    server: Any = field(default=None, repr=False)
    file: str = ""
    line: int | None = None

    kind = "handler"


# -- discovery -------------------------------------------------------------------------------
def installed_handlers() -> dict[str, EntryPoint]:
    """Every ``chainmail.handlers`` entry point by name (scanned once: ~1.4 ms)."""
    return plugin_loader.installed(ENTRY_POINT_GROUP)


def resolve_handler(name: str, file: str = "", line: int | None = None) -> tuple[Any, EntryPoint]:
    """Find ``name`` (see :func:`chainmail.plugin_loader.resolve`)."""
    return plugin_loader.resolve(name, ENTRY_POINT_GROUP, "handler", file, line)


# -- calling -------------------------------------------------------------------------------

@dataclass(slots=True)
class _Impl:
    """One prepared hook implementation."""

    fn: Callable
    indexes: tuple[int, ...] | None    # argument pruning; None = pass all
    kind: str
    handler: str
    hook: str
    owner: Any = None

    def args(self, args: tuple) -> tuple:
        return args if self.indexes is None else tuple(args[i] for i in self.indexes)


@dataclass
class ChainEntry:
    name: str           # as resolved (entry point name for package members)
    handler: Any        # the instance
    target: str         # module:object
    package: str | None = None


def _spec_args(hook: str) -> tuple[str, ...]:
    params = list(inspect.signature(getattr(HandlerSpec, hook)).parameters)
    return tuple(params[1:])  # drop self


class _Manager(pluggy.PluginManager):
    """Takes any method named like a hook as its implementation (explicit @hookimpl too)."""

    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOK_NAMES and callable(getattr(plugin, name, None)):
            opts = {}
        return opts


class Chain:
    """One server block's handlers, compiled for calling."""

    def __init__(self, entries: list[ChainEntry], *, timeout: float = 30.0,
                 limiter: trio.CapacityLimiter | None = None):
        self.entries = entries
        self.timeout = timeout if timeout and timeout > 0 else math.inf  # 0 = no budget
        self.limiter = limiter
        self.pm = _Manager("chainmail")
        self.pm.add_hookspecs(HandlerSpec)
        for entry in reversed(entries):
            self.pm.register(entry.handler, name=f"{entry.name}#{id(entry.handler):x}")
        self.pm.check_pending()
        self.hooks: dict[str, list[_Impl]] = {name: [] for name in HOOK_NAMES}
        self.commands: dict[str, list[_Impl]] = {}
        self.fallback: list[_Impl] = []
        self.mail_parameters: dict[str, list[_Impl]] = {}
        self.rcpt_parameters: set[str] = set()
        order = {id(e.handler): i for i, e in enumerate(entries)}
        for hook in HOOK_NAMES:
            spec_args = _spec_args(hook)
            impls = sorted(getattr(self.pm.hook, hook).get_hookimpls(),
                           key=lambda i: order[id(i.plugin)])
            for hi in impls:
                handler = hi.plugin
                argnames = tuple(hi.argnames)
                indexes = None if argnames == spec_args else tuple(spec_args.index(a) for a in argnames)
                impl = _Impl(hi.function, indexes, plugin_loader.run_mode(handler, hi.function),
                             type(handler).__name__, hook, handler)
                self.hooks[hook].append(impl)
                if hook == "on_command":
                    for verb in getattr(handler, "commands", ()):
                        if verb == "*":
                            self.fallback.append(impl)
                        else:
                            self.commands.setdefault(verb.upper(), []).append(impl)
                elif hook == "on_mail_parameter":
                    for pname in getattr(handler, "mail_parameters", ()):
                        self.mail_parameters.setdefault(pname.upper(), []).append(impl)
            for handler in (e.handler for e in entries):
                self.rcpt_parameters.update(p.upper() for p in getattr(handler, "rcpt_parameters", ()))
        self._result_hooks = self.hooks["on_hook_result"]
        self.needs_asyncio = any(i.kind == ASYNCIO for impls in self.hooks.values() for i in impls)

    # -- running --------------------------------------------------------------------------
    async def call(self, impl: _Impl, args: tuple):
        kind = impl.kind
        a = args if impl.indexes is None else impl.args(args)
        if kind is SYNC:
            return impl.fn(*a)
        if kind is TRIO:
            if impl.hook == "on_command" or self.timeout == math.inf:
                # Command handlers dispatch to hooks, each under its own budget.
                return await impl.fn(*a)
            # A bare cancel scope rather than trio.fail_after: the same budget without a
            # generator-based context manager on every call.
            with trio.CancelScope(deadline=trio.current_time() + self.timeout):
                return await impl.fn(*a)
            raise trio.TooSlowError
        if kind is THREAD:
            return await trio.to_thread.run_sync(partial(impl.fn, *a), limiter=self.limiter)
        import trio_asyncio
        with trio.CancelScope(deadline=trio.current_time() + self.timeout):
            return await trio_asyncio.aio_as_trio(impl.fn)(*a)
        raise trio.TooSlowError

    async def verdict(self, hook: str, *args, impls: list[_Impl] | None = None) -> HookResult | None:
        """Ask handlers in chain order; return the first decided verdict (after
        ``on_hook_result`` post-processing) or None if all declined."""
        timed = bool(self._result_hooks)
        for impl in self.hooks[hook] if impls is None else impls:
            start = time.perf_counter() if timed else 0.0
            result = impl.fn(*impl.args(args)) if impl.kind is SYNC else await self.call(impl, args)
            if result is None or not result.decided:
                continue
            if timed:
                result = await self._post_process(args[0], hook, result, time.perf_counter() - start)
            return result
        return None

    async def _post_process(self, session, hook: str, result: HookResult, elapsed: float):
        for impl in self._result_hooks:
            replaced = await self.call(impl, (session, hook, result, elapsed))
            if replaced is not None:
                result = replaced
        return result

    async def collect(self, hook: str, *args) -> list:
        out = []
        for impl in self.hooks[hook]:
            value = await self.call(impl, args)
            if value is not None:
                out.append(value)
        return out

    async def dispatch(self, session, command) -> Reply | None:
        """Run the command handlers of ``command.verb`` in chain order until one answers;
        commands nobody implements go to the ``"*"`` handlers."""
        impls = self.commands.get(command.verb)
        if impls is None:
            impls = self.fallback
        args = (session, command)
        for impl in impls:
            reply = impl.fn(session, command) if impl.kind is SYNC else await self.call(impl, args)
            if reply is not None:
                return reply
        return None

    def implements(self, verb: str) -> bool:
        return verb.upper() in self.commands

    def describe(self) -> list[str]:
        """The chain in call order, one ``name -> module:object`` per handler."""
        lines = []
        for e in self.entries:
            via = f"  (from {e.package})" if e.package else ""
            lines.append(f"{e.name} -> {e.target}{via}")
        return lines


# -- building --------------------------------------------------------------------------------
def _make_handler(obj: Any, name: str, config: HandlerConfig) -> Any:
    file, line = config.file, config.line
    handler = plugin_loader.instantiate(obj, "handler", name, file, line)
    plugin_loader.check_run_modes(handler, HOOK_NAMES, "handler", name, file, line)
    plugin_loader.configure(handler, "configure", config, "handler", name, file, line)
    return handler


def _target(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def _child_line(element: Any) -> Callable[[str], int | None]:
    """The line of the child element a dotted parameter name came from."""
    def line_of(key: str) -> int | None:
        node = element
        for part in key.split("."):
            node = next((c for c in node if c.tag == part), None) if node is not None else None
        return getattr(node, "sourceline", None)
    return line_of


def build_chain(chain_config, server: Any = None, *, timeout: float = 30.0,
                limiter: trio.CapacityLimiter | None = None,
                errors: list[ConfigError] | None = None,
                warnings: list[ConfigWarning] | None = None) -> Chain:
    """``<handler>`` entries in XML order, then the ``coreHandlersPackage`` handlers.

    Without ``errors`` the first configuration error is raised.  With a list, every
    handler's error is appended to it and the chain is built from the others, so that
    ``check-config`` reports them all in one pass.  Parameters a handler does not declare
    are warnings: appended to ``warnings``, else logged.
    """
    entries: list[ChainEntry] = []
    found: list[ConfigWarning] = []

    def attempt(make: Callable[[], None]) -> None:
        if errors is None:
            make()
            return
        try:
            make()
        except ConfigError as exc:
            errors.append(exc)

    def add_handler(spec) -> None:
        obj, ep = resolve_handler(spec.name, spec.file, spec.line)
        if isinstance(obj, type) and issubclass(obj, HandlersPackage):
            return  # inert, as in James
        found.extend(plugin_loader.parameter_warnings(
            obj, spec.params, "handler", spec.name, spec.file, spec.line,
            line_of=_child_line(spec.element) if spec.element is not None else None))
        cfg = HandlerConfig(spec.name, spec.params, spec.element, server, spec.file, spec.line)
        entries.append(ChainEntry(spec.name, _make_handler(obj, spec.name, cfg), _target(obj)))

    def add_package(package_name: str) -> None:
        pkg, _ = resolve_handler(package_name, chain_config.file, chain_config.line)
        if not (isinstance(pkg, type) and issubclass(pkg, HandlersPackage)):
            raise ConfigError(chain_config.file, chain_config.line, "handlerchain",
                              f"coreHandlersPackage {package_name!r} is not a handlers package")
        for cls in pkg.handlers:
            cfg = HandlerConfig(cls.__name__, {}, None, server, chain_config.file, chain_config.line)
            attempt(lambda: entries.append(ChainEntry(cls.__name__, _make_handler(cls, cls.__name__, cfg),
                                                      _target(cls), package=package_name)))

    for spec in chain_config.handlers:
        attempt(lambda: add_handler(spec))
    if chain_config.core_package:
        attempt(lambda: add_package(chain_config.core_package))
    if warnings is None:
        for warning in found:
            log.warning("%s", warning)
    else:
        warnings.extend(found)
    try:
        return Chain(entries, timeout=timeout, limiter=limiter)
    except pluggy.PluginValidationError as exc:
        error = ConfigError(chain_config.file, chain_config.line, "handlerchain",
                            f"handler {exc.plugin!r} does not match the hook contract: {exc}")
        if errors is None:
            raise error from exc
        errors.append(error)
        return Chain([], timeout=timeout, limiter=limiter)


def iter_hook_names() -> Iterable[str]:
    return HOOK_NAMES
