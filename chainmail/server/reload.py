"""Configuration reload without restart (SIGHUP, or :func:`request_reload`).

A reload re-reads ``smtpserver.xml``, ``lmtpserver.xml``, ``mailetcontainer.xml``,
``domainlist.xml`` and the keystores, and builds a new :class:`Generation` from them
completely (every file parsed, every handler chain and the mailet engine built, every new
address bound) before anything in force changes.  Any error refuses the new configuration
as a whole: it is logged with its file and line, and the old one stays.

Switching is done per process, without closing a listening socket that the new
configuration keeps (closing one would reset the connections waiting in its accept queue):

- every listening socket is served by one accept loop (:class:`ListenerSet`) that reads the
  context it hands connections to at each accept, so a kept address passes to the new
  block's :class:`ServerContext` between two accepts; a new address starts a loop; a
  removed one is closed;
- a session holds the context it was accepted with for its whole life: its handler chain,
  its configuration, its stores.  The context object is replaced as a whole, never changed
  in place, so a session never sees half of each configuration;
- the spooler hands the next mail to the new engine; a mail being processed finishes on the
  engine it started on (:meth:`chainmail.mailet.spooler.MailSpooler.use`);
- the container's background services (RemoteDelivery's queue) of the old engine are
  stopped and the new engine's started: their queues are on disk, nothing queued is lost;
- the old generation is closed (engine destroyed, stores closed) once its last session and
  its last mail have finished.

With worker processes the supervisor checks the new configuration (built in a forked
child, so that nothing of it stays in the supervisor), binds the new addresses, writes the
plan (:func:`write_plan`: the generation, the addresses, the connection-count slots and a
digest of the files it checked) and passes SIGHUP on; each worker then switches as above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable

import trio

from .busypoll import poll_readable
from .connection import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY_DELAY, serve_connection
from .workers import bind_key

if TYPE_CHECKING:  # pragma: no cover
    from .context import ServerContext

__all__ = ["request_reload", "Generation", "ListenerSet", "Reloader", "ReloadRefused",
           "bind_key", "config_digest", "write_plan", "read_plan", "Plan", "check_in_child",
           "refusal"]

log = logging.getLogger("chainmail.server")

PLAN_FILE = "reload.json"      # under <var>/run/
RETIRE_POLL = 0.1              # seconds between two looks at an old generation's sessions

#: the supervisor's pid, in a worker process (set by workers.supervise)
supervisor_pid: int | None = None


def request_reload() -> None:
    """Ask the running server to reload its configuration: SIGHUP to the supervisor when
    this is a worker process, else to this process.  Returns at once; the outcome is
    logged ("configuration reloaded" or "configuration reload refused")."""
    os.kill(supervisor_pid or os.getpid(), signal.SIGHUP)


class ReloadRefused(Exception):
    """A new configuration that cannot be put in force (the message says why)."""


# -- what a reload reads and decides

def config_digest(conf: str) -> str:
    """A digest of every ``*.xml`` file of the configuration directory: a worker checks
    that it reads what the supervisor checked."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(conf)):
        path = os.path.join(conf, name)
        if name.endswith(".xml") and os.path.isfile(path):
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


@dataclass
class Plan:
    """What the supervisor decided for a reload, for its workers."""

    generation: int
    digest: str
    bound: list            # workers.BoundAddress of every enabled block
    slots: list            # per block: (path of the shared table, index in it, its blocks)


def write_plan(var: str, plan: Plan) -> None:
    """Written atomically (rename), before SIGHUP reaches a worker."""
    run = os.path.join(var, "run")
    os.makedirs(run, mode=0o700, exist_ok=True)
    data = {"generation": plan.generation, "digest": plan.digest,
            "bound": [[a.block, a.family, list(a.sockaddr)] for a in plan.bound],
            "slots": [list(s) for s in plan.slots]}
    tmp = os.path.join(run, PLAN_FILE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, os.path.join(run, PLAN_FILE))


def read_plan(var: str) -> Plan | None:
    from .workers import BoundAddress
    try:
        with open(os.path.join(var, "run", PLAN_FILE)) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    return Plan(data["generation"], data["digest"],
                [BoundAddress(b, f, tuple(s)) for b, f, s in data["bound"]],
                [tuple(slot) for slot in data["slots"]])


def refusal(err: BaseException) -> str:
    """What the log says of a new configuration that failed to build: the error itself for
    a configuration, TLS or file error (they name file and line), else its traceback."""
    import ssl
    from ..config.errors import ConfigError
    if isinstance(err, (ConfigError, ReloadRefused, ssl.SSLError, OSError)):
        return str(err)
    import traceback
    return "building it failed:\n" + "".join(traceback.format_exception(err)).rstrip()


def check_in_child(check: Callable[[], None]) -> str | None:
    """Run ``check`` (which builds a configuration and raises on an error) in a forked
    child: whatever the build opens (handlers' threads, databases, plugin state) never stays
    in the calling process.  Returns None if it succeeded, else why not.  The child logs
    nothing (the workers log what their own build says)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 2
        try:
            os.close(read_fd)
            logging.disable(logging.CRITICAL)
            try:
                check()
                status = 0
            except BaseException as err:
                os.write(write_fd, refusal(err).encode("utf-8", "replace")[:60000])
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with open(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return b"".join(chunks).decode("utf-8", "replace") or \
        f"the check ended with {os.waitstatus_to_exitcode(status)}"


# -- one configuration in force

@dataclass
class Generation:
    """The server contexts, mailet container and stores built from one configuration."""

    number: int
    contexts: list
    container: Any = None          # chainmail.mailet.Container, or None
    services: list = field(default_factory=list)   # the container's, in this process
    listeners: list = field(default_factory=list)  # per context: [(key, opener)]
    closers: list = field(default_factory=list)    # called once, newest first, at close
    activate: list = field(default_factory=list)   # called once it is put in force
    closed: bool = False

    @property
    def engine(self) -> Any:
        return self.container.engine if self.container is not None else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for close in reversed(self.closers):
            try:
                close()
            except Exception:   # pragma: no cover - best effort
                log.exception("closing configuration generation %d", self.number)


# -- listening sockets whose block can change

class _Listening:
    __slots__ = ("sock", "ctx", "scope", "local", "closed", "name")

    def __init__(self, sock: socket.socket, ctx: ServerContext) -> None:
        self.sock, self.ctx = sock, ctx
        self.scope = trio.CancelScope()
        self.closed = False
        self.name = sock.getsockname()
        self.local = None
        if self.name[0] not in ("0.0.0.0", "::"):
            host = self.name[0]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            self.local = (host, self.name[1])   # bound to one address: every connection's


class ListenerSet:
    """Every listening socket of the process, by key (:func:`bind_key`, or the address the
    supervisor bound), each served by one accept loop in the ``connections`` nursery."""

    def __init__(self, connections: trio.Nursery) -> None:
        self.connections = connections
        self.by_key: dict[Hashable, list[_Listening]] = {}

    def keys(self) -> set:
        return set(self.by_key)

    def names(self, key: Hashable) -> list[tuple]:
        return [entry.name for entry in self.by_key.get(key, ())]

    def add(self, key: Hashable, ctx: ServerContext, listener: trio.SocketListener) -> None:
        sock = socket.socket(fileno=listener.socket.detach())
        sock.setblocking(False)
        entry = _Listening(sock, ctx)
        self.by_key.setdefault(key, []).append(entry)
        self.connections.start_soon(self._accept, entry)

    def retarget(self, key: Hashable, ctx: ServerContext) -> None:
        """Connections accepted from now on go to ``ctx``; the socket stays open."""
        for entry in self.by_key.get(key, ()):
            entry.ctx = ctx

    def close(self, key: Hashable) -> None:
        for entry in self.by_key.pop(key, ()):
            entry.closed = True
            entry.scope.cancel()

    def close_all(self) -> None:
        for key in list(self.by_key):
            self.close(key)

    async def _accept(self, entry: _Listening) -> None:
        sock = entry.sock
        try:
            with entry.scope:
                while True:
                    try:
                        conn, peer = sock.accept()
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                        continue
                    except OSError as exc:
                        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                            raise
                        log.error("accept failed: %s; retrying in %.1f s", exc, ACCEPT_RETRY_DELAY)
                        await trio.sleep(ACCEPT_RETRY_DELAY)
                        continue
                    ctx = entry.ctx
                    ctx.connections += 1   # counted at once: its generation stays open for it
                    self.connections.start_soon(self._serve, entry, ctx, conn, peer)
        finally:
            entry.closed = True
            trio.lowlevel.notify_closing(sock)
            sock.close()

    @staticmethod
    async def _serve(entry: _Listening, ctx: ServerContext, conn: socket.socket, peer) -> None:
        try:
            try:
                # non-blocking, TCP_NODELAY (replies are small); conn stays the plain socket
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            except OSError:
                return                             # reset before we got to it
            await serve_connection(ctx, stream, peer=peer, local=entry.local, plain=conn)
        finally:
            conn.close()
            ctx.connections -= 1
            busy_poll = ctx.config.busy_poll
            if busy_poll and not ctx.load.sessions and not ctx.draining and not entry.closed:
                # The last session ended: its client, or another, often connects again at once.
                poll_readable(entry.sock, busy_poll / 1e6)


def _show(name: tuple) -> str:
    return f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"


# -- the process's side: switching generations

class Reloader:
    """Holds the generations of one serving process and switches between them.

    ``rebuild(previous)`` builds the next :class:`Generation` (raising
    :class:`ReloadRefused` or a ``ConfigError`` when it cannot), or returns None when there
    is no new configuration to put in force (a worker whose supervisor refused it): then
    only the keystores are re-read."""

    def __init__(self, current: Generation,
                 rebuild: Callable[[Generation], Generation | None] | None = None) -> None:
        self.current = current
        self.rebuild = rebuild
        self.generations: list[Generation] = [current]
        self.listeners: ListenerSet | None = None
        self.spooler: Any = None
        self.load: Any = None
        self.services_nursery: trio.Nursery | None = None
        self.services_scope: trio.CancelScope | None = None
        self.services_done: trio.Event | None = None
        self.asyncio = False
        self.on_contexts: Callable[[], None] = lambda: None

    @property
    def contexts(self) -> list:
        """Every context of every generation still open (old ones drain their sessions)."""
        return [ctx for gen in self.generations for ctx in gen.contexts]

    # -- opening listeners

    async def open_listeners(self, gen: Generation) -> list[tuple[Any, Hashable, list]]:
        """The listeners ``gen`` needs and the set does not have yet, opened (an OSError
        names the block's file and line; what was opened is closed again)."""
        have = self.listeners.keys() if self.listeners is not None else set()
        opened: list[tuple[Any, Hashable, list]] = []
        try:
            for ctx, pairs in zip(gen.contexts, gen.listeners):
                for key, opener in pairs:
                    if key in have:
                        continue
                    have = have | {key}
                    opened.append((ctx, key, await opener()))
        except BaseException:
            for _, _, listeners in opened:
                for listener in listeners:
                    await listener.aclose()
            raise
        return opened

    def put_in_force(self, gen: Generation, opened: list, *, announce: bool) -> None:
        """Hand the listeners to ``gen``'s contexts; close those it no longer has."""
        assert self.listeners is not None
        wanted: set = set()
        for ctx, pairs in zip(gen.contexts, gen.listeners):
            ctx.load = self.load
            for key, _ in pairs:
                wanted.add(key)
                self.listeners.retarget(key, ctx)
        for ctx, key, listeners in opened:
            for listener in listeners:
                if announce:
                    cfg = ctx.config
                    log.info("%sserver %r listening on %s", cfg.kind, cfg.name,
                             _show(listener.socket.getsockname()))
                self.listeners.add(key, ctx, listener)
        for key in self.listeners.keys() - wanted:
            names = ", ".join(_show(n) for n in self.listeners.names(key))
            self.listeners.close(key)
            log.info("stopped listening on %s (not in the new configuration)", names)
        for ctx, pairs in zip(gen.contexts, gen.listeners):
            if not ctx.bound:
                for key, _ in pairs:
                    ctx.bound.extend(n[:2] for n in self.listeners.names(key))

    # -- the container's background services

    async def start_services(self, services: list) -> None:
        assert self.services_nursery is not None
        if not services:
            self.services_scope = self.services_done = None
            return
        self.services_scope = trio.CancelScope()
        self.services_done = trio.Event()
        await self.services_nursery.start(self._run_services, services, self.services_scope,
                                          self.services_done)

    @staticmethod
    async def _run_services(services: list, scope: trio.CancelScope, done: trio.Event,
                            task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    for service in services:
                        await nursery.start(service.run)
                    task_status.started()
        finally:
            done.set()

    async def stop_services(self) -> None:
        if self.services_scope is not None and self.services_done is not None:
            self.services_scope.cancel()
            await self.services_done.wait()
        self.services_scope = self.services_done = None

    # -- a reload

    async def reload(self, retire_in: trio.Nursery) -> bool:
        """Build, check and put in force the configuration on disk; True if it was."""
        if self.rebuild is None:
            await self.reload_keystores()
            return False
        old = self.current
        try:
            gen = self.rebuild(old)
        except Exception as err:
            log.error("configuration reload refused, the configuration in force is kept: %s",
                      refusal(err))
            await self.reload_keystores()
            return False
        if gen is None:
            await self.reload_keystores()
            return False
        try:
            self._compatible(old, gen)
            opened = await self.open_listeners(gen)
        except (ReloadRefused, OSError) as err:
            text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            log.error("configuration reload refused, the configuration in force is kept: %s",
                      text)
            gen.close()
            await self.reload_keystores()
            return False
        for activate in gen.activate:
            activate()
        self.put_in_force(gen, opened, announce=True)
        self.current = gen
        self.generations.append(gen)
        self.on_contexts()
        if self.spooler is not None and gen.container is not None:
            self.spooler.use(gen.container.engine, gen.container.context,
                             error_repository=gen.container.config.error_repository,
                             threads=gen.container.config.threads)
        if gen.services or self.services_scope is not None:
            await self.stop_services()
            await self.start_services(gen.services)
        for ctx in gen.contexts:
            if ctx.tls is not None:   # opened anew from the files with the new configuration
                log.info("TLS certificates reloaded (%s)",
                         ctx.config.tls.keystore or ctx.config.tls.certificates)
        log.info("configuration reloaded (generation %d): %d server block(s); sessions already "
                 "open finish on the configuration they started with", gen.number,
                 len(gen.contexts))
        retire_in.start_soon(self._retire, old)
        return True

    def _compatible(self, old: Generation, new: Generation) -> None:
        if (old.container is None) != (new.container is None):
            from ..mailet.config import FILE
            raise ReloadRefused(f"{FILE} was {'added' if old.container is None else 'removed'}: "
                                "starting or stopping the mailet container needs a restart")
        if not self.asyncio and any(ctx.chain.needs_asyncio for ctx in new.contexts):
            raise ReloadRefused("a handler of the new configuration runs on asyncio, which "
                                "this process did not open at start: it needs a restart")

    async def reload_keystores(self) -> None:
        """Re-read the TLS keystores of the configuration in force (a broken one is
        reported and the old one kept)."""
        for ctx in self.current.contexts:
            if ctx.tls is not None:
                await trio.to_thread.run_sync(ctx.tls.reload)

    async def _retire(self, gen: Generation) -> None:
        """Close ``gen`` once nothing uses it: no connection accepted for its contexts, no
        mail on its engine."""
        engine = gen.engine
        while any(ctx.connections for ctx in gen.contexts) or (
                engine is not None and self.spooler is not None
                and self.spooler.running_on(engine)):
            await trio.sleep(RETIRE_POLL)
        if gen in self.generations:
            self.generations.remove(gen)
            self.on_contexts()
        gen.close()
        log.info("configuration generation %d closed: its last session has ended", gen.number)

    def close_all(self) -> None:
        for gen in reversed(self.generations):
            gen.close()
        self.generations.clear()


def opener_for_bind(ctx: ServerContext, bind: Any) -> Callable[[], Any]:
    """Opens one ``<bind>`` of ``ctx``'s block (port 0 picks a free port)."""
    cfg = ctx.config

    async def open_bind() -> list[trio.SocketListener]:
        host: str | None = None if bind.host in ("", "*") else bind.host
        try:
            return await trio.open_tcp_listeners(bind.port, host=host,
                                                 backlog=cfg.connection_backlog)
        except OSError as exc:
            raise OSError(exc.errno, f"{cfg.file}:{cfg.line}: {cfg.kind}server {cfg.name!r}: "
                                     f"cannot bind {bind.host}:{bind.port}: {exc.strerror}") from exc
    return open_bind


def opener_for_address(ctx: ServerContext, address: Any) -> Callable[[], Any]:
    """Opens this worker's own socket on an address the supervisor bound."""
    async def open_address() -> list[trio.SocketListener]:
        from .workers import listen_on
        return [listen_on(address, ctx.config.connection_backlog)]
    return open_address


def plan_listeners(contexts: Iterable[ServerContext], bound: list | None) -> list[list]:
    """Per context, its listening sockets as (key, opener) pairs."""
    plans: list[list] = []
    for block, ctx in enumerate(contexts):
        if bound is None:
            plans.append([(bind_key(ctx.config, bind), opener_for_bind(ctx, bind))
                          for bind in ctx.config.bind])
        else:
            plans.append([(("address", a.family, tuple(a.sockaddr[:2])), opener_for_address(ctx, a))
                          for a in bound if a.block == block])
    return plans
