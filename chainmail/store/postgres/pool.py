"""One PostgreSQL database as a process uses it: a connection pool, the schema brought up
to date once, and a watcher that tells the in-memory stores when another process changed
their table.

The stores answer SMTP lookups from memory; the watcher thread asks the ``store_changes``
counters every ``refresh_interval`` (one small query for all stores) and has the stores
whose counter moved reload.  A lookup never waits for the database, even when it is down:
the stores keep serving what they last read, and the watcher logs the outage once.

The pool opens when the first store is opened and closes with the last, so the command
line and each configuration generation of a server hold connections only while they use
them.  Nothing here survives a fork: worker processes open their own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ...config.errors import ConfigError
from .config import PostgresConfig

__all__ = ["Database"]

log = logging.getLogger("chainmail.store.postgres")


class Database:
    """The pool and change watcher of one :class:`PostgresConfig`; thread-safe."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._users = 0
        self._pool: Any = None
        self._watchers: dict[str, list[tuple[float, Callable[[int], None]]]] = {}
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- lifetime

    def acquire(self) -> None:
        """Open the pool (and migrate) for the first user; count the others."""
        with self._lock:
            if self._users == 0:
                self._open()
            self._users += 1

    def release(self) -> None:
        """The last user closes the pool and stops the watcher."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._users = 0
            pool, self._pool = self._pool, None
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
            self._watchers = {}
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.config.timeout + 1)
        if pool is not None:
            pool.close()

    def _open(self) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        from .migrate import MigrationError, migrate
        config = self.config
        conninfo = config.conninfo()
        try:
            # One direct connection first: its error says why (the pool's only times out).
            with psycopg.connect(conninfo, autocommit=True) as conn:
                applied = migrate(conn, config.schema)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        except MigrationError as exc:
            raise ConfigError(config.file, None, "", f"{config.describe()}: {exc}") from None
        if applied:
            log.info("PostgreSQL %s: applied schema migration(s) %s", config.describe(),
                     ", ".join(f"{v:04d}" for v in applied))
        pool = ConnectionPool(conninfo, min_size=config.pool_initial_size,
                              max_size=config.pool_max_size, timeout=config.timeout,
                              kwargs={"autocommit": True}, open=False, name="chainmail")
        try:
            pool.open(wait=config.pool_initial_size > 0, timeout=config.timeout)
        except PoolTimeout as exc:
            pool.close()
            raise self._error(exc) from None
        self._pool = pool

    def _error(self, exc: BaseException) -> ConfigError:
        config = self.config
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return ConfigError(config.file, config.line_of("database.host"), "database.host",
                           f"cannot use PostgreSQL at {config.describe()}: {reason}")

    # -- use

    def connection(self) -> Any:
        """A pooled connection in autocommit mode, as a context manager (use
        ``conn.transaction()`` for several statements)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the PostgreSQL store is closed")
        return pool.connection(timeout=self.config.timeout)

    def version(self, component: str) -> int:
        """The change counter of ``component`` now."""
        with self.connection() as conn:
            row = conn.execute("SELECT version FROM store_changes WHERE component = %s",
                               (component,)).fetchone()
        return row[0] if row else 0

    def watch(self, component: str, interval: float, callback: Callable[[int], None]) -> None:
        """Call ``callback(version)`` from the watcher thread when the counter of
        ``component`` is read, at least every ``interval`` seconds."""
        with self._lock:
            self._watchers.setdefault(component, []).append((interval, callback))
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._watch, args=(self._stop,),
                                                name="chainmail-postgres-watch", daemon=True)
                self._thread.start()

    def unwatch(self, callback: Callable[[int], None]) -> None:
        with self._lock:
            for entries in self._watchers.values():
                entries[:] = [e for e in entries if e[1] != callback]

    def _watch(self, stop: threading.Event) -> None:
        failing = False
        while True:
            with self._lock:
                intervals = [i for entries in self._watchers.values() for i, _ in entries]
            if stop.wait(min(intervals, default=1.0)):
                return
            try:
                with self.connection() as conn:
                    rows = conn.execute("SELECT component, version FROM store_changes").fetchall()
            except Exception as exc:   # the database is away: keep serving from memory
                if stop.is_set():
                    return
                if not failing:
                    log.warning("PostgreSQL %s: cannot read store changes, serving the last "
                                "known domains, users and mappings: %s",
                                self.config.describe(), " ".join(str(exc).split()))
                failing = True
                continue
            if failing:
                log.info("PostgreSQL %s: reachable again", self.config.describe())
                failing = False
            with self._lock:
                calls = [(cb, version) for component, version in rows
                         for _, cb in self._watchers.get(component, ())]
            for callback, version in calls:
                try:
                    callback(version)
                except Exception:
                    log.exception("PostgreSQL %s: reloading a store failed",
                                  self.config.describe())
