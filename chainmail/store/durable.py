"""Small durability helpers shared by everything that writes mail to disk."""

from __future__ import annotations

import os

__all__ = ["sync_dir", "O_CLOEXEC", "O_DIRECTORY"]

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def sync_dir(path: str) -> None:
    """fsync a directory, so that the entries created, renamed or removed in it survive a
    crash (a file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
