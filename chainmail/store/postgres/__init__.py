"""PostgreSQL backends of the account stores: domains, users, the recipient rewrite table.

Used when ``conf/postgres.properties`` exists (:mod:`.config`), as James's postgres app
does; otherwise the embedded SQLite stores serve (:mod:`chainmail.store.backends` decides).
Each store keeps James's interface and the embedded store's in-memory model: SMTP lookups
never wait for the database (:mod:`.pool`, :mod:`.cache`).  The schema is versioned in
``migrations/`` and brought up to date on first use (:mod:`.migrate`).
"""

from .config import FILE, PostgresConfig, load_postgres
from .pool import Database

__all__ = ["FILE", "Database", "PostgresConfig", "load_postgres"]
