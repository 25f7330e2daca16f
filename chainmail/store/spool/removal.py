"""Removing messages: a removal record (kind D) per segment message, durable at once or
lazily with the next fdatasync, and deletion of segments that hold no queued message.

A segment file is deleted only when every message in it is removed and every older segment
is already deleted, so a D record always outlives the record it cancels.
"""

from __future__ import annotations

import fcntl
import logging
import os

import trio

from ..durable import sync_dir as _sync_dir
from .fileio import _O_CLOEXEC
from .index import _SegmentIndex
from .record import _KIND_REMOVED, _encode_record
from .segments import _SEGMENT_RE, _Segment

log = logging.getLogger("chainmail.store.spool")


class _Removals(_SegmentIndex):
    """The part of the spool that removes messages and deletes empty segments."""

    #: removals written with aremove(durable=False) and not yet known durable
    _lazy: list[tuple[_Segment, int, int]]

    def _append_removal(self, msg_id: str) -> tuple[_Segment, int, int] | None:
        """Append the removal record of an indexed message; None if it is not indexed."""
        loc = self._locate(msg_id)
        if loc is None:
            return None
        head = _encode_record(_KIND_REMOVED, msg_id, loc[0], b"", b"")
        with self._lock:
            # Unindex first, under the same lock as the append: a concurrent
            # remove() of the same id gets KeyError rather than a second record.
            if self._index.get(msg_id) != loc:
                return None
            del self._index[msg_id]
            holder = self._segments.get(loc[0])
            if holder is not None:
                holder.live -= 1
        try:
            # The removal goes to a segment at least as new as the message's, so
            # that it is deleted no earlier than the message (see _delete_dead).
            seg, end = self._append(msg_id, (head,), at_least=loc[0])
        except BaseException:
            self._reindex(msg_id, loc)
            raise
        return seg, end, loc[0]

    def _reindex(self, msg_id: str, loc: tuple[int, int, int, int]) -> None:
        with self._lock:
            holder = self._segments.get(loc[0])
            if holder is not None and msg_id not in self._index:
                self._index[msg_id] = loc
                holder.live += 1

    def remove(self, msg_id: str) -> None:
        """Durably remove ``msg_id`` from the queue.  A segment message gets a
        removal record, fdatasynced before this returns; a large message's file
        is unlinked and ``queue/`` fsynced.  Blocks: from trio, prefer
        :meth:`aremove`, whose fdatasync is shared with concurrent commits."""
        self._check_id(msg_id)
        appended = self._append_removal(msg_id)
        if appended is None:
            self._remove_file(msg_id)
            return
        seg, _, holder = appended
        try:
            self._sync_segment(seg)
        finally:
            self._release(seg)
        self._delete_dead(holder)

    async def aremove(self, msg_id: str, *, durable: bool = True) -> None:
        """:meth:`remove` for trio code: the fdatasync is group-committed with
        concurrent commits and removals, and no blocking call runs on the event loop.

        ``durable=False`` returns once the removal record is written: it becomes
        durable with the next commit's fdatasync, or at :meth:`sync_removals`.  For a
        consumer whose work is already durable elsewhere (a delivered mail): a crash
        before then processes the message again (at least once), and the removal
        costs no fdatasync of its own."""
        self._check_id(msg_id)
        appended = self._append_removal(msg_id)
        if appended is None:
            await trio.to_thread.run_sync(self._remove_file, msg_id, limiter=self._limiter)
            return
        seg, end, holder = appended
        if not durable:
            self._lazy.append((seg, end, holder))
            return
        try:
            with trio.CancelScope(shield=True):
                await self._wait_durable(seg, end)
        finally:
            self._release(seg)
        if self._deletable_head(holder):
            await trio.to_thread.run_sync(self._delete_dead, holder, limiter=self._dir_limiter)

    @property
    def removals_pending(self) -> bool:
        """Whether removals made with ``durable=False`` wait for :meth:`sync_removals`."""
        return bool(self._lazy)

    async def sync_removals(self) -> None:
        """Make the removals made with ``durable=False`` so far durable (one fdatasync per
        segment, shared with concurrent commits; none if a commit already covered them)."""
        pending, self._lazy = self._lazy, []
        for seg, end, holder in pending:
            try:
                with trio.CancelScope(shield=True):
                    await self._wait_durable(seg, end)
            except OSError as exc:
                log.warning("could not make removals durable in %s: %s", seg.path, exc)
            finally:
                self._release(seg)
            if self._deletable_head(holder):
                await trio.to_thread.run_sync(self._delete_dead, holder, limiter=self._dir_limiter)

    def _deletable_head(self, seq: int) -> bool:
        """Cheap check: is segment ``seq`` empty and the oldest one known?"""
        with self._lock:
            seg = self._segments.get(seq)
            return (
                seg is not None
                and seg.live == 0
                and seg is not self._current
                and seq == min(self._segments)
            )

    def _delete_dead(self, seq: int | None = None) -> int:
        """Delete segments from the oldest on while they hold no queued message.

        A segment is deleted only when every message in it was removed and every
        older segment is already gone, and each deletion is made durable before
        the next: a removal record is always in a segment at least as new as the
        message, so it never disappears before the message does.  Returns how
        many segments were deleted."""
        if seq is not None and not self._deletable_head(seq):
            return 0
        deleted = 0
        while True:
            # _lock is never taken inside the directory lock (_rotate takes them
            # the other way round); the fields read here only change under it
            # for segments that are still open or not read to their end.
            with self._dir_locked():
                seqs = sorted(
                    int(m.group(1), 16)
                    for m in map(_SEGMENT_RE.fullmatch, os.listdir(self.segments_dir))
                    if m
                )
                if not seqs:
                    break
                oldest = seqs[0]
                seg = self._segments.get(oldest)
                if seg is None or seg.live != 0 or seg is self._current or seg.fd is not None:
                    break
                try:
                    fd = os.open(seg.path, os.O_RDONLY | _O_CLOEXEC)
                except FileNotFoundError:
                    fd = -1  # deleted by another process
                if fd >= 0:
                    try:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            break  # another process still writes it
                        if not seg.final:
                            break  # not read to its end yet: it may hold a message
                        if seg.damaged:
                            os.rename(seg.path, seg.path + ".damaged")
                        else:
                            os.unlink(seg.path)
                    finally:
                        os.close(fd)
            self._forget_segments([oldest])
            if fd >= 0:
                _sync_dir(self.segments_dir)
                deleted += 1
        return deleted
