"""The shared SQLite database of the embedded stores (``<var>/chainmail.db``).

Every store (domains, users, aliases, ...) opens its own connection with
:func:`connect` and brings its tables up to date with :func:`migrate`, which
keeps one row per store in ``schema_version``::

    CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)

A store's migrations are a list whose item *n* (0-based) takes the store from
version *n* to *n + 1*; each item is a sequence of SQL statements.  Migrations
run in one ``BEGIN IMMEDIATE`` transaction, so two processes starting at once
apply them exactly once.  Append to a store's list; never edit a released step.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Sequence

__all__ = ["DB_FILENAME", "connect", "migrate", "schema_version"]

DB_FILENAME = "chainmail.db"

Migration = Sequence[str]


def connect(db_path: str | os.PathLike[str], *, timeout: float = 5.0) -> sqlite3.Connection:
    """Open ``db_path`` (creating its directory) in WAL mode, autocommit.

    ``synchronous=FULL``: a committed administrative change survives a power
    loss.  Writers wait up to ``timeout`` seconds for another process's lock.
    The connection may be used from several threads; callers serialise use.
    """
    path = os.fspath(db_path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal" and path != ":memory:":
            raise sqlite3.OperationalError(f"{path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def open_migrated(db_path: str | os.PathLike[str], component: str,
                  migrations: Sequence[Migration]) -> sqlite3.Connection:
    """:func:`connect`, then bring the schema of ``component`` up to date (the connection is
    closed again if that fails)."""
    conn = connect(db_path)
    try:
        migrate(conn, component, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection, component: str) -> int:
    """The schema version of ``component`` (0 if it has no tables yet)."""
    try:
        row = conn.execute(
            "SELECT version FROM schema_version WHERE component = ?", (component,)
        ).fetchone()
    except sqlite3.OperationalError:  # no schema_version table yet
        return 0
    return row[0] if row else 0


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations of ``component`` that are not applied yet; return its version.

    A database newer than this code (a version above ``len(migrations)``) is
    refused rather than silently used.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        current = schema_version(conn, component)
        if current > len(migrations):
            raise RuntimeError(
                f"database schema of {component!r} is version {current}, newer than this "
                f"chainmail knows ({len(migrations)}); upgrade chainmail"
            )
        for statements in migrations[current:]:
            for statement in statements:
                conn.execute(statement)
        if current < len(migrations):
            conn.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(migrations)),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(migrations)


class RefreshedCache:
    """Mixin: an in-memory copy of a store's table, reloaded when another connection (the
    command line, another process) changed the database.  ``PRAGMA data_version`` is asked
    at most every ``refresh_interval`` seconds, so lookups made on the event loop per RCPT
    stay in memory while outside changes are seen within that bound.

    The class sets ``_conn``, ``_lock`` and ``refresh_interval`` and implements ``_load``."""

    _data_version: int | None = None
    _next_check: float = 0.0

    def _open(self, db_path, component: str, migrations, refresh_interval: float) -> None:
        """Connect, bring the schema of ``component`` up to date, load the table."""
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._conn = connect(db_path)
        try:
            migrate(self._conn, component, migrations)
            with self._lock:
                self._reload_locked()
        except BaseException:
            self._conn.close()
            raise

    def _refresh(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            with self._lock:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:
                    self._reload_locked()
                self._next_check = now + self.refresh_interval

    def _reload_locked(self) -> None:
        conn = self._conn
        self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        self._load(conn)
        self._next_check = time.monotonic() + self.refresh_interval

    def _load(self, conn) -> None:  # pragma: no cover - each store defines it
        """Read the table into memory (called with ``_lock`` held)."""
        raise TypeError(f"{type(self).__name__} must define _load()")
