"""Running every enabled server block: listeners, signals, reload, graceful drain."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import AsyncExitStack

import trio

from .. import logsetup
from ..chain import build_chain
from .connection import sweep_idle_sessions
from .context import ProcessLoad, ServerContext
from .reload import Generation, ListenerSet, Reloader, plan_listeners

__all__ = ["run_servers", "open_listeners", "DEFAULT_GRACE_PERIOD"]

log = logging.getLogger("chainmail.server")

DEFAULT_GRACE_PERIOD = 30.0


async def open_listeners(ctx: ServerContext) -> list[trio.SocketListener]:
    """Bind every ``<bind>`` address of the block; port 0 picks a free port (logged)."""
    cfg = ctx.config
    listeners: list[trio.SocketListener] = []
    for bind in cfg.bind:
        host: str | None = bind.host
        if host in ("", "*"):
            host = None
        try:
            opened = await trio.open_tcp_listeners(bind.port, host=host,
                                                   backlog=cfg.connection_backlog)
        except OSError as exc:
            for listener in listeners:
                await listener.aclose()
            raise OSError(exc.errno, f"{cfg.file}:{cfg.line}: {cfg.kind}server {cfg.name!r}: "
                                     f"cannot bind {bind.host}:{bind.port}: {exc.strerror}") from exc
        for listener in opened:
            addr = listener.socket.getsockname()
            ctx.bound.append((addr[0], addr[1]))
            log.info("%sserver %r listening on %s", cfg.kind, cfg.name,
                     f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}")
        listeners.extend(opened)
    return listeners


def make_context(server_config, *, domains, spool, users=None, rrt=None) -> ServerContext:
    ctx = ServerContext(server_config, domains=domains, spool=spool, users=users, rrt=rrt)
    if server_config.tls.enabled:
        from .tls import TLSManager
        ctx.tls = TLSManager(server_config.tls)
    ctx.chain = build_chain(server_config.handlerchain, ctx, timeout=server_config.handler_timeout,
                            limiter=ctx.limiter)
    return ctx


async def run_servers(contexts: list[ServerContext], *, grace_period: float = DEFAULT_GRACE_PERIOD,
                      task_status=trio.TASK_STATUS_IGNORED, stop_event: trio.Event | None = None,
                      spool=None, spooler=None, services=(), bound=None, worker: int | None = None,
                      on_ready=None, reloader: Reloader | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop_event``): then stop accepting, end idle sessions
    with 421, let transactions in flight finish within ``grace_period``, and return.

    ``services`` are background tasks that live as long as the process (objects with
    ``async run(task_status)``); the mailet container's own (RemoteDelivery's delivery
    loop) are the current generation's ``services``.  Both are started after the listeners
    are bound and before they accept, and cancelled after the sessions and the spooler have
    finished.

    ``reloader`` (:class:`.reload.Reloader`) holds the configuration in force and builds
    the next one on SIGHUP; without it SIGHUP re-reads the keystores only.

    In a worker process (``worker``: its index), ``bound`` lists the addresses the
    supervisor bound (``workers.BoundAddress``): this process listens on each with
    ``SO_REUSEPORT``; ``on_ready`` is called once they are open."""
    stop_event = stop_event or trio.Event()
    if reloader is None:
        reloader = Reloader(Generation(0, list(contexts)))
    first = reloader.current
    if not first.listeners:
        first.listeners = plan_listeners(first.contexts, bound)
    async with AsyncExitStack() as stack:
        if any(ctx.chain.needs_asyncio for ctx in first.contexts) or \
                getattr(spool, "needs_asyncio", False):
            import trio_asyncio  # one asyncio loop bridge for the whole process, opened once
            await stack.enter_async_context(trio_asyncio.open_loop())
            reloader.asyncio = True
        load = ProcessLoad()
        reloader.load = load
        reloader.spooler = spooler
        for ctx in first.contexts:
            ctx.load = load
        if spool is not None and hasattr(spool, "sync_inline"):
            # With a single session open, its commit may fdatasync on the loop: nobody waits.
            spool.sync_inline = lambda: load.lone
        # Bound before any task starts: a port in use is then one plain OSError naming
        # the address, not an exception group from inside the nurseries.
        opened = await reloader.open_listeners(first)
        async with trio.open_nursery() as outer:
            if spool is not None and hasattr(spool, "run"):
                await outer.start(spool.run)
            if spooler is not None:  # the mailet container's spool workers
                await outer.start(spooler.run)
            for service in services:
                await outer.start(service.run)
            reloader.services_nursery = outer
            await reloader.start_services(first.services)
            async with trio.open_nursery() as connections:
                reloader.listeners = ListenerSet(connections)
                # In a worker the supervisor has announced the addresses already.
                reloader.put_in_force(first, opened, announce=bound is None)
                sweeper = _Sweeper(outer, reloader)
                reloader.on_contexts = sweeper.restart
                await sweeper.start()
                # The signal receiver is open before "ready": a SIGTERM right after is handled.
                await outer.start(_watch_signals, stop_event, reloader, outer)
                if worker is None:
                    log.info("chainmail ready (pid %d)", os.getpid())
                else:
                    log.info("worker %d ready (pid %d)", worker, os.getpid())
                if on_ready is not None:
                    on_ready()
                task_status.started([ctx.bound for ctx in first.contexts])
                await stop_event.wait()
                log.info("shutting down: no new connections; %d sessions open",
                         load.sessions)
                reloader.listeners.close_all()
                for ctx in reloader.contexts:
                    ctx.draining = True
                    for runner in list(ctx.sessions):
                        runner.request_shutdown()
                with trio.move_on_after(grace_period) as grace:
                    while load.sessions:
                        await trio.sleep(0.05)
                if grace.cancelled_caught:
                    log.warning("grace period over: closing %d sessions",
                                load.sessions)
                    connections.cancel_scope.cancel()
            if spooler is not None:
                # Let the workers finish the mail they hold (it stays spooled otherwise,
                # and is processed again at the next start).
                with trio.move_on_after(min(grace_period, 10.0)):
                    await spooler.stop()
            outer.cancel_scope.cancel()
    log.info("stopped")


class _Sweeper:
    """The idle-session sweeper over every open context, restarted when they change."""

    def __init__(self, nursery: trio.Nursery, reloader: Reloader) -> None:
        self.nursery, self.reloader = nursery, reloader
        self.scope: trio.CancelScope | None = None

    async def start(self) -> None:
        self.scope = trio.CancelScope()
        await self.nursery.start(self._run, self.scope, self.reloader.contexts)

    def restart(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
        self.scope = trio.CancelScope()
        self.nursery.start_soon(self._run, self.scope, self.reloader.contexts)

    @staticmethod
    async def _run(scope: trio.CancelScope, contexts, task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await sweep_idle_sessions(contexts, task_status=task_status)


async def _watch_signals(stop_event: trio.Event, reloader: Reloader, nursery: trio.Nursery,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM/SIGINT: drain and stop.  SIGHUP: reopen the log file (logrotate), then reload
    the configuration (:mod:`.reload`; without one, re-read every TLS keystore: new
    connections get the new certificates, a broken keystore is reported and the old one
    kept)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                logsetup.reopen()
            log.info("received %s", signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                await reloader.reload(nursery)
                continue
            stop_event.set()
            return
