"""Versioned schema migrations: ``migrations/NNNN_name.sql``, applied in order, once.

:func:`migrate` runs in one transaction under an advisory lock, so worker processes
starting together apply each file exactly once, and a failing file leaves nothing
behind.  Applied versions are recorded in ``schema_migrations``::

    CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())

A database that records a version this code has no file for was migrated by a newer
chainmail: it is refused rather than used.  Never edit a released file; add the next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

__all__ = ["Migration", "MigrationError", "available", "migrate"]

#: pg_advisory_xact_lock key of the migrations ("chainmail" in ASCII, folded into 63 bits)
LOCK_KEY = 0x636861696E6D61

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class MigrationError(RuntimeError):
    """The database cannot be brought to this code's schema."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migration files shipped with chainmail, by version."""
    out = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = _NAME.fullmatch(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    out.sort(key=lambda each: each.version)
    versions = [each.version for each in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return out


def migrate(conn: Any, schema: str, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Apply the migrations ``conn``'s database lacks (creating ``schema`` if needed);
    return the versions applied now.  ``conn`` is a psycopg connection outside a
    transaction; its ``search_path`` is ``schema``."""
    from psycopg import sql
    todo = available() if migrations is None else list(migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                              (schema,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                     " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        known = {each.version for each in todo}
        unknown = sorted(applied - known)
        if unknown:
            raise MigrationError(
                f"schema {schema} has migration {unknown[-1]}, which this chainmail does not "
                f"know (it knows up to {max(known, default=0)}): it was set up by a newer "
                "chainmail; upgrade chainmail")
        done = []
        for each in todo:
            if each.version in applied:
                continue
            conn.execute(each.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (each.version, each.name))
            done.append(each.version)
    return done


def status(conn: Any, schema: str) -> tuple[list[int], list[int]]:
    """Without changing anything: (versions applied in ``schema`` that this chainmail does
    not know, versions it knows that are not applied yet).  For ``chainmail check-config``:
    the first must be empty; the second is applied at the next start."""
    known = {each.version for each in available()}
    row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".schema_migrations',)).fetchone()
    applied: set[int] = set()
    if row is not None and row[0] is not None:
        from psycopg import sql
        applied = {r[0] for r in conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations")
                                              .format(sql.Identifier(schema)))}
    return sorted(applied - known), sorted(known - applied)
