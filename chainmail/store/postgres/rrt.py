"""The recipient rewrite table in PostgreSQL: :class:`~chainmail.store.rrt.RecipientRewriteTable`
with its mappings in the ``rrt_mappings`` table of ``postgres.properties``'s database.
Resolution, loops and identities are the embedded store's (the same code, on the same
in-memory snapshot)."""

from __future__ import annotations

import builtins
from typing import Any

from ..domains import normalize_domain
from ..rrt import Mapping, RecipientRewriteTable, _Tables
from .cache import PostgresCache
from .pool import Database

__all__ = ["PostgresRecipientRewriteTable"]


class PostgresRecipientRewriteTable(PostgresCache, RecipientRewriteTable):
    """The mappings; the public API and behaviour of :class:`RecipientRewriteTable`."""

    component = "rrt"

    def __init__(self, database: Database, *, max_depth: int = 10,
                 refresh_interval: float = 1.0) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_depth = max_depth
        self._attach(database, refresh_interval)

    def list(self) -> builtins.list[Mapping]:
        """Every mapping, sorted by kind, source, target."""
        return [Mapping(*row) for row in self._rows(
            "SELECT kind, source, target FROM rrt_mappings ORDER BY kind, source, target")]

    def remove_domain_alias(self, source_domain: str) -> bool:
        try:
            src = normalize_domain(source_domain)
        except (ValueError, TypeError):
            return False
        return self._execute("DELETE FROM rrt_mappings WHERE kind = 'domain' AND source = %s",
                             (src,)) > 0

    def _add(self, kind: str, src: str, dst: str) -> bool:
        with self._lock:
            with self.database.connection() as conn, conn.transaction():
                # Writers one at a time, each seeing the others' rows; readers go on.
                conn.execute("LOCK TABLE rrt_mappings IN SHARE ROW EXCLUSIVE MODE")
                rows = [tuple(r) for r in conn.execute(
                    "SELECT kind, source, target FROM rrt_mappings").fetchall()]
                added = (kind, src, dst) not in rows
                if added:
                    self._check_new(rows, kind, src, dst)
                    conn.execute("INSERT INTO rrt_mappings (kind, source, target)"
                                 " VALUES (%s, %s, %s)", (kind, src, dst))
            self._reload_locked()
        return added

    def _remove(self, kind: str, source: str, target: str, normalize) -> bool:
        try:
            src, dst = normalize(source), normalize(target)
        except (ValueError, TypeError):
            return False
        return self._execute("DELETE FROM rrt_mappings WHERE kind = %s AND source = %s"
                             " AND target = %s", (kind, src, dst)) > 0

    def _load(self, conn: Any) -> None:
        rows = conn.execute("SELECT kind, source, target FROM rrt_mappings").fetchall()
        self._tables = _Tables(tuple(r) for r in rows)
