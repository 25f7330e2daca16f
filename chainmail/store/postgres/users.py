"""Users and their password hashes in PostgreSQL: :class:`~chainmail.store.users.UsersRepository`
with its table in the ``users`` table of ``postgres.properties``'s database.  Hashes,
username rules and timing are the embedded store's (the same functions)."""

from __future__ import annotations

import logging
from typing import Any

from ..users import (
    UserExistsError,
    UsersRepository,
    UsersUnavailable,
    _check_new_password,
    _lookup_key,
    hash_password,
    normalize_username,
)
from .cache import PostgresCache
from .pool import Database

__all__ = ["PostgresUsersRepository"]

log = logging.getLogger("chainmail.store.users")


class PostgresUsersRepository(PostgresCache, UsersRepository):
    """The users; the public API and behaviour of :class:`UsersRepository`."""

    component = "users"

    def __init__(self, database: Database, *, domains: Any = None,
                 refresh_interval: float = 1.0) -> None:
        self.domains = domains
        self._attach(database, refresh_interval)

    def list(self) -> list[str]:
        """Every username, sorted."""
        return [name for (name,) in self._rows("SELECT username FROM users ORDER BY username")]

    def _stored_hash(self, key: str) -> str | None:
        import psycopg
        from psycopg_pool import PoolTimeout
        try:
            rows = self._rows("SELECT password_hash FROM users WHERE username = %s", (key,))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise UsersUnavailable(f"PostgreSQL {self.database.config.describe()}: "
                                   f"{' '.join(str(exc).split())}") from exc
        return rows[0][0] if rows else None

    def add(self, username: str, password: str) -> None:
        """Add a user; ``ValueError`` (or :class:`UserExistsError`) saying why not."""
        name = self._new_user(username, password)
        count = self._execute("INSERT INTO users (username, password_hash) VALUES (%s, %s)"
                              " ON CONFLICT (username) DO NOTHING",
                              (name, hash_password(password)))
        if count != 1:
            raise UserExistsError(f"user {name} already exists")

    def add_hashed(self, username: str, password_hash: str) -> bool:
        """Add a user with a hash made by another store (the same format); ``False`` if
        the user exists (left as it is)."""
        name = normalize_username(username)
        return self._execute("INSERT INTO users (username, password_hash) VALUES (%s, %s)"
                             " ON CONFLICT (username) DO NOTHING", (name, password_hash)) == 1

    def remove(self, username: str) -> bool:
        """Remove a user; ``False`` if there was none."""
        return self._execute("DELETE FROM users WHERE username = %s",
                             (_lookup_key(username),)) == 1

    def set_password(self, username: str, password: str) -> bool:
        """Change a user's password; ``False`` if there is no such user."""
        _check_new_password(password)
        return self._execute("UPDATE users SET password_hash = %s WHERE username = %s",
                             (hash_password(password), _lookup_key(username))) == 1

    def _upgrade(self, key: str, old: str, password: str | bytes) -> None:
        try:
            # Only if nobody changed the password meanwhile.
            self._execute("UPDATE users SET password_hash = %s"
                          " WHERE username = %s AND password_hash = %s",
                          (hash_password(password), key, old))
        except Exception as exc:  # a read-only database must not fail the login
            log.warning("user %s: could not upgrade the password hash: %s", key, exc)

    def _load(self, conn: Any) -> None:
        self._users = frozenset(name for (name,) in conn.execute("SELECT username FROM users"))
