"""SpamTrapHandler's block list in PostgreSQL: the ``spamtrap_blocks`` table of
``postgres.properties``'s database, so that a client that wrote to a trap address through
one node is refused by every node until its block ends.

Times are the database's clock.  Nothing is cached: while the database is away the calls
raise :class:`SpamTrapUnavailable` and the handler decides (it answers 451).
"""

from __future__ import annotations

from .pool import Database

__all__ = ["PostgresSpamTrap", "SpamTrapUnavailable"]


class SpamTrapUnavailable(RuntimeError):
    """The database did not answer: whether the client is blocked is unknown."""


class PostgresSpamTrap:
    """The block list over ``database`` (opened here, released by :meth:`close`).
    Thread-safe and blocking."""

    def __init__(self, database: Database) -> None:
        self.database = database
        database.acquire()
        self._closed = False

    def blocked(self, ip: str) -> bool:
        """Whether ``ip`` is blocked now (an expired block is deleted on the way)."""
        import psycopg
        try:
            with self.database.connection() as conn, conn.transaction():
                row = conn.execute("SELECT blocked_until > statement_timestamp() FROM "
                                   "spamtrap_blocks WHERE ip = %s", (ip,)).fetchone()
                if row is not None and not row[0]:
                    conn.execute("DELETE FROM spamtrap_blocks WHERE ip = %s AND "
                                 "blocked_until <= statement_timestamp()", (ip,))
        except (psycopg.Error, RuntimeError) as exc:
            raise SpamTrapUnavailable(" ".join(str(exc).split()) or type(exc).__name__) from exc
        return bool(row and row[0])

    def block(self, ip: str, seconds: float) -> None:
        """Block ``ip`` for ``seconds`` from now."""
        import psycopg
        try:
            with self.database.connection() as conn:
                conn.execute("INSERT INTO spamtrap_blocks (ip, blocked_until) VALUES "
                             "(%s, statement_timestamp() + make_interval(secs => %s)) "
                             "ON CONFLICT (ip) DO UPDATE SET blocked_until = "
                             "EXCLUDED.blocked_until", (ip, seconds))
        except (psycopg.Error, RuntimeError) as exc:
            raise SpamTrapUnavailable(" ".join(str(exc).split()) or type(exc).__name__) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.release()
