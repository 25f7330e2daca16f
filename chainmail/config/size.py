"""Sizes as written in James configuration files (``maxmessagesize``, water marks).

``parse_size("10M") == 10 * 1024 * 1024``.  Units are 1024-based and
case-insensitive: ``B``, ``K``, ``M``, ``G``; a blank between the number and the
unit is allowed.  A bare number is in ``default_unit`` (``K`` for
``maxmessagesize``, as James).  ``UNLIMITED`` and ``0`` both mean "no limit"
and are returned as ``0``.
"""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size", "UNITS"]

UNITS: dict[str, int] = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}

_SIZE_RE = re.compile(r"^([0-9]+)\s*([A-Za-z]?)$")


def parse_size(text: str, default_unit: str = "K") -> int:
    """Return the size in bytes; ``0`` means unlimited.  Raises ``ValueError`` on bad input."""
    if default_unit.upper() not in UNITS:
        raise ValueError(f"unknown default unit {default_unit!r}; expected one of B, K, M, G")
    raw = text
    value = text.strip()
    expected = "expected a non-negative integer with an optional unit B, K, M or G (1024-based), or UNLIMITED"
    if not value:
        raise ValueError(f"empty size; {expected}")
    if value.upper() == "UNLIMITED":
        return 0
    m = _SIZE_RE.match(value)
    if m is None:
        if value.startswith("-"):
            raise ValueError(f"{raw!r} is negative; {expected}")
        raise ValueError(f"{raw!r} is not a valid size; {expected}")
    number, unit = m.groups()
    unit = (unit or default_unit).upper()
    if unit not in UNITS:
        raise ValueError(f"{raw!r} has an unknown unit {m.group(2)!r}; {expected}")
    return int(number) * UNITS[unit]


def format_size(n: int) -> str:
    """Human form of a byte count using the largest exact unit (``10485760`` -> ``10M``)."""
    if n == 0:
        return "0"
    for unit in ("G", "M", "K"):
        if n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return f"{n}B"
