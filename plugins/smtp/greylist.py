"""Greylisting under James's ``JDBCGreylistHandler`` name and parameters, kept in the shared
SQLite database (``<var>/chainmail.db``) so that every worker process sees the same triplets,
or, when ``conf/postgres.properties`` exists, in PostgreSQL so that every node does
(:mod:`chainmail.store.postgres.greylist`).

A real mail server retries a temporary refusal; most spam software does not.  The first
RCPT of a (client network, sender, recipient) triplet is refused with 451; a retry after
``tempBlockTime`` passes and whitelists the triplet for ``autoWhiteListLifeTime``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from chainmail.config.errors import ConfigError
from chainmail.config.netmatch import NetworkSet
from chainmail.protocol.replies import R, Reply
from chainmail.remote.config import DelayError, parse_duration_ms
from chainmail.store import sqlite as _sqlite
from chainmail.store.postgres.greylist import GreylistUnavailable
from chainmail.verdict import HookResult

__all__ = ["JDBCGreylistHandler", "SharedTable"]

log = logging.getLogger("chainmail.greylist")

COMPONENT = "greylist"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE greylist (ip TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,"
        " create_time REAL NOT NULL, count INTEGER NOT NULL,"
        " PRIMARY KEY (ip, sender, recipient)) WITHOUT ROWID",
    ),
]

#: James's reply to a new or too early triplet (AbstractGreylistHandler).
TEMP_REJECTED = Reply.of(451, "Temporary rejected: Reconnect to deliver later", "4.4.3")

#: How often (seconds) expired rows are swept; James sweeps on a random 1 % of checks.
CLEANUP_INTERVAL = 60.0


class SharedTable:
    """One store's connection to the shared database of the server's stores, opened at the
    first use (``check-config`` builds handlers without ever creating a database)."""

    def __init__(self, component: str, migrations: list[tuple[str, ...]]) -> None:
        self.component = component
        self.migrations = migrations
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def connection(self, server) -> sqlite3.Connection:
        """The open connection (call with :attr:`lock` held)."""
        if self._conn is None:
            conn = _sqlite.connect(database_path(server))
            _sqlite.migrate(conn, self.component, self.migrations)
            self._conn = conn
        return self._conn


def database_path(server) -> str:
    """``<var>/chainmail.db``: the var directory is the one holding the server's spool."""
    spool = getattr(server, "spool", None)
    if spool is None:
        raise RuntimeError("this server has no state directory (no spool)")
    return os.path.join(os.path.dirname(spool.root), _sqlite.DB_FILENAME)


def duration_ms(config, key: str, default: str) -> int:
    """A James ``TimeConverter`` value (``1 hour``, ``4 hours``, ``36 days``, bare = ms)."""
    text = config.get(key) or default
    try:
        return parse_duration_ms(text)
    except DelayError as exc:
        raise config.error(key, str(exc)) from None


class JDBCGreylistHandler:
    """Refuse the first RCPT of an unknown (network, sender, recipient) triplet with 451 and
    accept its retry after ``tempBlockTime`` (default ``1 hour``); a passed triplet stays
    whitelisted ``autoWhiteListLifeTime`` (``36 days``) after it was last seen, a refused
    one is forgotten after ``unseenLifeTime`` (``4 hours``).  The network is the client's
    IPv4 /24 (a sender's pool of outgoing servers retries from another address of it) or its
    full IPv6 address.  Clients in ``whitelistedNetworks`` and relaying or authenticated
    clients are never greylisted.  A passing triplet is DECLINED, never OK: greylisting
    only refuses.  ``repositoryPath`` and ``sqlFile`` (James's JDBC settings) are accepted
    and ignored: the triplets live in chainmail's own database.

    Errors: an error of the embedded database lets the recipient through, as James does
    for any error of its greylist lookup.  PostgreSQL being unreachable answers
    ``451 4.3.0`` instead: an outage of the shared database is expected to pass, and
    letting every client through on every node meanwhile would switch greylisting off
    for the whole cluster."""

    parameters = ("tempBlockTime", "autoWhiteListLifeTime", "unseenLifeTime",
                  "whitelistedNetworks", "repositoryPath", "sqlFile")
    runs_on = "thread"   # a write to the database per RCPT, with fsync

    def configure(self, config):
        self.temp_block = duration_ms(config, "tempBlockTime", "1 hour") / 1000
        self.whitelist_life = duration_ms(config, "autoWhiteListLifeTime", "36 days") / 1000
        self.unseen_life = duration_ms(config, "unseenLifeTime", "4 hours") / 1000
        text = config.get("whitelistedNetworks") or ""
        self.whitelisted = NetworkSet(text, file=config.file, line=config.line,
                                      element="whitelistedNetworks")
        for warning in self.whitelisted.warnings:
            raise config.error("whitelistedNetworks", warning.message)
        self.table = SharedTable(COMPONENT, MIGRATIONS)
        self._next_cleanup = 0.0
        self.postgres = handler_postgres(config)
        self._shared: Any = None   # the PostgreSQL triplets, once opened
        self._shared_pid = 0
        self._outage = False   # logged once per outage

    def on_rcpt(self, session, sender, recipient):
        if session.relaying_allowed or session.auth_user is not None:
            return None
        if self.whitelisted.contains(session.remote_ip):
            return None
        try:
            passed = self.check(session.server, triplet_network(session.remote_ip),
                                "" if sender is None else str(sender), str(recipient))
        except sqlite3.Error:
            log.exception("%s: greylist lookup failed; the recipient is not greylisted", session)
            return None   # as James: a database problem does not refuse mail
        except GreylistUnavailable as exc:
            if not self._outage:
                self._outage = True
                log.warning("%s: greylisting cannot reach PostgreSQL, answering 451 until it "
                            "is back: %s", session, exc)
            return HookResult.reply(R.unable_to_process)
        if self._outage:
            self._outage = False
            log.info("greylisting: PostgreSQL reachable again")
        return None if passed else HookResult.reply(TEMP_REJECTED)

    def check(self, server, network: str, sender: str, recipient: str,
              now: float | None = None) -> bool:
        """Record this attempt; whether the triplet may pass.  With PostgreSQL,
        ``GreylistUnavailable`` when the database does not answer."""
        if self.postgres is not None:
            if self._shared is None or self._shared_pid != os.getpid():
                self._shared = shared_store(self.postgres, "greylist", GreylistUnavailable)
                self._shared_pid = os.getpid()
            return self._shared.check(network, sender.lower(), recipient.lower(), now=now,
                                      temp_block=self.temp_block,
                                      whitelist_life=self.whitelist_life,
                                      unseen_life=self.unseen_life)
        now = time.time() if now is None else now
        key = (network, sender.lower(), recipient.lower())
        with self.table.lock:
            conn = self.table.connection(server)
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT create_time, count FROM greylist WHERE ip = ? AND sender = ?"
                    " AND recipient = ?", key).fetchone()
                if row is not None:
                    created, count = row
                    if now - created > (self.whitelist_life if count else self.unseen_life):
                        row = None   # expired: seen as new
                if row is None:
                    conn.execute(
                        "INSERT OR REPLACE INTO greylist (ip, sender, recipient, create_time,"
                        " count) VALUES (?, ?, ?, ?, 0)", (*key, now))
                    passed = False
                elif count == 0 and now < created + self.temp_block:
                    passed = False
                else:
                    conn.execute(
                        "UPDATE greylist SET create_time = ?, count = count + 1 WHERE ip = ?"
                        " AND sender = ? AND recipient = ?", (now, *key))
                    passed = True
                if now >= self._next_cleanup:
                    self._cleanup(conn, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return passed

    def _cleanup(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM greylist WHERE count = 0 AND create_time < ?",
                     (now - self.unseen_life,))
        conn.execute("DELETE FROM greylist WHERE count > 0 AND create_time < ?",
                     (now - self.whitelist_life,))
        self._next_cleanup = now + CLEANUP_INTERVAL


def handler_postgres(config) -> Any:
    """Where a handler keeps its state: the ``PostgresConfig`` of the handler's
    ``conf/postgres.properties`` (connected at the first RCPT), None without it, or the
    ``ConfigError`` of a bad file.  The same switch as the account stores': a bad file is
    reported by them, and stops the start; here it only keeps the state from ever falling
    back to SQLite."""
    if not config.file:
        return None
    from chainmail.store.postgres.config import load_postgres
    try:
        return load_postgres(os.path.dirname(os.path.abspath(config.file)))
    except ConfigError as exc:
        return exc


_shared_lock = threading.Lock()
_shared: dict[tuple, Any] = {}   # (pid, kind, database) -> its store (PostgresGreylist ...)
_failed: dict[tuple, tuple[float, str]] = {}   # (pid, kind, database) -> (retry at, why)

#: Seconds after a failed opening during which RCPTs are answered without trying again
#: (one connection attempt at a time, not one per waiting RCPT).
RETRY_OPEN = 1.0


def shared_store(postgres: Any, kind: str, unavailable: type[Exception]) -> Any:
    """The PostgreSQL store ``kind`` of handler state (``greylist``, ``spamtrap``: the
    backend's method of that name) of this process for ``postgres`` (a ``PostgresConfig``,
    or the ``ConfigError`` of a bad ``postgres.properties``), opened at the first use and
    again after a failed opening; ``unavailable`` is raised when that fails.

    Handlers have no end of life: one store (one pool) per process serves every handler
    and every configuration generation using the same database, so reloads open nothing
    new.  The first use of another database (a reload that changed the file) closes the
    older one's store; an old session still using it then gets ``451 4.3.0``."""
    if isinstance(postgres, ConfigError):
        raise unavailable(str(postgres))
    from chainmail.store.backends import PostgresBackend
    pid = os.getpid()
    key = (pid, kind, postgres.conninfo(), postgres.pool_initial_size, postgres.pool_max_size)
    with _shared_lock:
        store = _shared.get(key)
        if store is not None:
            return store
        retry_at, why = _failed.get(key, (0.0, ""))
        if time.monotonic() < retry_at:
            raise unavailable(why)
        try:
            store = getattr(PostgresBackend(postgres), kind)()
        except ConfigError as exc:   # unreachable or refusing
            _failed[key] = (time.monotonic() + RETRY_OPEN, exc.message)
            raise unavailable(exc.message) from exc
        _failed.pop(key, None)
        for old in list(_shared):
            if old[0] == pid and old[1] == kind:
                _shared.pop(old).close()
            elif old[0] != pid:   # a parent's, inherited by fork: not this process's sockets
                del _shared[old]
        _shared[key] = store
        return store


def triplet_network(ip: str) -> str:
    """The client part of a triplet: an IPv4 address's /24, else the address itself."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(ipaddress.ip_network(f"{address}/24", strict=False))
    return str(address)
