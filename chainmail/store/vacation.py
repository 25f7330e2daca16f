"""Users' vacation settings and the register of who has been answered, in the shared
SQLite database (``<var>/chainmail.db``).

``vacation``: one row per user (enabled, the dates it runs between, subject, text and
HTML bodies), read by the ``VacationMailet``.  ``vacation_notice``: for each user, sender
and handle, until when no further reply goes to that sender (RFC 3834 §2: at most one
reply per period); both the ``VacationMailet`` and Sieve's ``vacation`` use it, each with
its own handle.  :meth:`VacationStore.claim_notice` checks and records in one statement,
so two worker processes delivering two messages of one sender send one reply.  Changing
or clearing the settings forgets who was answered: the new absence answers everyone once.

Every method blocks: call it from a worker thread in trio code.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime

from chainmail.store import sqlite as _sqlite

__all__ = ["Vacation", "VacationStore"]

COMPONENT = "vacation"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE vacation ("
        " username TEXT PRIMARY KEY NOT NULL,"
        " enabled INTEGER NOT NULL DEFAULT 0 CHECK (enabled IN (0, 1)),"
        " from_date REAL,"
        " to_date REAL,"
        " subject TEXT,"
        " text_body TEXT,"
        " html_body TEXT"
        ") WITHOUT ROWID",
        "CREATE TABLE vacation_notice ("
        " username TEXT NOT NULL,"
        " recipient TEXT NOT NULL,"
        " handle TEXT NOT NULL,"
        " expires REAL NOT NULL,"
        " PRIMARY KEY (username, recipient, handle)"
        ") WITHOUT ROWID",
    ),
]
#: the ``handle`` of the ``VacationMailet``'s replies (Sieve's are the script's own)
MAILET_HANDLE = ""
_FIELDS = ("enabled", "from_date", "to_date", "subject", "text_body", "html_body")


@dataclass(frozen=True)
class Vacation:
    """A user's vacation: dates as epoch seconds (``None``: open)."""

    username: str
    enabled: bool = False
    from_date: float | None = None
    to_date: float | None = None
    subject: str | None = None
    text_body: str | None = None
    html_body: str | None = None

    def active_at(self, when: float) -> bool:
        """Enabled, and ``when`` is within the dates (James's ``isActiveAtDate``)."""
        if not self.enabled:
            return False
        if self.from_date is not None and when < self.from_date:
            return False
        return self.to_date is None or when <= self.to_date

    def describe(self) -> str:
        def date(value: float | None) -> str:
            return "-" if value is None else datetime.fromtimestamp(value).astimezone().isoformat()
        return (f"user:      {self.username}\nenabled:   {'yes' if self.enabled else 'no'}\n"
                f"from:      {date(self.from_date)}\nto:        {date(self.to_date)}\n"
                f"subject:   {self.subject or '-'}\ntext:      {self.text_body or '-'}\n"
                f"html:      {self.html_body or '-'}")


class VacationStore:
    """The ``vacation`` and ``vacation_notice`` tables of ``db_path``."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        self._conn = _sqlite.open_migrated(db_path, COMPONENT, MIGRATIONS)

    @staticmethod
    def _user(username: str) -> str:
        return username.strip().lower()

    def get(self, username: str) -> Vacation | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT username, " + ", ".join(_FIELDS) + " FROM vacation WHERE username = ?",
                (self._user(username),)).fetchone()
        if row is None:
            return None
        return Vacation(row[0], bool(row[1]), *row[2:])

    def set(self, vacation: Vacation) -> None:
        """Store ``vacation`` (replacing the user's) and forget who was answered."""
        vacation = replace(vacation, username=self._user(vacation.username))
        values = (vacation.username, int(vacation.enabled), vacation.from_date,
                  vacation.to_date, vacation.subject, vacation.text_body, vacation.html_body)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO vacation (username, " + ", ".join(_FIELDS) + ")"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
                    + ", ".join(f"{f} = excluded.{f}" for f in _FIELDS), values)
                self._conn.execute("DELETE FROM vacation_notice WHERE username = ? AND handle = ?",
                                   (vacation.username, MAILET_HANDLE))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def clear(self, username: str) -> bool:
        """Remove the user's vacation; False if there was none."""
        user = self._user(username)
        with self._lock:
            cur = self._conn.execute("DELETE FROM vacation WHERE username = ?", (user,))
            self._conn.execute("DELETE FROM vacation_notice WHERE username = ? AND handle = ?",
                               (user, MAILET_HANDLE))
        return cur.rowcount > 0

    def claim_notice(self, username: str, recipient: str, handle: str, seconds: float,
                     now: float | None = None) -> bool:
        """True (and recorded until ``now + seconds``) if no reply went to ``recipient``
        for this user and handle within the period; False if one did."""
        now = time.time() if now is None else now
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO vacation_notice (username, recipient, handle, expires)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (username, recipient, handle) DO UPDATE SET"
                " expires = excluded.expires WHERE vacation_notice.expires <= ?",
                (self._user(username), recipient.strip().lower(), handle, now + seconds, now))
            if cur.rowcount > 0 and now % 64 < 1:   # now and then, forget expired entries
                self._conn.execute("DELETE FROM vacation_notice WHERE expires <= ?", (now,))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> VacationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
