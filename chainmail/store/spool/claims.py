"""Claims: which of the processes sharing a spool handles a message.

A claim is an open-file-description lock on the message's record (or its file), which the
kernel releases if the holder dies, so a message is never lost with a crashed worker.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from .fileio import _O_CLOEXEC, _close_quietly
from .index import _SegmentIndex

__all__ = ["ADOPT_AFTER", "Claim", "message_age"]

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


class _Claims(_SegmentIndex):
    """The part of the spool that hands out claims."""

    #: other processes process this spool too (worker processes)
    shared: bool

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
