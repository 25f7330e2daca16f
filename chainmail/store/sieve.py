"""Users' Sieve scripts, in the shared SQLite database (``<var>/chainmail.db``).

As in ManageSieve (RFC 5804), a user has any number of named scripts and at most one
active one; the ``Sieve`` mailet runs the active script.  Scripts live in the database
(table ``sieve_script``), not in files, so that every worker process sees an upload at
once and an upload or an activation is one transaction.  The store keeps what it is
given: checking the script is the caller's (``chainmail sieve put`` compiles it first).

Every method blocks: call it from a worker thread in trio code.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from chainmail.store import sqlite as _sqlite

__all__ = ["SieveStore", "StoredScript", "script_name_problem"]

COMPONENT = "sieve"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE sieve_script ("
        " username TEXT NOT NULL,"
        " name TEXT NOT NULL,"
        " script TEXT NOT NULL,"
        " active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),"
        " updated REAL NOT NULL,"
        " PRIMARY KEY (username, name)"
        ") WITHOUT ROWID",
        "CREATE UNIQUE INDEX sieve_script_one_active ON sieve_script (username)"
        " WHERE active = 1",
    ),
]
NAME_MAX = 128


@dataclass(frozen=True)
class StoredScript:
    username: str
    name: str
    script: str
    active: bool
    updated: float


def script_name_problem(name: str) -> str | None:
    """What is wrong with a script name (RFC 5804 §1.6: no control characters), or
    ``None``."""
    if not name or len(name) > NAME_MAX:
        return f"a script name has 1 to {NAME_MAX} characters"
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029" for ch in name):
        return "a script name has no control characters"
    return None


class SieveStore:
    """The ``sieve_script`` table of ``db_path``."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        self._conn = _sqlite.open_migrated(db_path, COMPONENT, MIGRATIONS)

    @staticmethod
    def _user(username: str) -> str:
        return username.strip().lower()

    def put(self, username: str, name: str, script: str) -> None:
        """Add or replace the script ``name`` of the user (its activation is kept)."""
        problem = script_name_problem(name)
        if problem:
            raise ValueError(problem)
        with self._lock:
            self._conn.execute(
                "INSERT INTO sieve_script (username, name, script, active, updated)"
                " VALUES (?, ?, ?, 0, ?) ON CONFLICT (username, name) DO UPDATE SET"
                " script = excluded.script, updated = excluded.updated",
                (self._user(username), name, script, time.time()))

    def get(self, username: str, name: str) -> StoredScript | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT username, name, script, active, updated FROM sieve_script"
                " WHERE username = ? AND name = ?", (self._user(username), name)).fetchone()
        return None if row is None else StoredScript(row[0], row[1], row[2], bool(row[3]), row[4])

    def list(self, username: str) -> list[StoredScript]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT username, name, script, active, updated FROM sieve_script"
                " WHERE username = ? ORDER BY name", (self._user(username),)).fetchall()
        return [StoredScript(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def active(self, username: str) -> StoredScript | None:
        """The user's active script, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT username, name, script, active, updated FROM sieve_script"
                " WHERE username = ? AND active = 1", (self._user(username),)).fetchone()
        return None if row is None else StoredScript(row[0], row[1], row[2], True, row[4])

    def activate(self, username: str, name: str | None) -> bool:
        """Make ``name`` the active script (``None``: none is); False if there is no such
        script."""
        user = self._user(username)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if name is not None and self._conn.execute(
                        "SELECT 1 FROM sieve_script WHERE username = ? AND name = ?",
                        (user, name)).fetchone() is None:
                    self._conn.execute("ROLLBACK")
                    return False
                self._conn.execute("UPDATE sieve_script SET active = 0 WHERE username = ?"
                                   " AND active = 1", (user,))
                if name is not None:
                    self._conn.execute("UPDATE sieve_script SET active = 1 WHERE username = ?"
                                       " AND name = ?", (user, name))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return True

    def delete(self, username: str, name: str) -> bool:
        """Remove the script; False if there is none.  The active script may be removed
        too (the user then has none active)."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM sieve_script WHERE username = ? AND name = ?",
                                     (self._user(username), name))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SieveStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
