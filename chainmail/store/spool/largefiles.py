"""Large messages: a body over the writer's memory bound is stored as a file of its own.

The file streams into ``tmp/<id>`` while the message is received; at commit the trailer
(the record meta, see :mod:`.record`) and a footer are appended, and the file is fsynced,
renamed to ``queue/<id>`` and ``queue/`` fsynced (group committed: concurrent commits share
one directory fsync).  File format (version 1)::

    body | meta (UTF-8 JSON) | "\\nCMSPOOL <version, 4 digits> <body size, 16 hex> <meta size, 8 hex>\\n"
"""

from __future__ import annotations

import os

import trio

from ..durable import sync_dir as _sync_dir
from . import record
from .fileio import _CREATE_FLAGS, _O_CLOEXEC, _close_quietly, _sync_file, _unlink_quietly, _write_all
from .record import Envelope, QueuedMessage, SpoolFormatError, _decode_meta

__all__ = ["DEFAULT_SYNC_THREADS", "FORMAT_VERSION"]

# Bound by assignment, not imported by name: Python 3.11 compiles a method call on a
# name bound by an import to LOAD_ATTR (a bound method per call) instead of LOAD_METHOD.
_ID_RE = record._ID_RE

#: Version of the one-file-per-message format (``queue/<id>``).
FORMAT_VERSION = 1
#: Worker threads used for file fsyncs of large messages when no limiter is given.
DEFAULT_SYNC_THREADS = 16

_FOOTER_LEN = 40
_FOOTER_PREFIX = b"\nCMSPOOL "


def _footer(body_size: int, trailer_size: int) -> bytes:
    footer = b"%s%04d %016x %08x\n" % (_FOOTER_PREFIX, FORMAT_VERSION, body_size, trailer_size)
    assert len(footer) == _FOOTER_LEN
    return footer


def _read_meta(fd: int, msg_id: str) -> tuple[int, float, Envelope]:
    """Return (body size, queued_at, envelope) of the queue/ file open as ``fd``."""
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
    queued_at, envelope = _decode_meta(os.pread(fd, trailer_size, body_size), msg_id)
    return body_size, queued_at, envelope


class _SyncRound:
    """One fsync of ``queue/``: the renames it covers, and how it ended."""

    __slots__ = ("covers", "done", "error")

    def __init__(self, covers: int) -> None:
        self.covers = covers
        self.done = trio.Event()
        self.error: OSError | None = None


class _LargeFiles:
    """The part of the spool that keeps one file per large message in ``queue/``."""

    tmp_dir: str
    queue_dir: str
    _limiter: trio.CapacityLimiter  # finishes and fsyncs the files
    _dir_limiter: trio.CapacityLimiter  # directory fsyncs and segment deletions
    _renamed: int
    _synced: int
    _round: _SyncRound | None
    _in_flight: int

    def _tmp_path(self, msg_id: str) -> str:
        return os.path.join(self.tmp_dir, msg_id)

    def _queue_path(self, msg_id: str) -> str:
        return os.path.join(self.queue_dir, msg_id)

    async def _commit_file(self, msg_id: str, fd: int | None, buf: bytearray, tail: bytes) -> None:
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
                _close_quietly(fd)
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
        """Return once a ``queue/`` fsync that started after rename ``seq`` has completed."""
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

    def _load_file(self, msg_id: str) -> QueuedMessage:
        path = self._queue_path(msg_id)
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            size, queued_at, envelope = _read_meta(fd, msg_id)
        finally:
            os.close(fd)
        return QueuedMessage(msg_id, envelope, size, queued_at, path)

    def _queue_ids(self) -> list[str]:
        with os.scandir(self.queue_dir) as entries:
            return [e.name for e in entries if _ID_RE.fullmatch(e.name)]

    def _remove_file(self, msg_id: str) -> None:
        try:
            os.unlink(self._queue_path(msg_id))
        except FileNotFoundError:
            raise KeyError(msg_id) from None
        _sync_dir(self.queue_dir)
