"""Health checks, answered as James's WebAdmin answers ``GET /healthcheck``.

Each check does the real thing rather than looking at flags: the spool and mailbox checks
create, write, fsync and remove a file (permission bits do not stop root, a read-only mount
or a full disk does: only trying tells); the store check opens ``chainmail.db`` anew and
reads it; each listener check connects and waits for the greeting; each outgoing queue
check finds the oldest mail waiting and compares its age with a bound.

What to check is known without wiring: the server names the blocks in force
(:func:`serving`, each time they change), every running outgoing queue registers itself
(:func:`track_queue`), and the rest follows from the blocks (listening addresses, spool,
state directory, mailboxes).  The
same registry gives the metrics measured at scrape time (spool and queue sizes and ages).
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Collection, Iterable, Mapping
from urllib.parse import quote

import trio

from . import metrics

__all__ = ["Check", "Listener", "run_checks", "component_names", "report", "check_json",
           "http_status", "healthcheck", "serving", "track_queue", "untrack_queue",
           "HEALTHY", "DEGRADED", "UNHEALTHY"]

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
_ORDER = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
TIMEOUT = 5.0           # seconds for each check
QUEUE_AGE_SLACK = 3600.0   # beyond the retry schedule, before the age check fails


@dataclass(frozen=True)
class Check:
    """One check's result: ``status`` is ``healthy``, ``degraded`` or ``unhealthy``;
    ``cause`` says what is wrong (None when healthy)."""

    name: str
    status: str
    cause: str | None = None

    @property
    def healthy(self) -> bool:
        """Not unhealthy: the component works (perhaps degraded)."""
        return self.status != UNHEALTHY


@dataclass(frozen=True)
class Listener:
    """A listening address to check: ``kind`` is ``smtp`` or ``lmtp``, ``name`` the block's;
    ``tls`` for implicit TLS; ``proxy`` when a PROXY header must come first (``proxy_first``:
    before the TLS handshake)."""

    kind: str
    name: str
    host: str
    port: int
    tls: bool = False
    proxy: bool = False
    proxy_first: bool = True

    @property
    def component(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind.upper()} listener {self.name} {host}:{self.port}"


# ------------------------------------------------------------- what this process serves

_contexts: list[Any] = []    # the server blocks in force (ServerContext), oldest first
_queues: dict[str, Any] = {}   # queue name -> OutgoingQueue


def serving(contexts: Iterable[Any]) -> None:
    """The server blocks (``ServerContext``) of this process from now on, oldest first
    (after a reload, an older block still finishing its sessions comes before the new)."""
    _contexts[:] = list(contexts)


def _served_listeners() -> list[Listener]:
    """Every address a block in force listens on; the newest block of an address wins."""
    found: dict[tuple[str, int], Listener] = {}
    for ctx in list(_contexts):
        cfg = ctx.config
        tls = ctx.tls is not None and cfg.tls.socket_tls
        for host, port in list(ctx.bound):
            found[(host, port)] = Listener(cfg.kind, cfg.name, host, port, tls,
                                           cfg.proxy_required, cfg.proxy_first)
    return list(found.values())


def track_queue(name: str, queue: Any) -> None:
    """The outgoing queue ``name`` (an :class:`~chainmail.remote.queue.OutgoingQueue`)
    is being delivered by this process."""
    _queues[name] = queue


def untrack_queue(name: str, queue: Any) -> None:
    if _queues.get(name) is queue:
        del _queues[name]


def _spool_of(contexts: list[Any]) -> Any:
    return next((ctx.spool for ctx in contexts if getattr(ctx, "spool", None) is not None), None)


# -------------------------------------------------------------------------- checks


def _try_write(directory: str) -> None:
    """Create, write, fsync and remove a file in ``directory`` (raises OSError)."""
    path = os.path.join(directory, f".healthcheck-{os.getpid()}-{secrets.token_hex(6)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"healthcheck\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def _writable(name: str, directory: str) -> Callable[[], Awaitable[Check]]:
    async def check() -> Check:
        try:
            await trio.to_thread.run_sync(_try_write, directory)
        except OSError as exc:
            return Check(name, UNHEALTHY, f"cannot write a file in {directory}: "
                                          f"{exc.strerror or exc}")
        return Check(name, HEALTHY)
    return check


def _read_db(path: str) -> None:
    if not os.path.exists(path):
        raise OSError(f"{path} does not exist")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()


def _database(name: str, path: str) -> Callable[[], Awaitable[Check]]:
    async def check() -> Check:
        try:
            await trio.to_thread.run_sync(_read_db, path)
        except (OSError, sqlite3.Error) as exc:
            return Check(name, UNHEALTHY, f"cannot read {path}: {exc}")
        return Check(name, HEALTHY)
    return check


def _postgres(name: str, database: Any) -> Callable[[], Awaitable[Check]]:
    """PostgreSQL answers a query (lookups go on from memory meanwhile; changes, AUTH and
    greylisting fail until it does)."""
    def ask() -> None:
        with database.connection() as conn:
            conn.execute("SELECT 1")

    async def check() -> Check:
        try:
            await trio.to_thread.run_sync(ask)
        except Exception as exc:   # psycopg's errors, the pool's timeout
            return Check(name, UNHEALTHY, f"{database.config.describe()}: "
                                          f"{' '.join(str(exc).split())}")
        return Check(name, HEALTHY)
    return check


def _probe_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def _greeting(listener: Listener) -> bytes:
    """Connect to ``listener`` and read its greeting (the last line of it)."""
    stream: Any = await trio.open_tcp_stream(_probe_host(listener.host), listener.port)
    try:
        if listener.proxy and (listener.proxy_first or not listener.tls):
            await stream.send_all(b"PROXY UNKNOWN\r\n")
        if listener.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            stream = trio.SSLStream(stream, context, server_hostname=None)
            await stream.do_handshake()
            if listener.proxy and not listener.proxy_first:
                await stream.send_all(b"PROXY UNKNOWN\r\n")
        data = b""
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise OSError("connection closed before the greeting")
            data += chunk
            lines = data.split(b"\r\n")
            for line in lines[:-1]:
                if len(line) >= 4 and line[3:4] == b" ":
                    return line
            if len(data) > 4096:
                raise OSError("no greeting line")
    finally:
        await trio.aclose_forcefully(stream)


def _broker(name: str, spool: Any) -> Callable[[], Awaitable[Check]]:
    """The spool on RabbitMQ: its connection is open (mail is refused with 451 otherwise)."""
    async def check() -> Check:
        if spool.connected:
            return Check(name, HEALTHY)
        return Check(name, UNHEALTHY, f"not connected to {spool.describe()}: mail is "
                                      "refused with 451 until it is back")
    return check


def _listener(listener: Listener) -> Callable[[], Awaitable[Check]]:
    name = listener.component

    async def check() -> Check:
        try:
            line = await _greeting(listener)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return Check(name, UNHEALTHY, f"no greeting: {exc.__cause__ or exc}")
        text = line.decode("ascii", "replace")
        if text.startswith("220"):
            return Check(name, HEALTHY)
        return Check(name, DEGRADED, f"accepts connections but greets with: {text}")
    return check


def _arrival(entry: Any) -> float:
    from .mailet.api import ATTR_ARRIVAL
    value = entry.envelope.attributes.get(ATTR_ARRIVAL)
    return float(value) if isinstance(value, (int, float)) else float(entry.queued_at)


def _retry_schedule(queue: Any) -> float:
    """Seconds from a mail's first attempt to its last one, by the queue's retry delays."""
    config = queue.config
    return sum(config.delays.delay_before_retry(n) for n in range(1, config.max_retries + 1)) / 1000


def queue_state(queue: Any) -> tuple[int, float | None]:
    """(entries, arrival time of the oldest mail not held), from the queue on disk."""
    from .remote.queue import queue_id
    entries = queue.spool.list()
    holds = getattr(queue, "holds", None)
    waiting = [e for e in entries if holds is None or not holds.is_held(queue_id(e))]
    return len(entries), min((_arrival(e) for e in waiting), default=None)


def _queue(name: str, queue: Any, bound: float | None) -> Callable[[], Awaitable[Check]]:
    component = f"Outgoing queue {name}"

    async def check() -> Check:
        limit = bound if bound is not None else _retry_schedule(queue) + QUEUE_AGE_SLACK
        try:
            count, oldest = await trio.to_thread.run_sync(queue_state, queue)
        except OSError as exc:
            return Check(component, UNHEALTHY, f"cannot list {queue.spool.root}: {exc}")
        age = time.time() - oldest if oldest is not None else 0.0
        if age > limit:
            return Check(component, UNHEALTHY, f"the oldest of {count} mail(s) has waited "
                                               f"{age:.0f} s (bound {limit:.0f} s)")
        return Check(component, HEALTHY)
    return check


def _probes(*, var: str | None, spool: Any, database: str | None, mailboxes: str | None,
            listeners: Iterable[Listener] | None, queues: Mapping[str, Any] | None,
            max_queue_age: float | None) -> dict[str, Callable[[], Awaitable[Check]]]:
    contexts = list(_contexts)
    if spool is None:
        spool = _spool_of(contexts)
        if spool is None and var is not None:
            spool = os.path.join(var, "spool")
    root = spool if isinstance(spool, str) or spool is None else spool.root
    if var is None and root is not None:
        var = os.path.dirname(root)
    if database is None and var is not None:
        database = os.path.join(var, "chainmail.db")
    if mailboxes is None:
        store = next((c.mailboxes for c in contexts if getattr(c, "mailboxes", None)), None)
        mailboxes = getattr(store, "root", None) or (os.path.join(var, "mail") if var else None)
    probes: dict[str, Callable[[], Awaitable[Check]]] = {}
    if root is not None:
        tmp = os.path.join(root, "tmp")
        probes["Spool"] = _writable("Spool", tmp if os.path.lexists(tmp) else root)
    if hasattr(spool, "connected"):
        probes["RabbitMQ"] = _broker("RabbitMQ", spool)
    database_of = (getattr(getattr(c, "users", None), "database", None) for c in contexts)
    shared = next((d for d in database_of if hasattr(d, "connection")), None)
    if shared is not None:   # the accounts (and the rest) in PostgreSQL
        probes["PostgreSQL"] = _postgres("PostgreSQL", shared)
    if mailboxes is not None:
        # Not created until the first delivery: then whoever creates it must be able to.
        where = mailboxes if os.path.isdir(mailboxes) else os.path.dirname(mailboxes)
        probes["Mailboxes"] = _writable("Mailboxes", where)
    if database is not None:
        probes["Stores"] = _database("Stores", database)
    if listeners is None:
        listeners = _served_listeners()
    for each in listeners:
        probes[each.component] = _listener(each)
    for name, queue in sorted((queues if queues is not None else dict(_queues)).items()):
        probes[f"Outgoing queue {name}"] = _queue(name, queue, max_queue_age)
    return probes


async def run_checks(*, var: str | None = None, conf: str | None = None, spool: Any = None,
                     database: str | None = None, mailboxes: str | None = None,
                     listeners: Iterable[Listener] | None = None,
                     queues: Mapping[str, Any] | None = None,
                     max_queue_age: float | None = None,
                     only: Collection[str] | None = None,
                     timeout: float = TIMEOUT) -> list[Check]:
    """Run the checks (concurrently, each within ``timeout`` seconds) and return their
    results in a stable order.  Every argument is optional:

    - ``var``: the state directory; gives the spool (``var/spool``), the stores
      (``var/chainmail.db``) and the mailboxes (``var/mail``) when the process serves no
      listener that knows them (``conf`` is accepted and not needed);
    - ``spool``: the spool (a ``DirectorySpool`` or its directory), default the served one;
    - ``database``, ``mailboxes``: paths, by default from the state directory;
    - ``listeners``: :class:`Listener` s, by default every listener of this process;
    - ``queues``: outgoing queues by name, by default those this process delivers (worker 0);
    - ``max_queue_age``: seconds the oldest mail of an outgoing queue may wait (held mail
      aside); by default the queue's whole retry schedule plus an hour, past which it should
      have been delivered or bounced;
    - ``only``: the component names to run (others are left out; unknown ones ignored).
    """
    probes = _probes(var=var, spool=spool, database=database, mailboxes=mailboxes,
                     listeners=listeners, queues=queues, max_queue_age=max_queue_age)
    if only is not None:
        probes = {name: probe for name, probe in probes.items() if name in set(only)}
    results: dict[str, Check] = {}

    async def run(name: str, probe: Callable[[], Awaitable[Check]]) -> None:
        with trio.move_on_after(timeout):
            results[name] = await probe()
            return
        results[name] = Check(name, UNHEALTHY, f"no answer within {timeout:g} s")

    async with trio.open_nursery() as nursery:
        for name, probe in probes.items():
            nursery.start_soon(run, name, probe)
    return [results[name] for name in probes]


def component_names(**targets: Any) -> list[str]:
    """The names of the checks :func:`run_checks` would run with the same arguments."""
    targets.pop("conf", None)
    targets.pop("only", None)
    targets.pop("timeout", None)
    defaults: dict[str, Any] = {"var": None, "spool": None, "database": None,
                                "mailboxes": None, "listeners": None, "queues": None,
                                "max_queue_age": None}
    return list(_probes(**{**defaults, **targets}))


# ---------------------------------------------------------------------- James's JSON


def check_json(check: Check) -> dict[str, Any]:
    """One check as James writes it (``GET /healthcheck/checks/{name}``)."""
    return {"componentName": check.name, "escapedComponentName": quote(check.name, safe=""),
            "status": check.status, "cause": check.cause}


def overall(checks: Iterable[Check]) -> str:
    return max((c.status for c in checks), key=_ORDER.__getitem__, default=HEALTHY)


def report(checks: list[Check]) -> dict[str, Any]:
    """The body of ``GET /healthcheck``: the worst status, then every check."""
    return {"status": overall(checks), "checks": [check_json(c) for c in checks]}


def http_status(checks: Iterable[Check], *, strict: bool = False) -> int:
    """503 when a check is unhealthy (or, ``strict``, degraded), else 200: James's codes."""
    status = overall(checks)
    return 503 if status == UNHEALTHY or (strict and status == DEGRADED) else 200


async def healthcheck(names: Collection[str] | None = None, *, strict: bool = False,
                      **targets: Any) -> tuple[int, dict[str, Any]]:
    """``GET /healthcheck[?check=...][&strict]``: (HTTP status, body).  A name that is not a
    check gives 404 with James's error body."""
    if names:
        known = set(component_names(**targets))
        unknown = [n for n in names if n not in known]
        if unknown:
            return 404, {"statusCode": 404, "type": "notFound",
                         "message": f"Component with name {unknown[0]} cannot be found",
                         "details": None}
    checks = await run_checks(only=names or None, **targets)
    return http_status(checks, strict=strict), report(checks)


# ------------------------------------------------------ sizes and ages for the scrape


def _measure() -> list[Any]:
    """The spool's and outgoing queues' sizes and oldest ages (this process's view)."""
    families = []
    spool = _spool_of(list(_contexts))
    if spool is not None and hasattr(spool, "ids"):   # the spool on RabbitMQ: the broker counts
        ids = spool.ids()
        size = metrics.gauge("chainmail_spool_messages", "messages in the spool")
        size.add_metric([], len(ids))
        age = metrics.gauge("chainmail_spool_oldest_age_seconds",
                            "age of the oldest message in the spool (0 when empty)")
        age.add_metric([], max(0.0, time.time() - int(ids[0][:12], 16) / 1000) if ids else 0.0)
        families += [size, age]
    if _queues:
        size = metrics.gauge("chainmail_outgoing_queue_messages",
                             "entries in an outgoing queue", ("queue",))
        age = metrics.gauge("chainmail_outgoing_queue_oldest_age_seconds",
                            "time the oldest mail of an outgoing queue has waited since it "
                            "arrived (held mail aside; 0 when none)", ("queue",))
        for name, queue in sorted(dict(_queues).items()):
            count, oldest = queue_state(queue)
            size.add_metric([name], count)
            age.add_metric([name], max(0.0, time.time() - oldest) if oldest else 0.0)
        families += [size, age]
    return families


metrics.add_scrape_source("chainmail.health", _measure)
