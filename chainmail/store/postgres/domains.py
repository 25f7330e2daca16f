"""Local domains (James's DomainList) in PostgreSQL: :class:`~chainmail.store.domains.DomainStore`
with its table in the ``domains`` table of ``postgres.properties``'s database."""

from __future__ import annotations

from typing import Any, Iterable

from ..domains import DomainStore, normalize_domain
from .cache import PostgresCache
from .pool import Database

__all__ = ["PostgresDomainStore"]


class PostgresDomainStore(PostgresCache, DomainStore):
    """The local domains; the public API and behaviour of :class:`DomainStore`."""

    component = "domains"

    def __init__(self, database: Database, *, default_domain: str = "localhost",
                 refresh_interval: float = 1.0) -> None:
        self.default_domain = normalize_domain(default_domain)
        self._attach(database, refresh_interval)

    def list(self) -> list[str]:
        """Every local domain, sorted."""
        return [name for (name,) in self._rows("SELECT name FROM domains ORDER BY name")]

    def add(self, domain: str) -> bool:
        """Add ``domain``; ``False`` if it was already there.  ``ValueError`` if invalid."""
        name = normalize_domain(domain)
        return self._execute("INSERT INTO domains (name) VALUES (%s) ON CONFLICT (name)"
                             " DO NOTHING", (name,)) == 1

    def remove(self, domain: str) -> bool:
        """Remove ``domain``; ``False`` if it was not there."""
        try:
            name = normalize_domain(domain)
        except ValueError:
            return False
        return self._execute("DELETE FROM domains WHERE name = %s", (name,)) == 1

    def seed(self, domains: Iterable[str]) -> None:
        """Add the configured domains and the default domain (idempotent, all validated
        before anything is written)."""
        names = {normalize_domain(d) for d in domains}
        names.add(self.default_domain)
        with self._lock:
            with self.database.connection() as conn, conn.transaction():
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO domains (name) VALUES (%s)"
                                    " ON CONFLICT (name) DO NOTHING",
                                    [(n,) for n in sorted(names)])
            self._reload_locked()

    def _load(self, conn: Any) -> None:
        self._domains = frozenset(name for (name,) in conn.execute("SELECT name FROM domains"))
