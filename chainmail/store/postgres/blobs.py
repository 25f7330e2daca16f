"""Message content in PostgreSQL, for the queues on RabbitMQ (James's blob store idea).

A queue entry whose content is at least ``blob.threshold`` bytes (``rabbitmq.properties``,
1 MiB by default) is published with a reference instead of its content; the content is a
row of ``mail_blobs``, keyed by the entry's spool id, committed (``synchronous_commit`` on)
before the entry is published.  The entry keeps its row while it waits, is retried later
or held; the row is deleted once the entry has left the queue (acknowledged after its
processing or delivery, or removed by the operator).  Large content so stays out of the
broker's memory and log, and is written once per entry.

A node that dies between acknowledging an entry and deleting its row leaves the row behind
(nothing refers to it any more; ``stored_at`` tells its age). No sweep deletes such rows by
age: an entry may wait (held, or retried for days) longer than any bound.
"""

from __future__ import annotations

from .pool import Database

__all__ = ["BlobStore", "open_blobs"]


class BlobStore:
    """The ``mail_blobs`` table of ``database`` (a :class:`Database` this store holds
    until :meth:`close`).  Blocking: call it from a worker thread."""

    def __init__(self, database: Database) -> None:
        self.database = database
        database.acquire()
        self._closed = False

    def put(self, key: str, content: bytes) -> None:
        """Store ``content`` under ``key``, durably (returns after the commit)."""
        with self.database.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute("INSERT INTO mail_blobs (blob_key, size, content) VALUES (%s, %s, %s)"
                         " ON CONFLICT (blob_key) DO NOTHING", (key, len(content), content))

    def get(self, key: str) -> bytes:
        """The content stored under ``key``; ``KeyError`` if there is none."""
        with self.database.connection() as conn:
            row = conn.execute("SELECT content FROM mail_blobs WHERE blob_key = %s",
                               (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def delete(self, key: str) -> None:
        with self.database.connection() as conn:
            conn.execute("DELETE FROM mail_blobs WHERE blob_key = %s", (key,))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.release()


def open_blobs(conf: str | None) -> BlobStore | None:
    """The blob store of ``<conf>/postgres.properties``; None without the file."""
    if conf is None:
        return None
    from .config import load_postgres
    config = load_postgres(conf)
    return BlobStore(Database(config)) if config is not None else None
