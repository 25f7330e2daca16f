"""Mailboxes: the interface local delivery writes to, and its Maildir implementation.

The inbox of user ``U`` (a full, lower-cased address) is the Maildir ``<var>/mail/<U>/``
with ``cur/``, ``new/`` and ``tmp/``.  A delivery is written the Maildir way
(https://cr.yp.to/proto/maildir.html): a unique name in ``tmp/``, every byte written and
fsynced, then renamed into ``new/`` and ``new/`` fsynced.  A reader (Dovecot, mutt,
Python's :class:`mailbox.Maildir`) never sees a partial message, and once
:meth:`MaildirStore.deliver` has returned the message survives a crash.

Messages are stored with LF line ends (what Maildir readers expect); the file name carries
the size (``,S=<bytes>``) so that usage is computed without reading the files.  Content with
a bare CR or a NUL (which the SMTP and LMTP servers refuse, but a mailet may write) is first
put in the canonical form of :mod:`chainmail.protocol.lineends`: no CR is ever written, and
the header section ends where chainmail's own parser ends it.

Quota (optional, per user) lives in the ``mailbox_quota`` table of the shared SQLite
database.  A delivery that would take a user past the quota raises
:class:`QuotaExceededError`.  The check and the write are serialised per user within a
process; two processes delivering at once to the same user may overshoot by one message.

Every method blocks (file system, fsync): call it from a worker thread.
"""

from __future__ import annotations

import abc
import itertools
import os
import re
import socket
import threading
import time
from typing import Iterable

from chainmail.protocol.lineends import canonical
from chainmail.store import sqlite as _sqlite
from chainmail.store.durable import sync_dir as _fsync_dir

__all__ = ["MailboxStore", "MaildirStore", "QuotaExceededError", "MailboxError",
           "maildir_name_for"]

COMPONENT = "mailbox"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE mailbox_quota ("
        " username TEXT PRIMARY KEY NOT NULL,"
        " max_bytes INTEGER NOT NULL CHECK (max_bytes >= 0)"
        ") WITHOUT ROWID",
    ),
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_SIZE_RE = re.compile(r",S=(\d+)")
_counter = itertools.count()


class MailboxError(Exception):
    """A delivery failed for a reason that is not the disk's (bad user name, ...)."""


class QuotaExceededError(MailboxError):
    """The message does not fit in the user's quota (SMTP 552 5.2.2)."""

    def __init__(self, username: str, size: int, usage: int, quota: int) -> None:
        self.username, self.size, self.usage, self.quota = username, size, usage, quota
        super().__init__(f"552 5.2.2 Over quota: mailbox of {username} holds {usage} of "
                         f"{quota} bytes; the message needs {size}")


def maildir_name_for(username: str) -> str:
    """The directory name of a user's Maildir: the lower-cased username, with ``/``, ``%``,
    NUL and a leading dot percent-encoded so that it is always one plain directory name."""
    name = username.strip().lower()
    if not name:
        raise MailboxError("empty username")
    out = []
    for i, ch in enumerate(name):
        if ch in "/%\0\\" or (i == 0 and ch == "."):
            out.append("%%%02X" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)



def _makedirs_durable(path: str, mode: int = 0o700) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent that gained an entry."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _makedirs_durable(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    _fsync_dir(parent)


class MailboxStore(abc.ABC):
    """Where local delivery puts mail.  Implementations are thread-safe and blocking."""

    @abc.abstractmethod
    def deliver(self, username: str, content: bytes) -> str:
        """Durably add ``content`` to the inbox of ``username``; return the message's key.
        ``QuotaExceededError`` if it does not fit; ``OSError`` if the disk failed."""

    @abc.abstractmethod
    def usage(self, username: str) -> int:
        """Bytes used by the user's mailbox."""

    @abc.abstractmethod
    def get_quota(self, username: str) -> int | None:
        """The user's quota in bytes, ``None`` when unlimited."""

    @abc.abstractmethod
    def set_quota(self, username: str, max_bytes: int | None) -> None:
        """Set (or with ``None`` remove) the user's quota."""

    def close(self) -> None:
        pass


class MaildirStore(MailboxStore):
    """Maildirs under ``root`` (``<var>/mail``); quotas in ``db_path`` (optional)."""

    def __init__(self, root: str | os.PathLike[str], db_path: str | os.PathLike[str] | None = None,
                 *, hostname: str | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        host = hostname or socket.gethostname() or "localhost"
        # Maildir: "/" and ":" in the host name are replaced.
        self.hostname = host.replace("/", r"\057").replace(":", r"\072")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._conn = None
        if db_path is not None:
            self._conn = _sqlite.connect(db_path)
            try:
                _sqlite.migrate(self._conn, COMPONENT, MIGRATIONS)
            except BaseException:
                self._conn.close()
                raise

    # -- paths

    def path_for(self, username: str) -> str:
        """The Maildir of ``username``: ``<root>/<username>``."""
        return os.path.join(self.root, maildir_name_for(username))

    def ensure(self, username: str) -> str:
        """Create the user's Maildir (``cur``, ``new``, ``tmp``) if needed; return its path.

        A new Maildir is built under a temporary name and renamed into place, so a reader
        (an IMAP server, ``mailbox.Maildir``) never sees it without its three folders."""
        path = self.path_for(username)
        if os.path.isdir(os.path.join(path, "tmp")):
            return path
        _makedirs_durable(self.root)
        staging = os.path.join(self.root, f".new-{os.getpid()}-{os.urandom(6).hex()}")
        os.mkdir(staging, 0o700)
        try:
            for sub in ("cur", "new", "tmp"):
                os.mkdir(os.path.join(staging, sub), 0o700)
                _fsync_dir(staging)
            try:
                os.rename(staging, path)
            except OSError:
                if not os.path.isdir(os.path.join(path, "tmp")):
                    raise
                return path  # made by someone else meanwhile
            _fsync_dir(self.root)
        finally:
            if os.path.isdir(staging):
                for sub in ("cur", "new", "tmp"):
                    try:
                        os.rmdir(os.path.join(staging, sub))
                    except OSError:
                        pass
                try:
                    os.rmdir(staging)
                except OSError:
                    pass
        return path

    def _unique_name(self, size: int) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        rand = os.urandom(8).hex()
        return (f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{rand}.{self.hostname},S={size}")

    # -- delivery

    def deliver(self, username: str, content: bytes) -> str:
        data = content.replace(b"\r\n", b"\n")
        if b"\r" in data or b"\0" in data:
            data = canonical(content).replace(b"\r\n", b"\n")
        user = username.strip().lower()
        path = self.ensure(user)
        lock = self._lock_for(user)
        with lock:
            quota = self.get_quota(user)
            if quota is not None:
                used = self.usage(user)
                if used + len(data) > quota:
                    raise QuotaExceededError(user, len(data), used, quota)
            name = self._unique_name(len(data))
            tmp = os.path.join(path, "tmp", name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            os.close(fd)
            new_dir = os.path.join(path, "new")
            try:
                os.rename(tmp, os.path.join(new_dir, name))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            _fsync_dir(new_dir)
        return name

    def _lock_for(self, user: str) -> threading.Lock:
        with self._locks_lock:
            lock = self._locks.get(user)
            if lock is None:
                lock = self._locks[user] = threading.Lock()
            return lock

    # -- reading

    def list(self, username: str) -> list[str]:
        """Keys (file names) of the user's messages in ``new/`` and ``cur/``."""
        path = self.path_for(username)
        out = []
        for sub in ("new", "cur"):
            try:
                out.extend(sorted(os.listdir(os.path.join(path, sub))))
            except FileNotFoundError:
                pass
        return out

    def usage(self, username: str) -> int:
        path = self.path_for(username)
        total = 0
        for sub in ("new", "cur"):
            directory = os.path.join(path, sub)
            try:
                entries: Iterable[os.DirEntry] = os.scandir(directory)
            except FileNotFoundError:
                continue
            with entries:  # type: ignore[attr-defined]
                for entry in entries:
                    m = _SIZE_RE.search(entry.name)
                    if m:
                        total += int(m.group(1))
                    else:
                        try:
                            total += entry.stat().st_size
                        except FileNotFoundError:
                            pass
        return total

    # -- quota

    def get_quota(self, username: str) -> int | None:
        if self._conn is None:
            return None
        with self._db_lock:
            row = self._conn.execute("SELECT max_bytes FROM mailbox_quota WHERE username = ?",
                                     (username.strip().lower(),)).fetchone()
        return None if row is None else int(row[0])

    def set_quota(self, username: str, max_bytes: int | None) -> None:
        if self._conn is None:
            raise MailboxError("no database: quotas are not available")
        user = username.strip().lower()
        with self._db_lock:
            if max_bytes is None:
                self._conn.execute("DELETE FROM mailbox_quota WHERE username = ?", (user,))
            else:
                if max_bytes < 0:
                    raise ValueError("quota must be >= 0 bytes")
                self._conn.execute(
                    "INSERT INTO mailbox_quota (username, max_bytes) VALUES (?, ?)"
                    " ON CONFLICT (username) DO UPDATE SET max_bytes = excluded.max_bytes",
                    (user, int(max_bytes)))

    def quotas(self) -> dict[str, int]:
        if self._conn is None:
            return {}
        with self._db_lock:
            rows = self._conn.execute("SELECT username, max_bytes FROM mailbox_quota"
                                      " ORDER BY username").fetchall()
        return {u: int(b) for u, b in rows}

    def close(self) -> None:
        if self._conn is not None:
            with self._db_lock:
                self._conn.close()
            self._conn = None

    def __enter__(self) -> MaildirStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
