"""Connection counts for ``connectionLimit`` and ``connectionLimitPerIP``, exact whichever
worker process a connection lands in.

One process (:class:`LocalLimits`): plain integers, all sessions share one trio loop.

Several worker processes (:class:`SharedLimits`): one file, ``<var>/run/connections``,
mapped by every worker and locked with ``flock`` for each check-and-count (a few
microseconds; only for blocks that set a limit).  Each worker counts in a column of its own,
so when a worker dies the supervisor clears that column (:func:`clear_worker`) and the
counts stay exact; an flock is released by the kernel when its holder dies, so a killed
worker never leaves the table locked.

Layout, in 32-bit words, per server block with a limit::

    totals[W]                                 open connections, per worker
    K entries of [ip (4 words), counts[W]]    per-IP counts, per worker

An address lives in one of :data:`PROBE` entries after its hash; an entry whose counts are
all zero is free.
"""

from __future__ import annotations

import fcntl
import ipaddress
import mmap
import os
import zlib
from collections import Counter

__all__ = ["LocalLimits", "SharedLimits", "SharedTable", "clear_worker"]

ENTRIES = 8192   # per-IP entries per block: distinct addresses connected at once
PROBE = 16       # entries an address may live in


class LocalLimits:
    """The counters of one server block in one process."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.active = 0
        self.by_ip: Counter[str] = Counter()

    def admit(self) -> bool:
        if self.total and self.active >= self.total:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1

    def admit_ip(self, ip: str) -> bool:
        if self.per_ip and self.by_ip[ip] >= self.per_ip:
            return False
        self.by_ip[ip] += 1
        return True

    def release_ip(self, ip: str) -> None:
        self.by_ip[ip] -= 1
        if not self.by_ip[ip]:
            del self.by_ip[ip]


class SharedTable:
    """The mapped file: one region per server block that sets a limit."""

    def __init__(self, path: str, blocks: int, workers: int, *, create: bool = False) -> None:
        self.workers = workers
        self.entry = 4 + workers
        self.block_words = workers + ENTRIES * self.entry
        size = max(1, blocks) * self.block_words * 4
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
        self.fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self.fd, size)   # zeros: nothing counted
        self.map = mmap.mmap(self.fd, size)
        self.words = memoryview(self.map).cast("i")

    def locked(self) -> "_Locked":
        return _Locked(self.fd)

    def clear_column(self, worker: int) -> None:
        """Forget every connection counted by ``worker`` (it died)."""
        words, entry = self.words, self.entry
        with self.locked():
            for base in range(0, len(words), self.block_words):
                words[base + worker] = 0
                for at in range(base + self.workers + 4 + worker, base + self.block_words, entry):
                    words[at] = 0

    def close(self) -> None:
        self.words.release()
        self.map.close()
        os.close(self.fd)


class _Locked:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def clear_worker(path: str, blocks: int, workers: int, worker: int) -> None:
    """The supervisor's side: clear a dead worker's column."""
    table = SharedTable(path, blocks, workers)
    try:
        table.clear_column(worker)
    finally:
        table.close()


class SharedLimits:
    """The counters of one server block across worker processes (see the module text)."""

    def __init__(self, table: SharedTable, block: int, worker: int, total: int, per_ip: int) -> None:
        self.table, self.worker = table, worker
        self.total, self.per_ip = total, per_ip
        self.base = block * table.block_words
        self.by_ip: Counter[str] = Counter()   # this worker's own per-IP counts

    def _sum(self, at: int) -> int:
        words = self.table.words
        return sum(words[at:at + self.table.workers])

    def admit(self) -> bool:
        if not self.total:
            return True
        words, base = self.table.words, self.base
        with self.table.locked():
            if self._sum(base) >= self.total:
                return False
            words[base + self.worker] += 1
        return True

    def release(self) -> None:
        if self.total:
            with self.table.locked():
                self.table.words[self.base + self.worker] -= 1

    def _key(self, ip: str) -> tuple[int, int, int, int]:
        try:
            packed = ipaddress.ip_address(ip.split("%", 1)[0]).packed.rjust(16, b"\0")
        except ValueError:
            packed = zlib.crc32(ip.encode()).to_bytes(16, "little")
        a, b, c, d = (int.from_bytes(packed[i:i + 4], "little", signed=True) for i in range(0, 16, 4))
        return a, b, c, d

    def _slots(self, key) -> range:
        start = zlib.crc32(bytes(str(key), "ascii")) % ENTRIES
        return range(start, start + PROBE)

    def _entry(self, key, create: bool) -> int | None:
        """Word offset of ``key``'s entry (lock held); with ``create``, a free one if it has
        none.  None: not there (or no room)."""
        words, table, base = self.table.words, self.table, self.base
        free = None
        for slot in self._slots(key):
            at = base + table.workers + (slot % ENTRIES) * table.entry
            if tuple(words[at:at + 4]) == key:
                return at
            if free is None and not any(words[at + 4:at + table.entry]):
                free = at
        if create and free is not None:
            words[free:free + 4] = memoryview(bytearray(b"".join(
                k.to_bytes(4, "little", signed=True) for k in key))).cast("i")
            return free
        return None

    def admit_ip(self, ip: str) -> bool:
        if not self.per_ip:
            return True
        key = self._key(ip)
        words, worker = self.table.words, self.worker
        with self.table.locked():
            at = self._entry(key, create=True)
            if at is None:
                return True   # more distinct addresses at once than the table holds
            if self._sum(at + 4) >= self.per_ip:
                return False
            words[at + 4 + worker] += 1
        self.by_ip[ip] += 1
        return True

    def release_ip(self, ip: str) -> None:
        if not self.per_ip or not self.by_ip[ip]:
            self.by_ip.pop(ip, None)
            return
        self.by_ip[ip] -= 1
        if not self.by_ip[ip]:
            del self.by_ip[ip]
        key = self._key(ip)
        with self.table.locked():
            at = self._entry(key, create=False)
            if at is not None and self.table.words[at + 4 + self.worker] > 0:
                self.table.words[at + 4 + self.worker] -= 1
