"""Durations as the command line shows them (queue listings, repositories, ``queue show``)."""

from __future__ import annotations

__all__ = ["format_age"]


def format_age(seconds: float) -> str:
    """A duration as the queue listings show it: 95s, 14m, 5h, 3d."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
