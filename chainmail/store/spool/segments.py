"""The segment log, written side: appending records to this instance's segment, starting
and closing segments, and the group fdatasync that makes appends durable.

A message that fits the writer's memory bound is one record (:mod:`.record`), appended with
a single write to the current segment file, then made durable by an ``fdatasync`` of that
file that is shared by every record appended before it started (group commit).  No file is
created, renamed or unlinked per message.  Reading other writers' segments is
:mod:`.index`; removing messages and deleting segments is :mod:`.removal`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from typing import Callable, Sequence

import trio

from ..durable import sync_dir as _sync_dir
from .fileio import _O_CLOEXEC, _O_DIRECTORY, _close_quietly, _sync_file, _unlink_quietly, _write_all
from .record import _KIND_MESSAGE, _KIND_REMOVED, _encode_record

__all__ = ["PREALLOCATE", "SEGMENT_SIZE"]

log = logging.getLogger("chainmail.store.spool")

#: A segment is closed, and the next one started, once it reaches this size.
SEGMENT_SIZE = 64 * 1024 * 1024
_SEGMENT_RE = re.compile(r"([0-9a-f]{16})\.log")
#: A segment's file is extended with written zeros this much ahead of its records, so that an
#: fdatasync after an append has no block allocation or extent conversion to record.  Measured
#: per append + fdatasync on ext4 here: 204 µs growing the file, ~170 µs ahead with
#: posix_fallocate (unwritten extents, converted on first write), ~150 µs ahead with written
#: zeros.  Cut back to the records when the segment is closed.
PREALLOCATE = 1024 * 1024
_ZEROS = memoryview(bytes(PREALLOCATE))


class _Segment:
    """What one instance knows about one segment file."""

    __slots__ = (
        "seq", "path", "own", "fd", "end", "synced", "dir_synced", "failed", "round",
        "users", "sync_lock", "live", "final", "damaged", "allocated",
    )

    def __init__(self, seq: int, path: str, *, own: bool = False, fd: int | None = None) -> None:
        self.seq = seq
        self.path = path
        self.own = own  # created by this instance: its records are indexed as they are appended
        self.fd = fd  # open for appending while this instance may still write or sync it
        self.end = 0  # own: bytes appended; foreign: bytes scanned
        self.synced = 0  # own: bytes covered by a completed fdatasync
        self.dir_synced = not own  # is the segment's directory entry durable?
        self.failed: OSError | None = None  # a write or fdatasync failed: never used again
        self.round: trio.Event | None = None  # fdatasync in flight for async commits
        self.users = 0  # appends whose durability is still being waited for
        self.sync_lock = threading.Lock()  # one fdatasync at a time, so errors are seen in order
        self.live = 0  # indexed messages stored here
        self.final = own  # no further record can appear (own, or scanned after its writer left)
        self.damaged = False  # valid records follow an unreadable one: keep the file
        self.allocated = 0  # own: file size reserved ahead of the records (zeros past ``end``)


class _SegmentLog:
    """The part of the spool that appends to segments and waits for them to be durable."""

    segments_dir: str
    _segment_size: int
    _segment_limiter: trio.CapacityLimiter
    sync_inline: Callable[[], bool] | None
    _lock: threading.Lock
    _dir_mutex: threading.Lock
    _lock_fd: int | None
    _segments: dict[int, _Segment]
    _current: _Segment | None
    _index: dict[str, tuple[int, int, int, int]]

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.segments_dir, f"{seq:016x}.log")

    def _dir_locked(self) -> _DirLock:
        return _DirLock(self)

    # -- segment log: appending

    async def _commit_record(self, msg_id: str, meta: bytes, body: bytearray) -> None:
        head = _encode_record(_KIND_MESSAGE, msg_id, 0, meta, body)
        seg, end = self._append(msg_id, (head, meta, body) if body else (head, meta),
                                index=(len(meta), len(body)))
        try:
            await self._wait_durable(seg, end)
        except OSError:
            self._unindex_failed(msg_id, seg)
            raise
        finally:
            self._release(seg)

    def _append(
        self, msg_id: str, parts: Sequence[bytes | bytearray], *,
        index: tuple[int, int] | None = None, at_least: int = 0,
    ) -> tuple[_Segment, int]:
        """Append one record to this instance's current segment, starting a new one
        when there is none, it failed, it is full or its sequence number is below
        ``at_least``.  Returns the segment and the record's end; the caller must
        wait for it to be durable and then ``_release()`` the segment.  With
        ``index`` = (meta length, body length), the record is a message to index."""
        size = sum(len(p) for p in parts)
        with self._lock:
            seg = self._current
            if (
                seg is None
                or seg.failed is not None
                or seg.seq < at_least
                or (seg.end > 0 and seg.end + size > self._segment_size)
            ):
                seg = self._rotate()
            offset = seg.end
            assert seg.fd is not None
            if offset + size > seg.allocated:
                self._preallocate(seg, offset + size)
            try:
                _write_all(seg.fd, parts)
            except OSError:
                # Part of the record may be in the file: cut it off so that the
                # next record follows the last whole one.  If that fails too, the
                # partial record stays as a torn tail and the segment is dropped.
                try:
                    os.ftruncate(seg.fd, offset)
                    os.lseek(seg.fd, offset, os.SEEK_SET)
                    seg.allocated = offset
                except OSError as exc:
                    seg.failed = exc
                    self._seal(seg)
                raise
            seg.end = offset + size
            seg.users += 1
            if index is not None:
                self._index[msg_id] = (seg.seq, offset, index[0], index[1])
                seg.live += 1
            return seg, seg.end

    def _rotate(self) -> _Segment:
        """Start a new segment (called with ``_lock`` held).  Its directory entry is
        made durable by the first fdatasync round on it."""
        old = self._current
        self._current = None
        if old is not None:
            self._seal(old)
        with self._dir_locked():
            seq = max(self._segments, default=0)
            for name in os.listdir(self.segments_dir):
                m = _SEGMENT_RE.fullmatch(name)
                if m:
                    seq = max(seq, int(m.group(1), 16))
            while True:
                seq += 1
                path = self._segment_path(seq)
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
                except FileExistsError:
                    continue
                break
            try:
                # Held while this instance may append: no other process deletes
                # the segment, and readers know it may still grow.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                _close_quietly(fd)
                _unlink_quietly(path)
                raise
        seg = _Segment(seq, path, own=True, fd=fd)
        self._segments[seq] = seg
        self._current = seg
        return seg

    def _preallocate(self, seg: _Segment, need: int) -> None:
        """Reserve the file up to ``need`` plus :data:`PREALLOCATE` by writing zeros
        (``_lock`` held; the zeros reach the disk with the next fdatasync).  Best effort: when
        the disk is full the file just grows with each append."""
        target = max(need, min(need + PREALLOCATE, self._segment_size))
        pos = seg.allocated
        fd = seg.fd
        assert fd is not None
        try:
            while pos < target:
                pos += os.pwrite(fd, _ZEROS[:target - pos], pos)
        except OSError:
            target = max(need, pos)
        seg.allocated = target

    def _seal(self, seg: _Segment) -> None:
        """No more appends to ``seg`` (``_lock`` held); close it once nobody waits on it,
        giving back the space reserved past its last record."""
        if self._current is seg:
            self._current = None
        if seg.users == 0 and seg.fd is not None:
            fd, seg.fd = seg.fd, None
            if seg.own and seg.failed is None and seg.allocated > seg.end:
                # On failure readers take zeros past the last record for free space.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, seg.end)
            _close_quietly(fd)

    def _release(self, seg: _Segment) -> None:
        with self._lock:
            seg.users -= 1
            if seg is not self._current:
                self._seal(seg)

    def _sync_segment(self, seg: _Segment) -> None:
        """Worker thread: make every record appended to ``seg`` so far durable.

        fdatasyncs of one segment never overlap, so that an error is seen by the
        round it belongs to: after a failed fdatasync the file's state is unknown,
        and the segment is not used again."""
        with seg.sync_lock:
            if seg.failed is not None:
                raise OSError(seg.failed.errno, seg.failed.strerror, seg.path)
            covers = seg.end
            try:
                assert seg.fd is not None
                _sync_file(seg.fd)
                if not seg.dir_synced:
                    _sync_dir(self.segments_dir)
                    seg.dir_synced = True
            except OSError as exc:
                seg.failed = exc
                raise
            if covers > seg.synced:
                seg.synced = covers

    async def _wait_durable(self, seg: _Segment, end: int) -> None:
        """Return once an fdatasync that started after byte ``end`` of ``seg`` was
        written has completed.

        Whoever finds none running starts one (in a worker thread), which covers
        every record appended so far; everyone else waits for it, then checks
        whether it covered them.  With nobody else in flight, a commit is one
        write on the event loop plus one thread hop."""
        while seg.synced < end:
            if seg.failed is not None:
                err = seg.failed
                raise OSError(err.errno, err.strerror, seg.path) from err
            current = seg.round
            if current is not None:
                await current.wait()
                continue
            current = seg.round = trio.Event()
            try:
                with contextlib.suppress(OSError):   # seg.failed is set: the loop raises it
                    if self.sync_inline is not None and self.sync_inline():
                        # Nobody else to serve: fdatasync on the loop saves the thread
                        # hand-off and wake-up (~40% of a lone commit's latency).
                        self._sync_segment(seg)
                    else:
                        await trio.to_thread.run_sync(self._sync_segment, seg,
                                                      limiter=self._segment_limiter)
            finally:
                seg.round = None
                current.set()

    def _unindex_failed(self, msg_id: str, seg: _Segment) -> None:
        """A commit failed after its record was appended: forget the message and,
        best effort, cancel the record (it may still reach the disk) with a
        removal in a new segment.  That removal becomes durable with the next
        commit; the client was refused and retries, so at worst a duplicate."""
        with self._lock:
            if self._index.pop(msg_id, None) is not None:
                seg.live -= 1
        try:
            head = _encode_record(_KIND_REMOVED, msg_id, seg.seq, b"", b"")
            tomb, _ = self._append(msg_id, (head,), at_least=seg.seq + 1)
        except OSError as exc:
            log.warning("could not record the removal of failed message %s: %s", msg_id, exc)
        else:
            self._release(tomb)


class _DirLock:
    """Exclusive use of ``segments/`` for creating or deleting a segment: a mutex
    between this instance's threads, and an flock on the ``segments/`` directory
    itself between processes."""

    __slots__ = ("spool",)

    def __init__(self, spool: _SegmentLog) -> None:
        self.spool = spool

    def __enter__(self) -> None:
        spool = self.spool
        spool._dir_mutex.acquire()
        try:
            if spool._lock_fd is None:
                spool._lock_fd = os.open(spool.segments_dir, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            fcntl.flock(spool._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            spool._dir_mutex.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        spool = self.spool
        try:
            if spool._lock_fd is not None:
                fcntl.flock(spool._lock_fd, fcntl.LOCK_UN)
        finally:
            spool._dir_mutex.release()
