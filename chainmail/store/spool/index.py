"""The segment log, read side: the index of queued messages (id -> segment, offset,
lengths), kept up to date with the segments other processes write, and where a message is.

A torn tail (a crash during an append) fails its length or CRC checks and is ignored; a
damaged record in the middle of a segment is skipped when its length can be trusted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import zlib
from typing import Iterable

from . import record, segments
from .fileio import _O_CLOEXEC
from .largefiles import _LargeFiles
from .record import (
    _BAD_BODY, _BAD_HEAD, _BAD_META, _HEAD, _HEAD_LEN, _KIND_MESSAGE, _MAGIC, _OK,
    _SCAN_CHUNK, QueuedMessage, SpoolFormatError, _ChunkReader, _decode_meta, _parse_head,
    _read_record, _Record,
)
from .segments import _Segment, _SegmentLog

log = logging.getLogger("chainmail.store.spool")

# Bound by assignment, not imported by name: Python 3.11 compiles a method call on a
# name bound by an import to LOAD_ATTR (a bound method per call) instead of LOAD_METHOD.
_ID_RE = record._ID_RE
_SEGMENT_RE = segments._SEGMENT_RE


def _zeros_to_end(reader: _ChunkReader, pos: int) -> bool:
    """Is everything from ``pos`` to the end of the file zero (preallocated, never written)?"""
    at = pos
    while at < reader.size:
        window = reader.get(at, _SCAN_CHUNK)
        if bytes(window).count(0) != len(window):
            return False
        at += len(window)
    return True


def _find_record_after(reader: _ChunkReader, pos: int) -> int | None:
    """Offset of the first valid record header after ``pos``, if any.  Used only to
    tell a torn tail (nothing valid follows) from damage in the middle of a
    segment; what it finds is never read as a message."""
    at = pos + 1
    while at < reader.size:
        window = reader.get(at, _SCAN_CHUNK)
        hit = bytes(window).find(_MAGIC)
        if hit < 0:
            at += max(1, len(window) - len(_MAGIC) + 1)
            continue
        status, _ = _read_record(reader, at + hit)
        if status in (_OK, _BAD_BODY):
            return at + hit
        at += hit + 1
    return None


class _SegmentIndex(_SegmentLog, _LargeFiles):
    """The part of the spool that knows where each queued message is."""

    _scan_lock: threading.Lock
    _removed_early: dict[int, set[str]]

    def _refresh(self) -> None:
        """Bring the index up to date with segments this instance did not write:
        all of them when it is created, then what other processes appended or
        deleted since."""
        with self._scan_lock:
            try:
                names = os.listdir(self.segments_dir)
            except FileNotFoundError:
                names = []
            present = set()
            for name in names:
                m = _SEGMENT_RE.fullmatch(name)
                if m:
                    present.add(int(m.group(1), 16))
            with self._lock:
                gone = [s for s, seg in self._segments.items() if s not in present and seg.fd is None]
            if gone:
                self._forget_segments(gone)
            for seq in sorted(present):
                with self._lock:
                    seg = self._segments.get(seq)
                    if seg is None:
                        seg = self._segments[seq] = _Segment(seq, self._segment_path(seq))
                if not seg.final:
                    self._scan(seg)

    def _forget_segments(self, seqs: Iterable[int]) -> None:
        gone = set(seqs)
        with self._lock:
            for seq in gone:
                self._segments.pop(seq, None)
                self._removed_early.pop(seq, None)
            for msg_id in [i for i, loc in self._index.items() if loc[0] in gone]:
                del self._index[msg_id]

    def _scan(self, seg: _Segment) -> None:
        """Read the records of another writer's segment from where the last scan stopped."""
        try:
            fd = os.open(seg.path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            self._forget_segments([seg.seq])
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                writing = True  # its writer is alive and may append more
            else:
                writing = False
                fcntl.flock(fd, fcntl.LOCK_UN)
            reader = _ChunkReader(fd, os.fstat(fd).st_size)
            pos = seg.end
            records: list[_Record] = []
            while True:
                status, record = _read_record(reader, pos)
                if status == _OK:
                    assert record is not None
                    records.append(record)
                    pos = record.end
                    continue
                if writing:
                    break  # possibly a record being written: read it next time
                if status == _BAD_BODY:
                    assert record is not None
                    log.warning(
                        "%s: skipping record of message %s at offset %d: body CRC mismatch",
                        seg.path, record.id, pos,
                    )
                    pos = record.end
                    continue
                if status == _BAD_META:
                    # Its length is believed only if the next record starts where
                    # it says it ends.
                    assert record is not None
                    if _read_record(reader, record.end)[0] in (_OK, _BAD_BODY):
                        log.warning(
                            "%s: skipping damaged record (message %s?) at offset %d: "
                            "header CRC mismatch", seg.path, record.id, pos,
                        )
                        pos = record.end
                        continue
                    status = _BAD_HEAD
                # Zeros to the end are space its writer reserved ahead and did not use.
                if pos < reader.size and not _zeros_to_end(reader, pos):
                    found = _find_record_after(reader, pos) if status == _BAD_HEAD else None
                    if found is None:
                        log.info(
                            "%s: ignoring %d bytes of an interrupted write at the end",
                            seg.path, reader.size - pos,
                        )
                    else:
                        seg.damaged = True
                        log.error(
                            "%s: unreadable record at offset %d; the records after it are not "
                            "read, and the file will be kept as %s.damaged",
                            seg.path, pos, os.path.basename(seg.path),
                        )
                seg.final = True
                break
        finally:
            os.close(fd)
        with self._lock:
            seg.end = pos
            index = self._index
            for r in records:
                if r.kind == _KIND_MESSAGE:
                    early = self._removed_early.get(seg.seq)
                    if early is not None and r.id in early:
                        early.discard(r.id)
                    elif r.id not in index:
                        index[r.id] = (seg.seq, r.offset, r.meta_len, r.body_len)
                        seg.live += 1
                else:
                    loc = index.get(r.id)
                    if loc is not None and loc[0] <= seg.seq:
                        del index[r.id]
                        holder = self._segments.get(loc[0])
                        if holder is not None:
                            holder.live -= 1
                    elif loc is None and r.ref in self._segments:
                        holder = self._segments[r.ref]
                        if not holder.final:
                            # Its writer may not have been read this far yet.
                            self._removed_early.setdefault(r.ref, set()).add(r.id)

    # -- reading

    def _check_id(self, msg_id: str) -> None:
        if not isinstance(msg_id, str) or not _ID_RE.fullmatch(msg_id):
            raise KeyError(msg_id)

    def _load_record(
        self, msg_id: str, loc: tuple[int, int, int, int], fds: dict[int, int] | None = None
    ) -> QueuedMessage:
        seq, offset, meta_len, body_len = loc
        path = self._segment_path(seq)
        fd = fds.get(seq) if fds is not None else None
        if fd is None:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            if fds is not None:
                fds[seq] = fd
        try:
            raw = os.pread(fd, _HEAD_LEN + meta_len, offset)
        finally:
            if fds is None:
                os.close(fd)
        parsed = _parse_head(raw)
        if (
            parsed is None
            or len(raw) != _HEAD_LEN + meta_len
            or parsed[1] != msg_id
            or zlib.crc32(memoryview(raw)[_HEAD_LEN:], zlib.crc32(memoryview(raw)[: _HEAD.size]))
            != parsed[6]
        ):
            raise SpoolFormatError(f"{msg_id}: damaged record at offset {offset} of {path}")
        queued_at, envelope = _decode_meta(memoryview(raw)[_HEAD_LEN:], msg_id)
        return QueuedMessage(msg_id, envelope, body_len, queued_at, path, offset + _HEAD_LEN + meta_len)

    def _locate(self, msg_id: str) -> tuple[int, int, int, int] | None:
        """Where ``msg_id`` is in the segment log (None: not there, maybe in queue/)."""
        loc = self._index.get(msg_id)
        if loc is None and not os.path.exists(self._queue_path(msg_id)):
            self._refresh()  # perhaps another process appended it
            loc = self._index.get(msg_id)
        return loc
