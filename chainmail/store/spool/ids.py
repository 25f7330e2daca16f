"""Queue ids: one name per message, from the ``250`` reply to its removal, that sorts by the
time the message began to arrive."""

from __future__ import annotations

import secrets
import threading
import time

__all__ = ["new_id"]

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
