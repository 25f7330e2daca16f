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

Segment record (version 1)::

    header, 64 bytes, little-endian:
        magic "CMSR", version 1, kind "M" | "D", 1 pad byte,
        ref (u64: for D, the sequence number of the segment holding the message),
        meta length (u32), body length (u32), id (33 ASCII bytes),
        body CRC32 (u32), head CRC32 (u32, over the first 60 header bytes and the meta)
    meta: UTF-8 JSON {"id", "queued_at", "envelope"} (empty for D)
    body: exactly as received

A torn tail (a crash during an append) fails its length or CRC checks and is
ignored.  Removing a message appends a D record; a segment file is deleted only
when every message in it is removed and every older segment is already
deleted, so a D record always outlives the record it cancels.

See docs/storage.md.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import re
import secrets
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import trio

from .durable import sync_dir as _sync_dir

__all__ = [
    "BUFFER_LIMIT",
    "FORMAT_VERSION",
    "SEGMENT_SIZE",
    "DirectorySpool",
    "Envelope",
    "QueuedMessage",
    "SpoolFormatError",
    "SpoolWriter",
]

log = logging.getLogger("chainmail.store.spool")

#: Version of the one-file-per-message format (``queue/<id>``).
FORMAT_VERSION = 1
#: Version of the segment record format.
RECORD_VERSION = 1
#: Bytes a writer keeps in memory before it writes them to its temporary file.
#: A message that stays within it is committed as one segment record.
BUFFER_LIMIT = 256 * 1024
#: A segment is closed, and the next one started, once it reaches this size.
SEGMENT_SIZE = 64 * 1024 * 1024
#: Worker threads used for file fsyncs of large messages when no limiter is given.
DEFAULT_SYNC_THREADS = 16

_FOOTER_LEN = 40
_FOOTER_PREFIX = b"\nCMSPOOL "
_ID_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{20}")
_ID_LEN = 33
_SEGMENT_RE = re.compile(r"([0-9a-f]{16})\.log")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC

_MAGIC = b"CMSR"
_KIND_MESSAGE = ord("M")
_KIND_REMOVED = ord("D")
_HEAD = struct.Struct("<4sBBxQII33sI")  # everything but the head CRC
_CRC = struct.Struct("<I")
_HEAD_LEN = _HEAD.size + _CRC.size
assert _HEAD_LEN == 64
_MAX_META = 16 * 1024 * 1024
_MAX_RECORD_BODY = 0xFFFFFFFF
_SCAN_CHUNK = 1024 * 1024
#: A segment's file is extended with written zeros this much ahead of its records, so that an
#: fdatasync after an append has no block allocation or extent conversion to record.  Measured
#: per append + fdatasync on ext4 here: 204 µs growing the file, ~170 µs ahead with
#: posix_fallocate (unwritten extents, converted on first write), ~150 µs ahead with written
#: zeros.  Cut back to the records when the segment is closed.
PREALLOCATE = 1024 * 1024
_ZEROS = memoryview(bytes(PREALLOCATE))
#: open_body() reads segment bodies up to this size at once and checks their CRC.
_READ_WHOLE = 4 * 1024 * 1024


_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
#: seconds: processes sharing a spool take another's message from a listing only once it is
#: this old (by its id); the process that committed it takes it at once
ADOPT_AFTER = 2.0


def message_age(msg_id: str) -> float:
    """Seconds since the message began to arrive (its id's time)."""
    try:
        return time.time() - int(msg_id[:12], 16) / 1000
    except ValueError:
        return float("inf")



def _ofd_lock(fd: int, start: int, length: int) -> bool:
    """A non-blocking open-file-description write lock on ``length`` bytes at ``start``
    (0: to the end): per open file, unlike POSIX record locks, so closing another
    descriptor of the same file in this process does not drop it."""
    arg = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, arg)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class Claim:
    """A message held for processing (see :meth:`DirectorySpool.claim`)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _close_quietly(fd)


class SpoolFormatError(ValueError):
    """A message in the queue is not stored in a valid format."""


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
        # Written for each message: json.dumps serialises the nested containers itself, so
        # no deep copy (dataclasses.asdict) is needed.
        return {"sender": self.sender, "recipients": self.recipients,
                "mail_params": self.mail_params, "rcpt_params": self.rcpt_params,
                "attributes": self.attributes, "state": self.state,
                "error_count": self.error_count}

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
    path: str  # the segment file holding the message, or its queue/ file
    offset: int = 0  # where the body starts in ``path``


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

    def _sync_file(fd: int) -> None:
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)

else:
    # fdatasync also flushes the size and block map of a file, which is all
    # that is needed to read it back.
    _sync_file = getattr(os, "fdatasync", os.fsync)



def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _encode_meta(msg_id: str, envelope: Envelope, queued_at: float) -> bytes:
    doc = {"id": msg_id, "queued_at": queued_at, "envelope": envelope.to_dict()}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode_meta(meta: bytes | memoryview, msg_id: str) -> tuple[float, Envelope]:
    try:
        doc = json.loads(bytes(meta).decode("utf-8"))
        envelope = Envelope.from_dict(doc["envelope"])
        queued_at = float(doc["queued_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolFormatError(f"{msg_id}: bad envelope: {exc}") from None
    if doc.get("id") != msg_id:
        raise SpoolFormatError(f"{msg_id}: record holds message {doc.get('id')!r}")
    return queued_at, envelope


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


# ------------------------------------------------------------ segment records


def _encode_record(kind: int, msg_id: str, ref: int, meta: bytes, body: bytes | bytearray) -> bytes:
    """The header of a record; the record is header + meta + body."""
    head = _HEAD.pack(
        _MAGIC, RECORD_VERSION, kind, ref, len(meta), len(body), msg_id.encode("ascii"),
        zlib.crc32(body),
    )
    return head + _CRC.pack(zlib.crc32(meta, zlib.crc32(head)))


@dataclass(frozen=True)
class _Record:
    kind: int
    id: str
    ref: int
    offset: int  # of the header
    meta_len: int
    body_len: int
    body_crc: int

    @property
    def end(self) -> int:
        return self.offset + _HEAD_LEN + self.meta_len + self.body_len


def _parse_head(head: bytes | memoryview) -> tuple[int, str, int, int, int, int, int] | None:
    """(kind, id, ref, meta length, body length, body CRC, head CRC) of a plausible
    header, or None."""
    if len(head) < _HEAD_LEN or bytes(head[:4]) != _MAGIC:
        return None
    magic, version, kind, ref, meta_len, body_len, raw_id, body_crc = _HEAD.unpack_from(head)
    (head_crc,) = _CRC.unpack_from(head, _HEAD.size)
    if version != RECORD_VERSION or kind not in (_KIND_MESSAGE, _KIND_REMOVED):
        return None
    if meta_len > _MAX_META:
        return None
    try:
        msg_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _ID_RE.fullmatch(msg_id):
        return None
    return kind, msg_id, ref, meta_len, body_len, body_crc, head_crc


class _ChunkReader:
    """pread() through a read-ahead window, for scanning a segment front to back."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._base = 0
        self._buf = b""

    def get(self, offset: int, n: int) -> memoryview:
        """Bytes ``[offset, offset + n)``, fewer at the end of the file."""
        n = max(0, min(n, self.size - offset))
        start = offset - self._base
        if 0 <= start and start + n <= len(self._buf):
            return memoryview(self._buf)[start : start + n]
        if n > _SCAN_CHUNK:
            return memoryview(os.pread(self.fd, n, offset))
        self._buf = os.pread(self.fd, min(_SCAN_CHUNK, self.size - offset), offset)
        self._base = offset
        return memoryview(self._buf)[:n]


_OK, _INCOMPLETE, _BAD_HEAD, _BAD_META, _BAD_BODY = range(5)


def _read_record(reader: _ChunkReader, pos: int) -> tuple[int, _Record | None]:
    """Check the record at ``pos``: (status, record).  The record is given for
    ``_OK``, for ``_BAD_BODY`` (its header, and so its length, can be trusted) and
    for ``_BAD_META`` (the head CRC failed: its length is only a guess)."""
    if reader.size - pos < _HEAD_LEN:
        return _INCOMPLETE, None
    head = reader.get(pos, _HEAD_LEN)
    parsed = _parse_head(head)
    if parsed is None:
        return _BAD_HEAD, None
    kind, msg_id, ref, meta_len, body_len, body_crc, head_crc = parsed
    if pos + _HEAD_LEN + meta_len > reader.size:
        return _INCOMPLETE, None
    meta = reader.get(pos + _HEAD_LEN, meta_len)
    record = _Record(kind, msg_id, ref, pos, meta_len, body_len, body_crc)
    if zlib.crc32(meta, zlib.crc32(head[: _HEAD.size])) != head_crc:
        return (_BAD_META, record) if record.end <= reader.size else (_BAD_HEAD, None)
    if record.end > reader.size:
        return _INCOMPLETE, None
    if kind == _KIND_REMOVED and (meta_len or body_len):
        return _BAD_HEAD, None
    if zlib.crc32(reader.get(pos + _HEAD_LEN + meta_len, body_len)) != body_crc:
        return _BAD_BODY, record
    return _OK, record


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


class _BodyReader(io.RawIOBase):
    """Reads ``size`` bytes of a file from ``start``, and nothing past them."""

    def __init__(self, fd: int, size: int, start: int = 0) -> None:
        self._fd = fd
        self._size = size
        self._start = start
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = min(len(b), self._size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._start + self._pos)
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

        Raises ``OSError`` (nothing is left in the queue) if any write, fsync or
        rename failed.  Once started, the commit is shielded from cancellation
        so that the file system and the reply stay in agreement.
        """
        if self._state is not _OPEN:
            raise RuntimeError(f"spool writer {self.id} is {self._state}")
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._error is not None:
                raise self._error
            meta = _encode_meta(self.id, envelope, time.time())
        except BaseException:
            self.abort()
            raise
        self._state = _COMMITTING
        fd, buf = self._fd, self._buf
        self._fd, self._buf = None, bytearray()
        try:
            with trio.CancelScope(shield=True):
                if fd is None and len(buf) <= _MAX_RECORD_BODY:
                    await self._spool._commit_record(self.id, meta, buf)
                else:
                    tail = meta + _footer(self.size, len(meta))
                    await self._spool._commit_file(self.id, fd, buf, tail)
        except BaseException:
            self._state = _ABORTED
            raise
        self._state = _COMMITTED
        for listener in self._spool.commit_listeners:
            try:
                listener(self.id)
            except Exception:   # the message is durable whatever a listener does
                log.exception("%s: commit listener failed", self.id)
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
            _close_quietly(fd)
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


class DirectorySpool:
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

    def _tmp_path(self, msg_id: str) -> str:
        return os.path.join(self.tmp_dir, msg_id)

    def _queue_path(self, msg_id: str) -> str:
        return os.path.join(self.queue_dir, msg_id)

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.segments_dir, f"{seq:016x}.log")

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
        try:
            while pos < target:
                pos += os.pwrite(seg.fd, _ZEROS[:target - pos], pos)
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
                try:
                    os.ftruncate(fd, seg.end)
                except OSError:
                    pass  # readers take zeros past the last record for free space
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
                if self.sync_inline is not None and self.sync_inline():
                    # Nobody else to serve: fdatasync on the loop saves the thread
                    # hand-off and wake-up (~40% of a lone commit's latency).
                    self._sync_segment(seg)
                else:
                    await trio.to_thread.run_sync(self._sync_segment, seg,
                                                  limiter=self._segment_limiter)
            except OSError:
                pass  # seg.failed is set: the loop raises it
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

    # -- large messages: one file each in queue/

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

    # -- segment log: scanning

    def _dir_locked(self) -> _DirLock:
        return _DirLock(self)

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
                if pos < reader.size and _zeros_to_end(reader, pos):
                    pass  # space its writer reserved ahead and did not use
                elif pos < reader.size:
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

    def _load_file(self, msg_id: str) -> QueuedMessage:
        path = self._queue_path(msg_id)
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            size, queued_at, envelope = _read_meta(fd, msg_id)
        finally:
            os.close(fd)
        return QueuedMessage(msg_id, envelope, size, queued_at, path)

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

    def _queue_ids(self) -> list[str]:
        with os.scandir(self.queue_dir) as entries:
            return [e.name for e in entries if _ID_RE.fullmatch(e.name)]

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

    def _locate(self, msg_id: str) -> tuple[int, int, int, int] | None:
        """Where ``msg_id`` is in the segment log (None: not there, maybe in queue/)."""
        loc = self._index.get(msg_id)
        if loc is None and not os.path.exists(self._queue_path(msg_id)):
            self._refresh()  # perhaps another process appended it
            loc = self._index.get(msg_id)
        return loc

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

    # -- removal

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

    def claim(self, msg_id: str) -> "Claim | None":
        """The exclusive right, among every process sharing this spool, to process
        ``msg_id`` and remove it: an open-file-description lock on its record (or its
        file), which the kernel releases if the holder dies.  ``None`` if another process
        holds it, or the message is gone (checked after the lock is taken, so a message
        another process has just finished is never taken again).  Release it after the
        removal."""
        loc = self._locate(msg_id)
        if loc is not None:
            path, start, length = self._segment_path(loc[0]), loc[1], 1
        else:
            path, start, length = self._queue_path(msg_id), 0, 0
        try:
            fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if not _ofd_lock(fd, start, length):
                _close_quietly(fd)
                return None
            if self.shared and loc is not None and message_age(msg_id) >= ADOPT_AFTER / 2:
                # Another process may have taken and removed it before our lock (workers
                # adopt only messages at least ADOPT_AFTER old, so a younger one is ours).
                self._refresh()
                if self._index.get(msg_id) != loc:
                    _close_quietly(fd)
                    return None
            elif loc is None and not os.path.exists(path):
                _close_quietly(fd)
                return None
        except BaseException:
            _close_quietly(fd)
            raise
        return Claim(fd)

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

    def _remove_file(self, msg_id: str) -> None:
        try:
            os.unlink(self._queue_path(msg_id))
        except FileNotFoundError:
            raise KeyError(msg_id) from None
        _sync_dir(self.queue_dir)

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


class _DirLock:
    """Exclusive use of ``segments/`` for creating or deleting a segment: a mutex
    between this instance's threads, and an flock on the ``segments/`` directory
    itself between processes."""

    __slots__ = ("spool",)

    def __init__(self, spool: DirectorySpool) -> None:
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
