"""Durable spool: the embedded default mail queue.

A message is accepted (``250`` after DATA) only once :meth:`SpoolWriter.commit`
has returned: by then its envelope and body are on stable storage.  A message
that is aborted, cut off or fails to write leaves nothing in the queue.

Two places hold accepted messages:

* **Segment log** (every message that fits the writer's memory bound, 256 KiB
  by default): the message is one record, appended with a single write to the
  current segment file, then made durable by an ``fdatasync`` of that file that
  is shared by every record appended before it started (group commit).  No
  file is created, renamed or unlinked per message.
* **One file per message** (larger messages, already streaming to ``tmp/``):
  fsynced, renamed into ``queue/``, and ``queue/`` fsynced (also group
  committed); the file creation is amortised over a large body.

Layout under the spool root::

    segments/<seq, 16 hex>.log  records: messages (kind M) and removals (kind D)
    tmp/<id>                    a large message being received
    queue/<id>                  a large message, accepted

The modules of this package each do one part: see its ``__init__``.
See docs/storage.md.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import zlib
from typing import BinaryIO, Callable

import trio

from ..durable import sync_dir as _sync_dir
from .claims import _Claims
from .fileio import _O_CLOEXEC, _BodyReader, _close_quietly
from .ids import new_id
from .largefiles import DEFAULT_SYNC_THREADS, _read_meta, _SyncRound
from .record import _HEAD_LEN, QueuedMessage, SpoolFormatError, _parse_head
from .removal import _Removals
from .segments import SEGMENT_SIZE, _Segment
from .writer import BUFFER_LIMIT, SpoolWriter

__all__ = ["DirectorySpool"]

log = logging.getLogger("chainmail.store.spool")

#: open_body() reads segment bodies up to this size at once and checks their CRC.
_READ_WHOLE = 4 * 1024 * 1024


class DirectorySpool(_Removals, _Claims):
    """The queue: a segment log for messages up to the buffer limit and a directory
    of one-file messages for larger ones.

    One instance serves one trio run (one process); several processes may share a
    spool directory.  Each writes its own segments, and reads the others' by
    scanning them (``list()``, ``ids()`` and a ``get()`` of an unknown id pick up
    what other processes appended).  ``limiter`` bounds the worker threads that
    finish and fsync large message files (default: a private limiter of
    ``DEFAULT_SYNC_THREADS``); segment and directory fsyncs run in threads of
    their own so they never queue behind those.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        limiter: trio.CapacityLimiter | None = None,
        buffer_limit: int = BUFFER_LIMIT,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.queue_dir = os.path.join(self.root, "queue")
        self.segments_dir = os.path.join(self.root, "segments")
        created = False
        for path in (self.root, self.tmp_dir, self.queue_dir, self.segments_dir):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
                created = True
        if created:
            _sync_dir(self.root)
            _sync_dir(os.path.dirname(self.root))
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(DEFAULT_SYNC_THREADS)
        self._dir_limiter = trio.CapacityLimiter(1)
        self._segment_limiter = trio.CapacityLimiter(4)
        self._buffer_limit = buffer_limit
        self._segment_size = segment_size
        # large messages: renames into queue/ and their directory fsyncs
        self._renamed = 0
        self._synced = 0
        self._round: _SyncRound | None = None
        self._in_flight = 0
        self._closed = False
        #: set by the server: true when no other session is open, so a commit may fdatasync
        #: on the event loop instead of in a worker thread
        self.sync_inline: Callable[[], bool] | None = None
        #: called with each id this process commits, right after the commit (on its trio
        #: thread): lets a consumer in the same process start at once instead of at its
        #: next listing
        self.commit_listeners: list[Callable[[str], None]] = []
        # segment log
        self._lock = threading.Lock()  # appends, the index and segment bookkeeping
        self._scan_lock = threading.Lock()  # one scan of other writers' segments at a time
        self._dir_mutex = threading.Lock()  # with an flock on segments/: creation and deletion
        self._lock_fd: int | None = None
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        #: id -> (segment seq, record offset, meta length, body length)
        self._index: dict[str, tuple[int, int, int, int]] = {}
        #: other processes process this spool too (worker processes): a claim checks
        #: again, once locked, that the message is still queued
        self.shared = False
        #: removals written with aremove(durable=False) and not yet known durable
        self._lazy: list[tuple[_Segment, int, int]] = []
        #: removals read before the message they cancel (another writer's race), by segment
        self._removed_early: dict[int, set[str]] = {}
        self._refresh()

    # -- receiving

    def open_writer(self) -> SpoolWriter:
        if self._closed:
            raise RuntimeError("spool is closed")
        return SpoolWriter(self, new_id(), self._buffer_limit)

    def ids(self) -> list[str]:
        """Ids of the queued messages, oldest first, without reading any envelope."""
        self._refresh()
        with self._lock:
            ids = list(self._index)
        ids.extend(self._queue_ids())
        return sorted(ids)

    def list(self) -> list[QueuedMessage]:
        """Every queued message, oldest first (by id: the time it began to arrive)."""
        out = []
        fds: dict[int, int] = {}
        try:
            for msg_id in self.ids():
                loc = self._index.get(msg_id)
                try:
                    if loc is not None:
                        out.append(self._load_record(msg_id, loc, fds))
                    else:
                        out.append(self._load_file(msg_id))
                except FileNotFoundError:
                    continue  # removed meanwhile
                except SpoolFormatError as exc:
                    log.warning("skipping unreadable queued message: %s", exc)
        finally:
            for fd in fds.values():
                os.close(fd)
        return out

    def get(self, msg_id: str) -> QueuedMessage:
        """The queued message ``msg_id``; ``KeyError`` if there is none."""
        self._check_id(msg_id)
        loc = self._locate(msg_id)
        try:
            return self._load_record(msg_id, loc) if loc is not None else self._load_file(msg_id)
        except FileNotFoundError:
            raise KeyError(msg_id) from None

    def open_body(self, msg_id: str) -> BinaryIO:
        """A binary file object reading exactly the body of ``msg_id``.  A segment
        body is checked against its CRC when it is opened."""
        self._check_id(msg_id)
        loc = self._locate(msg_id)
        if loc is not None:
            seq, offset, meta_len, body_len = loc
            path = self._segment_path(seq)
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                raise KeyError(msg_id) from None
            try:
                head = os.pread(fd, _HEAD_LEN, offset)
                parsed = _parse_head(head)
                if parsed is None or parsed[1] != msg_id or parsed[4] != body_len:
                    raise SpoolFormatError(f"{msg_id}: damaged record at offset {offset} of {path}")
                start = offset + _HEAD_LEN + meta_len
                if body_len > _READ_WHOLE:
                    reader = _BodyReader(fd, body_len, start)
                    fd = -1
                    return io.BufferedReader(reader, buffer_size=64 * 1024)  # type: ignore[return-value]
                body = os.pread(fd, body_len, start)
                if len(body) != body_len or zlib.crc32(body) != parsed[5]:
                    raise SpoolFormatError(f"{msg_id}: body CRC mismatch in {path}")
                return io.BytesIO(body)
            finally:
                if fd >= 0:
                    os.close(fd)
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

    def read_small(self, msg_id: str, limit: int = 256 * 1024) -> tuple[QueuedMessage, bytes] | None:
        """The queued message and its body, if it is a segment record of at most ``limit``
        bytes this instance knows (reads from the page cache: cheap enough for the event
        loop); ``None`` otherwise (read it with :meth:`get` and :meth:`open_body`)."""
        loc = self._index.get(msg_id)
        if loc is None or loc[3] > limit:
            return None
        try:
            queued = self._load_record(msg_id, loc)
            with self.open_body(msg_id) as fh:
                return queued, fh.read()
        except (FileNotFoundError, KeyError):
            return None

    # -- maintenance

    def recover(self) -> int:
        """Clean up after an interrupted run; call at start-up, before any writer is
        open.  Deletes the temp files of large messages that were being received
        (returned: how many), and segments that hold no queued message.  The
        segments of the previous run are never appended to again (a torn tail is
        ignored when they are read); the first commit starts a new one."""
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
        self._refresh()
        deleted = self._delete_dead()
        if deleted:
            log.info("spool recovery deleted %d segment(s) without queued messages", deleted)
        return removed

    async def aclose(self) -> None:
        """Refuse new writers.  There are no background tasks to stop: commits in
        flight finish on their own (they are shielded).  The current segment is
        closed once they have."""
        self._closed = True
        with self._lock:
            if self._current is not None:
                self._seal(self._current)
            lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            _close_quietly(lock_fd)
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<DirectorySpool {self.root}>"
