"""Held messages: queue ids an operator stopped (``chainmail queue hold``) until released.

A hold is a file ``<var>/held/<queue id>``, so that it reaches a server that may or may not
be running and survives a restart.  The spool workers and every outgoing queue consult
:meth:`HoldList.is_held` before they take a message; a message already being processed
when it is held finishes that attempt.  Holding an id also holds the copies the container
made of it (``<id>-<n>``) and every retry of it, since they all carry the same queue id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

__all__ = ["HoldList", "HELD_DIR", "valid_queue_id"]

HELD_DIR = "held"
#: a spool id, optionally followed by the suffixes of the copies made of it
_QUEUE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{20}(?:[-.][0-9a-z]+)*")
_BASE_LEN = 33
#: seconds between two looks at the directory (a hold takes effect within this)
RECHECK = 0.5


def valid_queue_id(queue_id: str) -> bool:
    """Whether ``queue_id`` has the form of a queue id (safe as a file name)."""
    return bool(_QUEUE_ID.fullmatch(queue_id))


class HoldList:
    """The holds under ``<var>/held``; cheap to ask (the directory is read at most every
    :data:`RECHECK` seconds)."""

    def __init__(self, var: str | os.PathLike[str]) -> None:
        self.dir = os.path.join(os.fspath(var), HELD_DIR)
        self._held: frozenset[str] = frozenset()
        self._checked = -RECHECK

    def _path(self, queue_id: str) -> str:
        if not valid_queue_id(queue_id):
            raise ValueError(f"{queue_id!r} is not a queue id (expected the id of a 250 reply, "
                             "such as 0190a1b2c3d4-0000a1b2c3d4e5f6a7b8)")
        return os.path.join(self.dir, queue_id)

    def hold(self, queue_id: str, reason: str = "") -> bool:
        """Hold ``queue_id``; False if it was held already."""
        path = self._path(queue_id)
        os.makedirs(self.dir, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"held_at": time.time(), "reason": reason}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self._checked = -RECHECK
        return True

    def release(self, queue_id: str) -> bool:
        """Release ``queue_id``; False if it was not held."""
        try:
            os.unlink(self._path(queue_id))
        except FileNotFoundError:
            return False
        self._checked = -RECHECK
        return True

    def held_at(self, queue_id: str) -> float | None:
        """When ``queue_id`` (or the mail it is a copy of) was held, or None."""
        for key in dict.fromkeys((queue_id, queue_id[:_BASE_LEN])):
            with contextlib.suppress(OSError, ValueError):
                with open(self._path(key)) as fh:
                    return float(json.load(fh).get("held_at", 0))
        return None

    def held(self) -> frozenset[str]:
        """Every held queue id."""
        now = time.monotonic()
        if now - self._checked < RECHECK:
            return self._held
        self._checked = now
        try:
            self._held = frozenset(n for n in os.listdir(self.dir) if valid_queue_id(n))
        except FileNotFoundError:
            self._held = frozenset()
        return self._held

    def is_held(self, queue_id: str) -> bool:
        """Whether ``queue_id``, or the mail it is a copy of, is held."""
        held = self.held()
        return bool(held) and (queue_id in held or queue_id[:_BASE_LEN] in held)
