"""Durable directory spool: the embedded default mail queue.

A message is accepted (``250`` after DATA) only once :meth:`SpoolWriter.commit`
has returned: by then the body and the envelope are in one file that has been
fsynced, renamed into ``queue/`` and the ``queue/`` directory has been fsynced.
A message that is aborted, cut off or fails to write leaves nothing behind.

Layout under the spool root::

    tmp/<id>     being received (removed by abort(), or by recover() after a crash)
    queue/<id>   accepted, complete, durable

File format (one file per message, version 1)::

    <body bytes, exactly as received>
    <trailer: UTF-8 JSON {"id", "queued_at", "envelope": {...}}>
    <footer: 40 ASCII bytes "\\nCMSPOOL VVVV <body length, 16 hex> <trailer length, 8 hex>\\n">

The envelope is a trailer so the body can be streamed to disk before the
envelope is final, and one fsync covers both.  See docs/storage.md.

Commits are group-committed: each message's file is finished, fsynced and
renamed in a worker thread (many in parallel, bounded by the limiter), and a
single ``queue/`` directory fsync then covers every rename that completed
before it started.  No background task is needed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Sequence

import trio

__all__ = [
    "BUFFER_LIMIT",
    "FORMAT_VERSION",
    "DirectorySpool",
    "Envelope",
    "QueuedMessage",
    "SpoolFormatError",
    "SpoolWriter",
]

log = logging.getLogger("chainmail.store.spool")

FORMAT_VERSION = 1
#: Bytes a writer keeps in memory before it writes them to its temporary file.
BUFFER_LIMIT = 256 * 1024
#: Worker threads used for file fsyncs when no limiter is given.
DEFAULT_SYNC_THREADS = 16

_FOOTER_LEN = 40
_FOOTER_PREFIX = b"\nCMSPOOL "
_ID_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{20}")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC


class SpoolFormatError(ValueError):
    """A file in the queue is not a valid spool file."""


@dataclass
class Envelope:
    """SMTP envelope and processing state of a message."""

    sender: str  # "" for the null reverse-path <>
    recipients: list[str]
    mail_params: dict[str, str | None] = field(default_factory=dict)
    rcpt_params: list[dict[str, str | None]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    state: str = "root"
    error_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        return cls(
            sender=data["sender"],
            recipients=list(data["recipients"]),
            mail_params=dict(data.get("mail_params", {})),
            rcpt_params=[dict(p) for p in data.get("rcpt_params", [])],
            attributes=dict(data.get("attributes", {})),
            state=data.get("state", "root"),
            error_count=int(data.get("error_count", 0)),
        )


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    envelope: Envelope
    size: int  # body bytes
    queued_at: float  # epoch seconds
    path: str


# --------------------------------------------------------------------------- ids


class _IdGenerator:
    """``<ms since epoch, 12 hex>-<per-ms sequence, 4 hex><random, 16 hex>``.

    Ids sort by the time the message began to arrive; within one process they
    are strictly increasing, across processes the 64 random bits keep them
    unique.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def __call__(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms, self._seq = now_ms, 0
            else:
                self._seq += 1
                if self._seq > 0xFFFF:
                    self._last_ms, self._seq = self._last_ms + 1, 0
            ms, seq = self._last_ms, self._seq
        return f"{ms:012x}-{seq:04x}{secrets.randbits(64):016x}"


new_id = _IdGenerator()


# ----------------------------------------------------------------- low-level I/O


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write every byte of ``parts``; a short write is continued, never ignored."""
    done = os.writev(fd, parts) if len(parts) > 1 else os.write(fd, parts[0])
    for part in parts:
        view = memoryview(part)
        if done >= len(view):
            done -= len(view)
            continue
        view = view[done:]
        done = 0
        while view:
            n = os.write(fd, view)
            if n <= 0:  # pragma: no cover - regular files report ENOSPC instead
                raise OSError(28, "short write")
            view = view[n:]


if sys.platform == "darwin":  # pragma: no cover - fsync does not reach the platter there
    import fcntl

    def _sync_file(fd: int) -> None:
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)

else:
    # fdatasync also flushes the size and block map of a new file, which is all
    # that is needed to read it back.
    _sync_file = getattr(os, "fdatasync", os.fsync)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _encode_trailer(msg_id: str, envelope: Envelope, body_size: int, queued_at: float) -> bytes:
    doc = {"id": msg_id, "queued_at": queued_at, "envelope": envelope.to_dict()}
    trailer = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    footer = b"%s%04d %016x %08x\n" % (_FOOTER_PREFIX, FORMAT_VERSION, body_size, len(trailer))
    assert len(footer) == _FOOTER_LEN
    return trailer + footer


def _read_meta(fd: int, msg_id: str) -> tuple[int, float, Envelope]:
    """Return (body size, queued_at, envelope) of the spool file open as ``fd``."""
    file_size = os.fstat(fd).st_size
    footer = os.pread(fd, _FOOTER_LEN, file_size - _FOOTER_LEN) if file_size >= _FOOTER_LEN else b""
    if (
        len(footer) != _FOOTER_LEN
        or not footer.startswith(_FOOTER_PREFIX)
        or not footer.endswith(b"\n")
    ):
        raise SpoolFormatError(f"{msg_id}: no spool footer")
    try:
        version_s, body_s, trailer_s = footer[len(_FOOTER_PREFIX) : -1].split(b" ")
        version, body_size, trailer_size = int(version_s), int(body_s, 16), int(trailer_s, 16)
    except ValueError:
        raise SpoolFormatError(f"{msg_id}: malformed spool footer {footer!r}") from None
    if version != FORMAT_VERSION:
        raise SpoolFormatError(f"{msg_id}: unsupported spool format version {version}")
    if body_size + trailer_size + _FOOTER_LEN != file_size:
        raise SpoolFormatError(f"{msg_id}: file size {file_size} does not match its footer")
    try:
        doc = json.loads(os.pread(fd, trailer_size, body_size).decode("utf-8"))
        envelope = Envelope.from_dict(doc["envelope"])
        queued_at = float(doc["queued_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolFormatError(f"{msg_id}: bad envelope: {exc}") from None
    if doc.get("id") != msg_id:
        raise SpoolFormatError(f"{msg_id}: file holds message {doc.get('id')!r}")
    return body_size, queued_at, envelope


class _BodyReader(io.RawIOBase):
    """Reads the body part of a spool file, and nothing past it."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = min(len(b), self._size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._pos)
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


# ---------------------------------------------------------------------- writer

_OPEN, _COMMITTING, _COMMITTED, _ABORTED = "open", "committing", "committed", "aborted"


class SpoolWriter:
    """One incoming message being received.

    ``write()`` buffers up to the spool's buffer limit and then writes to a
    temporary file; it never raises for an I/O error: the error is kept,
    further data is counted and dropped, and ``commit()`` raises it (so the
    server can read the rest of DATA and answer 451).  Use it as a context
    manager, or call ``abort()`` in a ``finally``: abort is a no-op once the
    message is committed.
    """

    __slots__ = ("id", "size", "_spool", "_buf", "_fd", "_state", "_error", "_limit")

    def __init__(self, spool: DirectorySpool, msg_id: str, limit: int) -> None:
        self.id = msg_id
        self.size = 0
        self._spool = spool
        self._buf = bytearray()
        self._fd: int | None = None
        self._state = _OPEN
        self._error: OSError | None = None
        self._limit = limit

    @property
    def buffered(self) -> int:
        """Bytes held in memory right now (never more than the buffer limit)."""
        return len(self._buf)

    @property
    def error(self) -> OSError | None:
        """The I/O error that will make ``commit()`` fail, if one happened."""
        return self._error

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state is not _OPEN:
            raise RuntimeError(f"spool writer {self.id} is {self._state}")
        n = len(data)
        self.size += n
        if self._error is not None:
            return
        buf = self._buf
        if len(buf) + n <= self._limit:
            buf += data
            return
        try:
            if self._fd is None:
                self._fd = os.open(self._spool._tmp_path(self.id), _CREATE_FLAGS, 0o600)
            _write_all(self._fd, (buf, data) if buf else (data,))
        except OSError as exc:
            self._discard()
            self._error = exc
        else:
            buf.clear()

    async def commit(self, envelope: Envelope) -> str:
        """Make the message durable in the queue and return its id.

        Raises ``OSError`` (nothing is left behind) if any write, fsync or
        rename failed.  Once started, the commit is shielded from cancellation
        so that the file system and the reply stay in agreement.
        """
        if self._state is not _OPEN:
            raise RuntimeError(f"spool writer {self.id} is {self._state}")
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._error is not None:
                raise self._error
            tail = _encode_trailer(self.id, envelope, self.size, time.time())
        except BaseException:
            self.abort()
            raise
        self._state = _COMMITTING
        fd, buf = self._fd, self._buf
        self._fd, self._buf = None, bytearray()
        try:
            with trio.CancelScope(shield=True):
                await self._spool._commit(self.id, fd, buf, tail)
        except BaseException:
            self._state = _ABORTED
            raise
        self._state = _COMMITTED
        return self.id

    def abort(self) -> None:
        """Discard the message.  Idempotent; does nothing after a commit."""
        if self._state is _OPEN:
            self._state = _ABORTED
            self._discard()

    def _discard(self) -> None:
        self._buf = bytearray()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
            _unlink_quietly(self._spool._tmp_path(self.id))

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def __repr__(self) -> str:
        return f"<SpoolWriter {self.id} {self._state} size={self.size}>"


# ----------------------------------------------------------------------- spool


class _SyncRound:
    __slots__ = ("covers", "done", "error")

    def __init__(self, covers: int) -> None:
        self.covers = covers
        self.done = trio.Event()
        self.error: OSError | None = None


class DirectorySpool:
    """The queue as a directory of one-file messages.

    One instance serves one trio run (one process); several processes may
    share a spool directory.  ``limiter`` bounds the worker threads that
    finish and fsync message files (default: a private limiter of
    ``DEFAULT_SYNC_THREADS``); the shared ``queue/`` directory fsync runs in
    one more thread of its own so it never queues behind file fsyncs.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        limiter: trio.CapacityLimiter | None = None,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.queue_dir = os.path.join(self.root, "queue")
        created = False
        for path in (self.root, self.tmp_dir, self.queue_dir):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
                created = True
        if created:
            _sync_dir(self.root)
            _sync_dir(os.path.dirname(self.root))
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(DEFAULT_SYNC_THREADS)
        self._dir_limiter = trio.CapacityLimiter(1)
        self._buffer_limit = buffer_limit
        self._renamed = 0  # renames into queue/ completed so far
        self._synced = 0  # renames covered by a completed directory fsync
        self._round: _SyncRound | None = None
        self._in_flight = 0  # commits between their first thread hop and their return
        self._closed = False

    # -- receiving

    def open_writer(self) -> SpoolWriter:
        if self._closed:
            raise RuntimeError("spool is closed")
        return SpoolWriter(self, new_id(), self._buffer_limit)

    def _tmp_path(self, msg_id: str) -> str:
        return os.path.join(self.tmp_dir, msg_id)

    def _queue_path(self, msg_id: str) -> str:
        return os.path.join(self.queue_dir, msg_id)

    async def _commit(self, msg_id: str, fd: int | None, buf: bytearray, tail: bytes) -> None:
        if self._in_flight == 0 and self._round is None:
            # Nobody to share a directory fsync with: do it in the same thread hop.
            self._in_flight += 1
            try:
                await trio.to_thread.run_sync(
                    self._finish_file, msg_id, fd, buf, tail, True, limiter=self._limiter
                )
            finally:
                self._in_flight -= 1
            return
        self._in_flight += 1
        try:
            await trio.to_thread.run_sync(
                self._finish_file, msg_id, fd, buf, tail, False, limiter=self._limiter
            )
            seq = self._renamed = self._renamed + 1
            try:
                await self._sync_queue(seq)
            except OSError:
                # We are about to refuse the message: do not leave it queued.
                _unlink_quietly(self._queue_path(msg_id))
                raise
        finally:
            self._in_flight -= 1

    def _finish_file(
        self, msg_id: str, fd: int | None, buf: bytearray, tail: bytes, sync_queue: bool
    ) -> None:
        """Worker thread: write what is left, fsync, close, rename into queue/
        and, if ``sync_queue``, fsync queue/ too."""
        tmp = self._tmp_path(msg_id)
        owned = fd is not None  # is tmp ours to delete on failure?
        try:
            if fd is None:
                fd = os.open(tmp, _CREATE_FLAGS, 0o600)
                owned = True
            _write_all(fd, (buf, tail) if buf else (tail,))
            _sync_file(fd)
            closing, fd = fd, None
            os.close(closing)
            os.rename(tmp, self._queue_path(msg_id))
        except BaseException:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if owned:
                _unlink_quietly(tmp)
            raise
        if sync_queue:
            try:
                _sync_dir(self.queue_dir)
            except BaseException:
                _unlink_quietly(self._queue_path(msg_id))
                raise

    async def _sync_queue(self, seq: int) -> None:
        """Return once a ``queue/`` fsync that started after rename ``seq`` has completed.

        Whoever finds no fsync running starts one covering every rename done
        so far; everyone else waits for it, then checks whether it covered them.
        """
        while self._synced < seq:
            current = self._round
            if current is not None:
                await current.done.wait()
                err = current.error
                if err is not None and current.covers >= seq:
                    raise OSError(err.errno, err.strerror, self.queue_dir) from err
                continue
            current = self._round = _SyncRound(self._renamed)
            try:
                await trio.to_thread.run_sync(_sync_dir, self.queue_dir, limiter=self._dir_limiter)
            except OSError as exc:
                current.error = exc
                raise
            else:
                self._synced = max(self._synced, current.covers)
            finally:
                self._round = None
                current.done.set()

    # -- reading

    def _check_id(self, msg_id: str) -> None:
        if not isinstance(msg_id, str) or not _ID_RE.fullmatch(msg_id):
            raise KeyError(msg_id)

    def _load(self, msg_id: str) -> QueuedMessage:
        path = self._queue_path(msg_id)
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            size, queued_at, envelope = _read_meta(fd, msg_id)
        finally:
            os.close(fd)
        return QueuedMessage(msg_id, envelope, size, queued_at, path)

    def ids(self) -> list[str]:
        """Ids of the queued messages, oldest first, without reading the files."""
        with os.scandir(self.queue_dir) as entries:
            return sorted(e.name for e in entries if _ID_RE.fullmatch(e.name))

    def list(self) -> list[QueuedMessage]:
        """Every queued message, oldest first (by id: the time it began to arrive)."""
        out = []
        for msg_id in self.ids():
            try:
                out.append(self._load(msg_id))
            except FileNotFoundError:
                continue  # removed meanwhile
            except SpoolFormatError as exc:
                log.warning("skipping unreadable spool file: %s", exc)
        return out

    def get(self, msg_id: str) -> QueuedMessage:
        """The queued message ``msg_id``; ``KeyError`` if there is none."""
        self._check_id(msg_id)
        try:
            return self._load(msg_id)
        except FileNotFoundError:
            raise KeyError(msg_id) from None

    def open_body(self, msg_id: str) -> BinaryIO:
        """A binary file object reading exactly the body of ``msg_id``."""
        self._check_id(msg_id)
        try:
            fd = os.open(self._queue_path(msg_id), os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise KeyError(msg_id) from None
        try:
            size, _, _ = _read_meta(fd, msg_id)
        except BaseException:
            os.close(fd)
            raise
        return io.BufferedReader(_BodyReader(fd, size), buffer_size=64 * 1024)  # type: ignore[return-value]

    # -- maintenance

    def remove(self, msg_id: str) -> None:
        """Durably remove ``msg_id`` from the queue (unlink, then fsync ``queue/``)."""
        self._check_id(msg_id)
        try:
            os.unlink(self._queue_path(msg_id))
        except FileNotFoundError:
            raise KeyError(msg_id) from None
        _sync_dir(self.queue_dir)

    def recover(self) -> int:
        """Delete the leftovers of writes a crash interrupted; call at start-up,
        before any writer is open.  Returns how many files were removed."""
        removed = 0
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
        if removed:
            _sync_dir(self.tmp_dir)
            log.info("spool recovery removed %d incomplete file(s) from %s", removed, self.tmp_dir)
        return removed

    async def aclose(self) -> None:
        """Refuse new writers.  There are no background tasks to stop:
        commits in flight finish on their own (they are shielded)."""
        self._closed = True
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<DirectorySpool {self.root}>"
