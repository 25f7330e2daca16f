"""Java properties files (James's ``webadmin.properties``, ``postgres.properties``...): the
lines as written, with their line numbers, for the readers that check them."""

from __future__ import annotations

__all__ = ["parse_properties"]


def parse_properties(text: str) -> list[tuple[int, str, str]]:
    """(line, key, value) of a Java properties text: ``key=value``, ``key: value`` or
    ``key value``; ``#`` and ``!`` start comments; a trailing backslash continues a line."""
    out: list[tuple[int, str, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if not pending:
            start = number
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            parts = line.split(None, 1)
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
        else:
            key, value = line[:cut].strip(), line[cut + 1:].strip()
        out.append((start, key, value))
    return out
