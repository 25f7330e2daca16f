"""Receiving one message: :class:`SpoolWriter` buffers the body in memory up to a bound,
streams the rest to ``tmp/``, and commits it as a segment record or a large file."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Protocol

import trio

from .fileio import _CREATE_FLAGS, _close_quietly, _unlink_quietly, _write_all
from .largefiles import _footer
from .record import _MAX_RECORD_BODY, Envelope, _encode_meta

__all__ = ["BUFFER_LIMIT", "SpoolUnavailable", "SpoolWriter"]

log = logging.getLogger("chainmail.store.spool")

#: Bytes a writer keeps in memory before it writes them to its temporary file.
#: A message that stays within it is committed as one segment record.
BUFFER_LIMIT = 256 * 1024

#: The most of a header section ``rewrite_head`` looks at.
HEAD_LIMIT = 1024 * 1024

class SpoolUnavailable(OSError):
    """The queue did not take the message (a shared queue's broker did not confirm it): it
    is not accepted, and the client should try again later (``451 4.3.0``)."""


_OPEN, _COMMITTING, _COMMITTED, _ABORTED = "open", "committing", "committed", "aborted"


class _Committer(Protocol):
    """What a writer needs from its spool."""

    commit_listeners: list[Callable[[str], None]]

    def _tmp_path(self, msg_id: str) -> str: ...

    async def _commit_record(self, msg_id: str, meta: bytes, body: bytearray) -> None: ...

    async def _commit_file(self, msg_id: str, fd: int | None, buf: bytearray, tail: bytes) -> None: ...


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

    def __init__(self, spool: _Committer, msg_id: str, limit: int) -> None:
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

    @property
    def spilled(self) -> bool:
        """True once the message went to the temporary file (more than the buffer limit)."""
        return self._fd is not None

    def contents(self) -> bytes:
        """Everything written so far, for filters that read the whole message after DATA
        (bounded by the server's ``maxmessagesize``).  Reads the temporary file when the
        message spilled to it."""
        if self._state is not _OPEN:
            raise RuntimeError(f"spool writer {self.id} is {self._state}")
        if self._error is not None:
            raise self._error
        if self._fd is None:
            return bytes(self._buf)
        with open(self._spool._tmp_path(self.id), "rb") as spilled:
            return spilled.read() + bytes(self._buf)

    def rewrite_head(self, edit: Callable[[bytes], bytes]) -> None:
        """Replace the message's header section by ``edit(header section)``: the fields a
        filter adds on top or removes once the whole message is known
        (``IncomingMessage.add_header``/``remove_header``).  The header section is everything
        before the empty line (at most :data:`HEAD_LIMIT` bytes are looked at; a longer one
        is edited in its first part only).  A spilled message's file is rewritten (blocking
        I/O: call it from a worker thread then)."""
        if self._state is not _OPEN:
            raise RuntimeError(f"spool writer {self.id} is {self._state}")
        if self._error is not None:
            return
        if self._fd is None:
            head_len = header_length(self._buf)
            new_head = edit(bytes(self._buf[:head_len]))
            self._buf[0:head_len] = new_head
            self.size += len(new_head) - head_len
            return
        path = self._spool._tmp_path(self.id)
        try:
            with open(path, "rb") as spilled:
                start = spilled.read(HEAD_LIMIT)
            head_len = header_length(start)
            new_head = edit(start[:head_len])
            fd = _rewrite_file(path, new_head, head_len)
        except OSError as exc:
            self._discard()
            self._error = exc
            return
        _close_quietly(self._fd)
        self._fd = fd
        self.size += len(new_head) - head_len

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


def header_length(data: bytes | bytearray) -> int:
    """The length of the header section at the start of ``data``: up to and including the
    CRLF of its last field, the empty line excluded (all of ``data``, up to
    :data:`HEAD_LIMIT`, when it has no empty line)."""
    if data[:2] == b"\r\n":
        return 0
    end = data.find(b"\r\n\r\n", 0, HEAD_LIMIT)
    return end + 2 if end >= 0 else min(len(data), HEAD_LIMIT)


def _rewrite_file(path: str, head: bytes, old_head_len: int) -> int:
    """Replace the file at ``path`` by ``head`` + its content after ``old_head_len`` bytes;
    the new file's descriptor, positioned at its end, is returned (the old one is left to
    the caller to close)."""
    new_path = path + ".rewritten"
    fd = os.open(new_path, _CREATE_FLAGS, 0o600)
    try:
        _write_all(fd, (head,))
        with open(path, "rb") as old:
            old.seek(old_head_len)
            while chunk := old.read(1 << 20):
                _write_all(fd, (chunk,))
        os.replace(new_path, path)
    except BaseException:
        _close_quietly(fd)
        _unlink_quietly(new_path)
        raise
    return fd
