"""The PostgreSQL side of the stores' in-memory model (``sqlite.RefreshedCache``).

A store keeps its table in memory; lookups read only that.  With ``refresh_interval``
above 0 the :class:`~.pool.Database` watcher reloads it within that bound after another
process changed the table; with 0 every lookup asks the change counter first (one round
trip: for tests and one-shot commands, never for a server).  A store's own changes are
reloaded at once.
"""

from __future__ import annotations

import threading
from typing import Any

from .pool import Database

__all__ = ["PostgresCache"]


class PostgresCache:
    """Mixin placed before the SQLite store class it serves; the store names its
    ``component`` (its ``store_changes`` row) and implements ``_load(conn)``."""

    component = ""
    refresh_interval: float
    database: Database
    _version: int | None = None
    _closed = False

    def _attach(self, database: Database, refresh_interval: float) -> None:
        self.database = database
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        database.acquire()
        try:
            with self._lock:
                self._reload_locked()
            if refresh_interval > 0:
                database.watch(self.component, refresh_interval, self._changed)
        except BaseException:
            database.release()
            raise

    def _refresh(self) -> None:
        if self.refresh_interval <= 0:
            self._changed(self.database.version(self.component))

    def _changed(self, version: int) -> None:
        if version != self._version:
            with self._lock:
                if version != self._version and not self._closed:
                    self._reload_locked()

    def _reload_locked(self) -> None:
        with self.database.connection() as conn:
            row = conn.execute("SELECT version FROM store_changes WHERE component = %s",
                               (self.component,)).fetchone()
            self._load(conn)   # read after the counter: at least as new as it says
        self._version = row[0] if row else 0

    def _load(self, conn: Any) -> None:  # pragma: no cover - each store defines it
        raise TypeError(f"{type(self).__name__} must define _load()")

    def _execute(self, query: str, params: Any = ()) -> int:
        """One statement on a pooled connection, then the store reloaded; its row count."""
        with self._lock:
            with self.database.connection() as conn:
                count = conn.execute(query, params).rowcount
            self._reload_locked()
        return count

    def _rows(self, query: str, params: Any = ()) -> list[tuple]:
        with self.database.connection() as conn:
            return conn.execute(query, params).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.database.unwatch(self._changed)
        self.database.release()
