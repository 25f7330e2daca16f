"""Greylisting triplets in PostgreSQL: the ``greylist`` table of ``postgres.properties``'s
database, so that a client refused by one node passes on any node after ``tempBlockTime``.

The rules are the embedded store's (``JDBCGreylistHandler``, James's
``AbstractGreylistHandler``): a new triplet is refused; a refused one passes once
``temp_block`` has gone by, and is forgotten ``unseen_life`` after it was first seen; a
passed one stays whitelisted ``whitelist_life`` after it last passed.  Times are the
database's clock, one clock for every node.  Each check is one transaction holding the
triplet's row lock, so two nodes seeing the same triplet at once agree.  Nothing is cached:
while the database is away :meth:`PostgresGreylist.check` raises
:class:`GreylistUnavailable` and the caller decides (the handler answers 451).
"""

from __future__ import annotations

import logging
import threading
import time

from .pool import Database

__all__ = ["GreylistUnavailable", "PostgresGreylist"]

log = logging.getLogger("chainmail.greylist")

#: How often (seconds) one process deletes the expired triplets.
CLEANUP_INTERVAL = 60.0

# The triplet's row, created if new and locked either way; ``xmax = 0``: inserted now.
_TOUCH = """
WITH t AS (SELECT COALESCE(to_timestamp(%(now)s::float8), statement_timestamp()) AS at)
INSERT INTO greylist AS g (ip, sender, recipient, create_time, count)
SELECT %(ip)s, %(sender)s, %(recipient)s, t.at, 0 FROM t
ON CONFLICT (ip, sender, recipient) DO UPDATE SET count = g.count
RETURNING extract(epoch FROM g.create_time)::float8, g.count, g.xmax = 0,
          (SELECT extract(epoch FROM t.at)::float8 FROM t)
"""
_SET = ("UPDATE greylist SET create_time = to_timestamp(%s::float8), count = {count}"
        " WHERE ip = %s AND sender = %s AND recipient = %s")
_RENEW = _SET.format(count="0")
_PASS = _SET.format(count="count + 1")
_CLEANUP = ("DELETE FROM greylist WHERE (count = 0 AND create_time < to_timestamp(%s::float8))"
            " OR (count > 0 AND create_time < to_timestamp(%s::float8))")


class GreylistUnavailable(RuntimeError):
    """The database did not answer: whether the triplet may pass is unknown."""


class PostgresGreylist:
    """The triplets, over ``database`` (opened here, released by :meth:`close`).  The
    durations come with each check (seconds), so that handlers with their own
    parameters share one store and one pool.  Thread-safe and blocking."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._next_cleanup = 0.0   # monotonic
        self._closed = False
        database.acquire()

    def check(self, network: str, sender: str, recipient: str, *, temp_block: float,
              whitelist_life: float, unseen_life: float, now: float | None = None) -> bool:
        """Record this attempt of the triplet (already in its compared form); whether it
        may pass.  ``now`` (seconds since the epoch) replaces the database's clock."""
        import psycopg
        key = {"ip": network, "sender": sender, "recipient": recipient, "now": now}
        try:
            with self.database.connection() as conn, conn.transaction():
                created, count, inserted, at = conn.execute(_TOUCH, key).fetchone()
                where = (network, sender, recipient)
                if inserted:
                    passed = False
                elif at - created > (whitelist_life if count else unseen_life):
                    conn.execute(_RENEW, (at, *where))   # expired: seen as new
                    passed = False
                elif count == 0 and at < created + temp_block:
                    passed = False
                else:
                    conn.execute(_PASS, (at, *where))
                    passed = True
        except (psycopg.Error, RuntimeError) as exc:
            raise GreylistUnavailable(" ".join(str(exc).split()) or type(exc).__name__) from exc
        self._cleanup(at, whitelist_life, unseen_life)
        return passed

    def _cleanup(self, at: float, whitelist_life: float, unseen_life: float) -> None:
        """Delete the expired triplets, at most every ``CLEANUP_INTERVAL`` per process
        (James sweeps on a random 1 % of checks); a failure waits for the next round."""
        with self._lock:
            if time.monotonic() < self._next_cleanup:
                return
            self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL
        import psycopg
        try:
            with self.database.connection() as conn:
                conn.execute(_CLEANUP, (at - unseen_life, at - whitelist_life))
        except (psycopg.Error, RuntimeError) as exc:
            log.warning("greylist: deleting expired triplets failed: %s",
                        " ".join(str(exc).split()))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.database.release()
