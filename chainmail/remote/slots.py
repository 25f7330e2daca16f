"""A limit on concurrent delivery attempts that gives a freed slot to the waiter with the
highest priority (the first to ask, among equals), where ``trio.CapacityLimiter`` would give
it to the first to ask."""

from __future__ import annotations

import heapq
import itertools
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

__all__ = ["PrioritySlots"]


class PrioritySlots:
    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.busy = 0
        self._waiting: list[list[Any]] = []   # heap of [-priority, order, event, cancelled]
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiting if not w[3])

    @asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``."""
        if self.busy < self.total and not self.waiting:
            self.busy += 1
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                self._release()
                raise
        else:
            waiter: list[Any] = [-priority, next(self._order), trio.Event(), False]
            heapq.heappush(self._waiting, waiter)
            try:
                await waiter[2].wait()
            except BaseException:
                if waiter[2].is_set():   # handed the slot as it was cancelled: pass it on
                    self._release()
                else:
                    waiter[3] = True     # skipped when a slot is freed
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Hand the slot to the best waiter still waiting, else free it."""
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter[3]:
                waiter[2].set()
                return
        self.busy -= 1
