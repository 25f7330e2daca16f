"""Mailbox quotas in PostgreSQL: the ``mailbox_quota`` table of ``postgres.properties``'s
database, shared by every node, as a :class:`~chainmail.store.mailbox.QuotaTable`.

Deliveries read the quotas from memory (a copy reloaded by the change watcher when any
node changes the table), so the database is not asked per mail and an outage leaves the
last known quotas in force; usage is still counted in the Maildirs."""

from __future__ import annotations

from typing import Any

from ..mailbox import QuotaTable
from .cache import PostgresCache
from .pool import Database

__all__ = ["PostgresQuotas"]


class PostgresQuotas(PostgresCache, QuotaTable):
    """The quotas; the behaviour of :class:`~chainmail.store.mailbox.SqliteQuotas`."""

    component = "quotas"

    def __init__(self, database: Database, *, refresh_interval: float = 1.0) -> None:
        self._quotas: dict[str, int] = {}
        self._attach(database, refresh_interval)

    def current(self) -> dict[str, int]:
        self._refresh()
        return self._quotas

    def get(self, user: str) -> int | None:
        rows = self._rows("SELECT max_bytes FROM mailbox_quota WHERE username = %s", (user,))
        return int(rows[0][0]) if rows else None

    def set(self, user: str, max_bytes: int | None) -> None:
        if max_bytes is None:
            self._execute("DELETE FROM mailbox_quota WHERE username = %s", (user,))
            return
        if max_bytes < 0:
            raise ValueError("quota must be >= 0 bytes")
        self._execute("INSERT INTO mailbox_quota (username, max_bytes) VALUES (%s, %s)"
                      " ON CONFLICT (username) DO UPDATE SET max_bytes = excluded.max_bytes",
                      (user, int(max_bytes)))

    def all(self) -> dict[str, int]:
        return {user: int(limit) for user, limit in self._rows(
            "SELECT username, max_bytes FROM mailbox_quota ORDER BY username COLLATE \"C\"")}

    def _load(self, conn: Any) -> None:
        rows = conn.execute("SELECT username, max_bytes FROM mailbox_quota").fetchall()
        self._quotas = {user: int(limit) for user, limit in rows}
