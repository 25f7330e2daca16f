"""Low-level file I/O of the spool: whole writes, data syncs, quiet clean-up, and a reader
bounded to one body inside a larger file."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sys
from typing import Any, Sequence

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC


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
    with contextlib.suppress(OSError):
        os.unlink(path)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


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
