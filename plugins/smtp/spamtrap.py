"""James's ``fastfail.SpamTrapHandler``: a client that writes to a spam trap address is a
spammer; refuse every recipient it gives for ``blockTime`` milliseconds.

The block list is kept in the shared SQLite database (``<var>/chainmail.db``), so a client
blocked by one worker process is refused by all of them, and on its next connection; with
``conf/postgres.properties``, in PostgreSQL, so that every node refuses it
(:mod:`chainmail.store.postgres.spamtrap`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from chainmail.protocol.replies import R, Reply
from chainmail.store.postgres.spamtrap import SpamTrapUnavailable
from chainmail.verdict import HookResult

from .greylist import SharedTable, handler_postgres, shared_store

__all__ = ["SpamTrapHandler"]

log = logging.getLogger("chainmail.spamtrap")

COMPONENT = "spamtrap"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE spamtrap_blocks (ip TEXT PRIMARY KEY NOT NULL,"
        " blocked_until REAL NOT NULL) WITHOUT ROWID",
    ),
]

#: James answers a blocked client with a bare DENY (``554 Email rejected``).
BLOCKED = Reply.of(554, "Email rejected", "5.7.1")


class SpamTrapHandler:
    """Trap addresses are given as repeated ``spamTrapRecip`` elements (James's
    documentation) or as ``spamTrapRecips`` (a comma-separated list or ``<rcpt>`` children);
    at least one is required.  James's own code refuses the configuration when one *is*
    given (its test is inverted); chainmail does what the documentation means.  The RCPT to
    the trap is itself refused, and so is every later RCPT from the client's IP address
    until ``blockTime`` ms (default 4320000, 72 minutes) have passed."""

    parameters = ("spamTrapRecip", "spamTrapRecips", "blockTime")
    runs_on = "thread"   # reads, and on a trap hit writes, the shared database

    def configure(self, config):
        traps = config.get_list("spamTrapRecip") + config.get_list("spamTrapRecips")
        for key in config.params:
            if key.startswith("spamTrapRecips."):
                traps += config.get_list(key)
        if not traps:
            raise config.error("spamTrapRecip", "is required; add <spamTrapRecip>trap@example.com"
                                                "</spamTrapRecip> (one per trap address)")
        self.traps = frozenset(t.strip("<>").lower() for t in traps)
        self.block_seconds = config.get_int("blockTime", 4320000) / 1000
        self.table = SharedTable(COMPONENT, MIGRATIONS)
        # conf/postgres.properties: the block list of every node (as greylisting's triplets)
        self.postgres = handler_postgres(config)

    def on_rcpt(self, session, recipient):
        ip = session.remote_ip
        try:
            if self.blocked(session.server, ip):
                return HookResult.reply(BLOCKED)
            if str(recipient).lower() in self.traps:
                log.info("%s: %s wrote to the spam trap %s; blocked for %g s", session, ip,
                         recipient, self.block_seconds)
                self.block(session.server, ip)
                return HookResult.reply(BLOCKED)
        except sqlite3.Error:
            log.exception("%s: spam trap block list unavailable", session)
        except SpamTrapUnavailable as exc:   # the shared list: unknown whether it is blocked
            log.warning("%s: spam trap block list in PostgreSQL unavailable: %s", session, exc)
            return HookResult.reply(R.unable_to_process)
        return None

    def _shared(self) -> Any:
        return shared_store(self.postgres, "spamtrap", SpamTrapUnavailable)

    def blocked(self, server, ip: str, now: float | None = None) -> bool:
        """Whether ``ip`` is blocked now (an expired block is removed)."""
        if self.postgres is not None:
            return self._shared().blocked(ip)
        now = time.time() if now is None else now
        with self.table.lock:
            conn = self.table.connection(server)
            row = conn.execute("SELECT blocked_until FROM spamtrap_blocks WHERE ip = ?",
                               (ip,)).fetchone()
            if row is None:
                return False
            if row[0] > now:
                return True
            conn.execute("DELETE FROM spamtrap_blocks WHERE ip = ? AND blocked_until <= ?",
                         (ip, now))
            return False

    def block(self, server, ip: str, now: float | None = None) -> None:
        """Block ``ip`` for ``blockTime`` from ``now``."""
        if self.postgres is not None:
            self._shared().block(ip, self.block_seconds)
            return
        now = time.time() if now is None else now
        with self.table.lock:
            conn = self.table.connection(server)
            conn.execute("INSERT OR REPLACE INTO spamtrap_blocks (ip, blocked_until)"
                         " VALUES (?, ?)", (ip, now + self.block_seconds))
