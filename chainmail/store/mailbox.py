"""Mailboxes: the interface local delivery writes to, and its Maildir implementation.

The inbox of user ``U`` (a full, lower-cased address, UTF-8 in NFC) is the Maildir
``<var>/mail/<U>/`` with ``cur/``, ``new/`` and ``tmp/``.  A delivery is written the Maildir way
(https://cr.yp.to/proto/maildir.html): a unique name in ``tmp/``, every byte written and
fsynced, then renamed into ``new/`` and ``new/`` fsynced.  A reader (Dovecot, mutt,
Python's :class:`mailbox.Maildir`) never sees a partial message, and once
:meth:`MaildirStore.deliver` has returned the message survives a crash.

Messages are stored with LF line ends (what Maildir readers expect); the file name carries
the size (``,S=<bytes>``) so that usage is computed without reading the files.  Content with
a bare CR or a NUL (which the SMTP and LMTP servers refuse, but a mailet may write) is first
put in the canonical form of :mod:`chainmail.protocol.lineends`: no CR is ever written, and
the header section ends where chainmail's own parser ends it.

Deliveries are written in groups (:meth:`MaildirStore.deliver_many`): every file of a
group is written, then each is fdatasynced, renamed into ``new/``, and each ``new/`` that
gained an entry is fsynced once, so that ten deliveries or fifty recipients of one message
cost one directory fsync per mailbox, not one per message.  From trio,
:meth:`MaildirStore.adeliver_many` gathers the deliveries of concurrent callers into such
groups (group commit: whoever finds no group in flight writes everything queued).  No lock
is held across a write or an fsync: Maildir's ``tmp/`` + rename needs none.

Quota (optional, per user) lives in a :class:`QuotaTable`: the ``mailbox_quota`` table of
the shared SQLite database (:class:`SqliteQuotas`), or of PostgreSQL when the nodes of a
cluster share it (``chainmail.store.backends`` chooses).  A delivery that would take a user past the quota raises
:class:`QuotaExceededError`.  The check counts ``new/``, ``cur/`` and the deliveries still
in ``tmp/`` (their names carry their size too), and creates the delivery's own ``tmp/``
file under an ``flock`` of the Maildir, so the check is exact across threads and processes
while the lock is never held across a write or an fsync.  A ``tmp/`` file older than
an hour is a crashed delivery and is not counted.

Folders follow Maildir++ (as Dovecot and Courier read them): the folder ``A/B`` (or
``A.B``) of a user is the Maildir ``<var>/mail/<U>/.A.B/`` with a ``maildirfolder`` file;
``INBOX`` is the user's Maildir itself.  :func:`maildir_folder_for` turns a folder name into
that directory name (IMAP's modified UTF-7 for anything but printable ASCII) and refuses a
name that could leave the Maildir (``..``, empty levels, control characters).  Quota usage
counts every folder.

Every method blocks (file system, fsync): call it from a worker thread.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import itertools
import os
import re
import socket
import threading
import time
import unicodedata
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from chainmail.protocol.lineends import canonical
from chainmail.store import sqlite as _sqlite
from chainmail.store.durable import sync_dir as _fsync_dir

if TYPE_CHECKING:   # imported where used: the CLI's stores do not load trio
    import trio

__all__ = ["MailboxStore", "MaildirStore", "QuotaExceededError", "MailboxError", "QuotaTable",
           "SqliteQuotas", "maildir_name_for", "maildir_folder_for", "user_key", "INBOX"]

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
_sync_data = getattr(os, "fdatasync", os.fsync)
Delivery = tuple   # (username, content[, prefix[, folder]]): see deliver_many
INBOX = "INBOX"
FOLDER_DEPTH = 16     # levels of a folder name, at most
FOLDER_NAME_MAX = 255   # bytes of a folder's directory name (one file name)
FILES_OPEN = 200     # deliveries written before their fdatasyncs, at most (file by file)
STALE_TMP = 3600.0   # seconds: an older tmp/ file is a crashed delivery (not counted)


class MailboxError(Exception):
    """A delivery failed for a reason that is not the disk's (bad user name, ...)."""


class QuotaExceededError(MailboxError):
    """The message does not fit in the user's quota (SMTP 552 5.2.2)."""

    def __init__(self, username: str, size: int, usage: int, quota: int) -> None:
        self.username, self.size, self.usage, self.quota = username, size, usage, quota
        super().__init__(f"552 5.2.2 Over quota: mailbox of {username} holds {usage} of "
                         f"{quota} bytes; the message needs {size}")


def user_key(username: str) -> str:
    """How a username is compared and stored here: trimmed, lower-cased, and in Unicode
    NFC, so that a UTF-8 name written composed or decomposed is one mailbox."""
    name = username.strip().lower()
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def maildir_name_for(username: str) -> str:
    """The directory name of a user's Maildir: the username in the form of
    :func:`user_key`, with ``/``, ``%``, NUL and a leading dot percent-encoded so that it is
    always one plain directory name."""
    name = user_key(username)
    if not name:
        raise MailboxError("empty username")
    out = []
    for i, ch in enumerate(name):
        if ch in "/%\0\\" or (i == 0 and ch == "."):
            out.append("%%%02X" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)



def maildir_folder_for(folder: str | None) -> str:
    """The Maildir++ directory name of ``folder`` (``""`` for ``INBOX``): ``"Spam"`` ->
    ``".Spam"``, ``"Lists/python"`` and ``"Lists.python"`` -> ``".Lists.python"``.

    A leading ``INBOX`` level is dropped (Courier names ``INBOX.Spam`` what Dovecot names
    ``Spam``; both are ``.Spam``).  Each level is written in IMAP's modified UTF-7 (RFC 3501
    §5.1.3), so the result is printable ASCII without ``/``.  :class:`MailboxError` for an
    empty level (``A..B``, ``/A``), ``.`` or ``..``, a control character, more than
    ``FOLDER_DEPTH`` levels, or a directory name over ``FOLDER_NAME_MAX`` bytes."""
    name = (folder or "").strip()
    if not name:
        return ""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise MailboxError(f"folder name {folder!r} has a control character")
    levels = re.split(r"[./]", name)
    if levels[0].upper() == INBOX:
        levels = levels[1:]
        if not levels:
            return ""
    if len(levels) > FOLDER_DEPTH:
        raise MailboxError(f"folder name {folder!r} has more than {FOLDER_DEPTH} levels")
    if any(not level.strip() for level in levels):
        raise MailboxError(f"folder name {folder!r} has an empty level")
    encoded = "." + ".".join(_imap_utf7(level) for level in levels)
    if len(encoded) > FOLDER_NAME_MAX:
        raise MailboxError(f"folder name {folder!r} is too long")
    return encoded


def _imap_utf7(text: str) -> str:
    """IMAP's modified UTF-7 (RFC 3501 §5.1.3): printable ASCII as itself (``&`` as
    ``&-``), anything else as ``&<modified base64 of UTF-16BE>-``."""
    import base64
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
                       + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
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


class QuotaTable(abc.ABC):
    """Where the quotas are: per user (in the form of :func:`user_key`), in bytes.
    Thread-safe and blocking; :meth:`current` is asked once per delivery group, so it is
    answered from a copy refreshed when the table changed."""

    @abc.abstractmethod
    def current(self) -> dict[str, int]:
        """Every quota, as recently as the table allows cheaply (never to be modified)."""

    @abc.abstractmethod
    def get(self, user: str) -> int | None:
        """The quota of ``user`` as stored now, ``None`` when unlimited."""

    @abc.abstractmethod
    def set(self, user: str, max_bytes: int | None) -> None:
        """Set (or with ``None`` remove) the quota of ``user`` (``max_bytes`` >= 0)."""

    @abc.abstractmethod
    def all(self) -> dict[str, int]:
        """Every quota as stored now, by user."""

    def close(self) -> None:
        """Let go of what the table holds (nothing, unless a subclass says otherwise)."""


class SqliteQuotas(QuotaTable):
    """The ``mailbox_quota`` table of ``<var>/chainmail.db`` (one node, its processes)."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._db_lock = threading.Lock()
        self._quotas: dict[str, int] | None = None   # cached table, with its data_version
        self._quota_version: int | None = None
        self._conn: Any = _sqlite.open_migrated(db_path, COMPONENT, MIGRATIONS)

    def current(self) -> dict[str, int]:
        """The quota table, read again only when the database changed (another process
        ran ``chainmail quota set``): one cheap query per delivery group."""
        with self._db_lock:
            assert self._conn is not None
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if self._quotas is None or version != self._quota_version:
                rows = self._conn.execute("SELECT username, max_bytes FROM mailbox_quota").fetchall()
                self._quotas = {u: int(b) for u, b in rows}
                self._quota_version = version
            return self._quotas

    def get(self, user: str) -> int | None:
        with self._db_lock:
            row = self._conn.execute("SELECT max_bytes FROM mailbox_quota WHERE username = ?",
                                     (user,)).fetchone()
        return None if row is None else int(row[0])

    def set(self, user: str, max_bytes: int | None) -> None:
        with self._db_lock:
            self._quotas = None   # this connection's own writes do not move data_version
            if max_bytes is None:
                self._conn.execute("DELETE FROM mailbox_quota WHERE username = ?", (user,))
            else:
                if max_bytes < 0:
                    raise ValueError("quota must be >= 0 bytes")
                self._conn.execute(
                    "INSERT INTO mailbox_quota (username, max_bytes) VALUES (?, ?)"
                    " ON CONFLICT (username) DO UPDATE SET max_bytes = excluded.max_bytes",
                    (user, int(max_bytes)))

    def all(self) -> dict[str, int]:
        with self._db_lock:
            rows = self._conn.execute("SELECT username, max_bytes FROM mailbox_quota"
                                      " ORDER BY username").fetchall()
        return {u: int(b) for u, b in rows}

    def close(self) -> None:
        if self._conn is not None:
            with self._db_lock:
                self._conn.close()
            self._conn = None


class MailboxStore(abc.ABC):
    """Where local delivery puts mail.  Implementations are thread-safe and blocking."""

    @abc.abstractmethod
    def deliver(self, username: str, content: bytes) -> str:
        """Durably add ``content`` to the inbox of ``username``; return the message's key.
        ``QuotaExceededError`` if it does not fit; ``OSError`` if the disk failed."""

    def deliver_many(self, items: Sequence[Delivery]) -> list[str | Exception]:
        """Deliver each ``(username, content)`` or ``(username, content, prefix)`` (header
        lines written before ``content``, so that many recipients of one message share
        its bytes); one result per item: its key, or the exception for that item alone.
        Override to share the syncs of a group."""
        results: list[str | Exception] = []
        for username, content, *rest in items:
            try:
                if len(rest) > 1 and maildir_folder_for(rest[1]):
                    raise MailboxError(f"{type(self).__name__} has no folders")
                results.append(self.deliver(username, b"".join(rest[:1]) + content))
            except Exception as exc:
                results.append(exc)
        return results

    async def adeliver_many(self, items: Sequence[Delivery], *,
                            limiter=None) -> list[str | Exception]:
        """:meth:`deliver_many` from trio, in a worker thread bounded by ``limiter``."""
        import trio
        return await trio.to_thread.run_sync(self.deliver_many, list(items), limiter=limiter)

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
    """Maildirs under ``root`` (``<var>/mail``); quotas in ``quotas`` (a :class:`QuotaTable`
    the store then owns and closes), else in the SQLite database ``db_path``, else none."""

    def __init__(self, root: str | os.PathLike[str], db_path: str | os.PathLike[str] | None = None,
                 *, hostname: str | None = None, quotas: QuotaTable | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        host = hostname or socket.gethostname() or "localhost"
        # Maildir: "/" and ":" in the host name are replaced.
        self.hostname = host.replace("/", r"\057").replace(":", r"\072")
        self._ready: dict[tuple[str, str], str] = {}   # (user, folder) -> path, known to exist
        #: groups are made durable with syncfs(2) (Linux 5.8 and later: earlier kernels
        #: do not report write errors through it), else file by file
        self.root_syncs = _syncfs is not None
        self._queue: list[_Pending] = []   # adeliver_many: waiting for the next group
        self._flight: "trio.Event | None" = None   # adeliver_many: the group being written
        if quotas is None and db_path is not None:
            quotas = SqliteQuotas(db_path)
        self._quota_table = quotas

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
            self._ready[(user_key(username), "")] = path
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

    def folder_path(self, username: str, folder: str | None) -> str:
        """The Maildir++ folder ``folder`` of ``username`` (its Maildir for ``INBOX``);
        :class:`MailboxError` for a name :func:`maildir_folder_for` refuses."""
        return os.path.join(self.path_for(username), maildir_folder_for(folder))

    def ensure_folder(self, username: str, folder: str | None) -> str:
        """Create the user's Maildir and its folder ``folder`` if needed; return the
        folder's path.  The folder is built in the Maildir's ``tmp/`` (``cur``, ``new``,
        ``tmp`` and the ``maildirfolder`` file Dovecot and Courier look for) and renamed
        into place, so that it appears complete."""
        user = user_key(username)
        name = maildir_folder_for(folder)
        root = self._ready.get((user, "")) or self.ensure(user)
        if not name:
            return root
        path = os.path.join(root, name)
        if os.path.isdir(os.path.join(path, "tmp")):
            self._ready[(user, name)] = path
            return path
        staging = os.path.join(root, "tmp", f"folder-{os.getpid()}-{os.urandom(6).hex()}")
        os.mkdir(staging, 0o700)
        try:
            for sub in ("cur", "new", "tmp"):
                os.mkdir(os.path.join(staging, sub), 0o700)
            marker = os.open(os.path.join(staging, "maildirfolder"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
            os.close(marker)
            _fsync_dir(staging)
            try:
                os.rename(staging, path)
            except OSError:
                if not os.path.isdir(os.path.join(path, "tmp")):
                    raise
            else:
                _fsync_dir(root)
        finally:
            if os.path.isdir(staging):
                _remove_tree_quietly(staging)
        self._ready[(user, name)] = path
        return path

    def _unique_name(self, size: int) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        # P<pid>Q<counter> is unique on this host; R<random> (drawn once per process, so a
        # reused pid after a restart differs too) keeps names apart across hosts.
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{_process_random()}.{self.hostname},S={size}"

    # -- delivery

    def deliver(self, username: str, content: bytes, folder: str | None = None) -> str:
        """Durably add ``content`` to ``folder`` (default ``INBOX``) of ``username``."""
        [result] = self.deliver_many([(username, content, b"", folder)])
        if isinstance(result, BaseException):
            raise result
        return result

    def deliver_many(self, items: Sequence[Delivery]) -> list[str | Exception]:
        """Deliver each ``(username, content[, prefix[, folder]])`` (``folder`` a
        Maildir++ folder name, default ``INBOX``); one result per item, in order: the key,
        or the exception for that item alone (``QuotaExceededError``, ``MailboxError`` for
        a folder name refused, ``OSError``)."""
        if not self.root_syncs and len(items) > FILES_OPEN:   # file by file: bounded fds
            return [r for at in range(0, len(items), FILES_OPEN)
                    for r in self.deliver_many(items[at:at + FILES_OPEN])]
        results: list[str | Exception] = [""] * len(items)
        table = self._quota_table
        quotas = table.current() if table is not None else {}
        written: list[tuple[int, int, str, str, str]] = []   # index, fd, tmp, maildir, name
        stored: dict[int, bytes] = {}   # id(content) -> its Maildir form, once per group
        try:
            for i, (username, content, *rest) in enumerate(items):
                try:
                    body = stored.get(id(content))
                    if body is None:
                        body = stored[id(content)] = _maildir_form(content)
                    head = _maildir_form(rest[0]) if rest and rest[0] else b""
                    folder = rest[1] if len(rest) > 1 else None
                    entry = self._create(i, username, head, body, quotas, folder)
                    if self.root_syncs:   # synced by the file system: no fd to keep
                        os.close(entry[1])
                        entry = (i, -1, *entry[2:])
                    written.append(entry)
                except Exception as exc:
                    results[i] = exc
            if written and self.root_syncs:
                self._commit_by_filesystem(written, results)
            else:
                self._commit_by_file(written, results)
            written = []
        finally:
            for entry in written:   # an unexpected error: leave no file behind
                _discard(entry)
        return results

    def _commit_by_file(self, written: list, results: list) -> None:
        """Durability file by file: fdatasync each, rename, fsync each ``new/`` once."""
        synced = []
        for entry in written:
            try:
                _sync_data(entry[1])
            except OSError as exc:
                results[entry[0]] = exc
                _discard(entry)
            else:
                synced.append(entry)
        dirs: dict[str, list[int]] = {}
        for i, fd, tmp, path, name in synced:
            os.close(fd)
            new_dir = os.path.join(path, "new")
            if self._rename(i, tmp, os.path.join(new_dir, name), results):
                dirs.setdefault(new_dir, []).append(i)
        for new_dir, indexes in dirs.items():
            try:
                _fsync_dir(new_dir)
            except OSError as exc:
                for i in indexes:
                    results[i] = exc

    def _commit_by_filesystem(self, written: list, results: list) -> None:
        """Durability for the whole group in two syncfs(2) calls: one for every file's
        bytes (before any is renamed: a reader never sees a file that a crash could
        empty), one for the names.  A device flush each, where file by file costs two per
        delivery: fifty mailboxes take 3 ms instead of 19 here."""
        try:
            _syncfs(self.root)
        except OSError as exc:
            for i, _, tmp, _, _ in written:
                results[i] = exc
                _unlink_quietly(tmp)
            return
        renamed = [i for i, _, tmp, path, name in written
                   if self._rename(i, tmp, os.path.join(path, "new", name), results)]
        try:
            _syncfs(self.root)
        except OSError as exc:
            for i in renamed:
                results[i] = exc

    @staticmethod
    def _rename(index: int, tmp: str, target: str, results: list) -> bool:
        try:
            os.rename(tmp, target)
        except OSError as exc:
            results[index] = exc
            _unlink_quietly(tmp)
            return False
        results[index] = os.path.basename(target)
        return True

    def _create(self, index: int, username: str, head: bytes, body: bytes,
                quotas: dict[str, int], folder: str | None = None
                ) -> tuple[int, int, str, str, str]:
        """Write one delivery to the ``tmp/`` of its folder (not yet synced), after the
        quota check."""
        user = user_key(username)
        name = maildir_folder_for(folder)
        path = self._ready.get((user, name)) or self.ensure_folder(user, folder)
        size = len(head) + len(body)
        name = self._unique_name(size)
        tmp = os.path.join(path, "tmp", name)
        quota = quotas.get(user)
        try:
            if quota is None:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
            else:
                fd = self._create_within_quota(user, self.path_for(user), tmp, size, quota)
        except FileNotFoundError:   # the Maildir was removed behind our back: made again next time
            self._ready.pop((user, name), None)
            self._ready.pop((user, ""), None)
            raise
        entry = (index, fd, tmp, path, name)
        try:
            for part in (head, body):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        except BaseException:
            _discard(entry)
            raise
        return entry

    def _create_within_quota(self, user: str, path: str, tmp: str, size: int, quota: int) -> int:
        """Create ``tmp`` if ``size`` more bytes fit, counting deliveries in flight; the
        check and the creation are one step for every process (an flock of the Maildir)."""
        lock = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = self._tree_usage(path, ("new", "cur", "tmp"))
            if used + size > quota:
                raise QuotaExceededError(user, size, used, quota)
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        finally:
            os.close(lock)   # releases the flock

    async def adeliver_many(self, items: Sequence[Delivery], *,
                            limiter=None) -> list[str | Exception]:
        """:meth:`deliver_many` for trio code: the items of concurrent callers are written
        as one group, in a worker thread (bounded by ``limiter``), one group at a time.
        A group in flight is shielded: once taken, its items are delivered."""
        import trio
        pending = _Pending(list(items))
        self._queue.append(pending)
        try:
            while pending.results is None:
                flight = self._flight
                if flight is not None:
                    await flight.wait()
                    continue
                group, self._queue = self._queue, []
                self._flight = trio.Event()
                try:
                    flat = [item for p in group for item in p.items]
                    with trio.CancelScope(shield=True):
                        try:
                            out = await trio.to_thread.run_sync(self.deliver_many, flat,
                                                                limiter=limiter)
                        except Exception as exc:
                            out = [exc] * len(flat)
                    for p in group:
                        p.results, out = out[:len(p.items)], out[len(p.items):]
                finally:
                    done, self._flight = self._flight, None
                    done.set()
        finally:
            if pending.results is None and pending in self._queue:
                self._queue.remove(pending)   # cancelled before its group was taken
        return pending.results

    # -- reading

    def list(self, username: str, folder: str | None = None) -> list[str]:
        """Keys (file names) of the messages in ``new/`` and ``cur/`` of a folder of the
        user (default ``INBOX``)."""
        path = self.folder_path(username, folder)
        out = []
        for sub in ("new", "cur"):
            try:
                out.extend(sorted(os.listdir(os.path.join(path, sub))))
            except FileNotFoundError:
                pass
        return out

    def folders(self, username: str) -> Sequence[str]:
        """The directory names of the user's Maildir++ folders (``.Spam``, ``.A.B``)."""
        try:
            entries = os.listdir(self.path_for(username))
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if e.startswith(".") and e not in (".", "..")
                      and os.path.isfile(os.path.join(self.path_for(username), e,
                                                      "maildirfolder")))

    def usage(self, username: str) -> int:
        """Bytes used by the user's mailbox: the inbox and every folder."""
        return self._tree_usage(self.path_for(username), ("new", "cur"))

    @classmethod
    def _tree_usage(cls, path: str, subdirs: tuple[str, ...]) -> int:
        """:meth:`_usage` of the Maildir at ``path`` and of each of its Maildir++ folders."""
        total = cls._usage(path, subdirs)
        try:
            entries = os.listdir(path)
        except FileNotFoundError:
            return total
        for entry in entries:
            if entry.startswith(".") and entry not in (".", ".."):
                total += cls._usage(os.path.join(path, entry), subdirs)
        return total

    @staticmethod
    def _usage(path: str, subdirs: tuple[str, ...]) -> int:
        total = 0
        stale = time.time() - STALE_TMP
        for sub in subdirs:
            directory = os.path.join(path, sub)
            try:
                entries: Iterable[os.DirEntry] = os.scandir(directory)
            except FileNotFoundError:
                continue
            with entries:  # type: ignore[attr-defined]
                for entry in entries:
                    if sub == "tmp":
                        try:
                            if entry.stat().st_mtime < stale:
                                continue
                        except FileNotFoundError:
                            continue
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
        if self._quota_table is None:
            return None
        return self._quota_table.get(user_key(username))

    def set_quota(self, username: str, max_bytes: int | None) -> None:
        if self._quota_table is None:
            raise MailboxError("no database: quotas are not available")
        self._quota_table.set(user_key(username), max_bytes)

    def quotas(self) -> dict[str, int]:
        if self._quota_table is None:
            return {}
        return self._quota_table.all()

    def close(self) -> None:
        table, self._quota_table = self._quota_table, None
        if table is not None:
            table.close()

    def __enter__(self) -> MaildirStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_random: dict[str, Any] = {"pid": 0, "value": ""}


def _process_random() -> str:
    """16 hex digits drawn once per process (a forked worker draws its own)."""
    pid = os.getpid()
    if _random["pid"] != pid:
        _random["pid"], _random["value"] = pid, os.urandom(8).hex()
    return _random["value"]


def _find_syncfs():
    """syncfs(2) where it reports write errors (Linux 5.8 and later), else None."""
    import platform
    if platform.system() != "Linux":
        return None
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            if call(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)
    return syncfs


_syncfs = _find_syncfs()


def _maildir_form(content: bytes) -> bytes:
    """LF line ends, as Maildir readers expect; never a CR nor a NUL (the canonical form
    first when the content holds one)."""
    data = content.replace(b"\r\n", b"\n")
    if b"\r" in data or b"\0" in data:
        data = canonical(content).replace(b"\r\n", b"\n")
    return data


class _Pending:
    """One caller's items waiting for a delivery group, and then their results."""

    __slots__ = ("items", "results")

    def __init__(self, items: list[Delivery]) -> None:
        self.items = items
        self.results: list[str | Exception] | None = None


def _discard(entry: tuple[int, int, str, str, str]) -> None:
    """Close and remove a delivery file that will not be renamed into ``new/``."""
    if entry[1] >= 0:
        with contextlib.suppress(OSError):
            os.close(entry[1])
    _unlink_quietly(entry[2])


def _remove_tree_quietly(path: str) -> None:
    """Remove a folder being built (its three directories and marker file), if it is left."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(path, "maildirfolder"))
    for sub in ("cur", "new", "tmp"):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(path, sub))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
