"""Mail repositories in PostgreSQL, shared by every node of a cluster (James's postgres app
keeps them there as ``postgres://var/mail/error/``).

:class:`chainmail.mailet.repository.RepositoryStore` puts the ``postgres://`` and
``cassandra://`` repositories here when ``conf/postgres.properties`` exists.  A repository is
named by its canonical URL: scheme ``postgres``, the path without repeated or trailing
slashes, one ``/`` at the end, so ``cassandra://var/mail/error`` and
``postgres://var/mail/error/`` are the same repository, as they are the same directory
without PostgreSQL.  Tables: ``mail_repositories`` (one row per repository, kept when it is
emptied, as a directory is) and ``mail_repository_mails`` (envelope, attributes, state,
error and the content as ``bytea``, keyed by URL and mail key); see
``chainmail/store/postgres/migrations/0003_mail_repositories.sql``.

A store returns once its transaction is committed (``synchronous_commit`` on for it): the
container removes the spooled mail only then.  The pool is opened on first use and let go by
:meth:`PostgresRepositories.close`.  Every method blocks: call it from a worker thread.
"""

from __future__ import annotations

import json
import posixpath
import threading
from typing import Any

from chainmail.store.postgres.config import PostgresConfig
from chainmail.store.postgres.pool import Database

from .api import Mail
from .repository_contract import (
    MailRepository,
    StoredMail,
    envelope,
    mail_from_envelope,
    new_key,
)

__all__ = ["PostgresMailRepository", "PostgresRepositories", "canonical_url", "name_of"]

SCHEME = "postgres"

_LISTED = ("mail_key, name, sender, recipients, state, error_message,"
           " EXTRACT(EPOCH FROM stored_at)::float8, size, attributes")


def canonical_url(url: str) -> str:
    """``postgres://<path>/`` for any scheme: the one name of a repository in the database."""
    _, sep, rest = url.strip().partition("://")
    if not sep:
        rest = url.strip()
    absolute = rest.startswith("/")
    path = posixpath.normpath(rest).strip("/") if rest.strip("/") else ""
    if not path or path == "." or path.startswith("../") or path == "..":
        raise ValueError(f"repository {url!r}: expected a path after ://")
    return f"{SCHEME}://{'/' if absolute else ''}{path}/"


def name_of(url: str) -> str:
    """The short name of a repository in the database: the path under ``var/mail``
    (``error``), like a directory's; else its URL."""
    _, _, rest = url.partition("://")
    if not rest.startswith("var/mail/"):
        return url
    return rest[len("var/mail/"):].strip("/") or url


def _text(value: Any) -> str:
    """PostgreSQL's text holds no NUL."""
    return str(value).replace("\x00", "\ufffd")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


class PostgresRepositories:
    """The repositories of one database, opened on first use."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self.database = Database(config)
        self._lock = threading.Lock()
        self._open = False
        self._closed = False
        self._repos: dict[str, PostgresMailRepository] = {}

    def connection(self) -> Any:
        """A pooled connection (autocommit), the pool opened (and migrated) if needed."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the PostgreSQL repository store is closed")
            if not self._open:
                self.database.acquire()
                self._open = True
        return self.database.connection()

    def close(self) -> None:
        with self._lock:
            opened, self._open, self._closed = self._open, False, True
        if opened:
            self.database.release()

    def get(self, url: str) -> PostgresMailRepository:
        """The repository ``url`` (recorded on first store); no database access."""
        canonical = canonical_url(url)
        with self._lock:
            repo = self._repos.get(canonical)
            if repo is None:
                repo = self._repos[canonical] = PostgresMailRepository(self, canonical)
            return repo

    def find(self, url: str) -> PostgresMailRepository | None:
        """The repository ``url`` if it was ever stored into, else ``None``."""
        canonical = canonical_url(url)
        with self.connection() as conn:
            row = conn.execute("SELECT 1 FROM mail_repositories WHERE url = %s",
                               (canonical,)).fetchone()
        return self.get(canonical) if row else None

    def list(self) -> list[PostgresMailRepository]:
        """Every repository recorded in the database, by URL."""
        with self.connection() as conn:
            urls = [url for (url,) in conn.execute(
                "SELECT url FROM mail_repositories ORDER BY url COLLATE \"C\"")]
        return [self.get(url) for url in urls]

    def __repr__(self) -> str:
        return f"<PostgresRepositories {self.config.describe()}>"


class PostgresMailRepository(MailRepository):
    """One repository: the rows of ``mail_repository_mails`` with its URL."""

    path = None

    def __init__(self, owner: PostgresRepositories, url: str) -> None:
        self.owner = owner
        self.url = url

    def store(self, mail: Mail) -> str:
        """Store ``mail`` in one committed transaction; return its key."""
        key = new_key()
        doc = envelope(mail)
        content = mail.content
        params = (self.url, key, _text(doc["name"]), _text(doc["sender"]),
                  [_text(r) for r in doc["recipients"]], _text(doc["state"]),
                  None if doc["error_message"] is None else _text(doc["error_message"]),
                  _json(doc["attributes"]), _json(doc["mail_params"]),
                  _json(doc["rcpt_params"]), float(doc["queued_at"] or 0),
                  int(doc["error_count"] or 0), len(content), content)
        with self.owner.connection() as conn:
            with conn.pipeline(), conn.transaction():
                conn.execute("SET LOCAL synchronous_commit TO on")
                conn.execute("INSERT INTO mail_repositories (url) VALUES (%s)"
                             " ON CONFLICT (url) DO NOTHING", (self.url,))
                conn.execute(
                    "INSERT INTO mail_repository_mails (url, mail_key, name, sender,"
                    " recipients, state, error_message, attributes, mail_params, rcpt_params,"
                    " queued_at, error_count, size, content) VALUES (%s, %s, %s, %s, %s, %s,"
                    " %s, %s::json, %s::json, %s::json, %s, %s, %s, %b)", params)
        return key

    def remove(self, key: str) -> bool:
        with self.owner.connection() as conn:
            cur = conn.execute("DELETE FROM mail_repository_mails WHERE url = %s"
                               " AND mail_key = %s", (self.url, key))
            return cur.rowcount == 1

    def keys(self) -> list[str]:
        with self.owner.connection() as conn:
            return [key for (key,) in conn.execute(
                "SELECT mail_key FROM mail_repository_mails WHERE url = %s ORDER BY mail_key",
                (self.url,))]

    def __len__(self) -> int:
        with self.owner.connection() as conn:
            row = conn.execute("SELECT count(*) FROM mail_repository_mails WHERE url = %s",
                               (self.url,)).fetchone()
        return int(row[0]) if row else 0

    def info(self, key: str) -> StoredMail:
        with self.owner.connection() as conn:
            row = conn.execute(f"SELECT {_LISTED} FROM mail_repository_mails"
                               " WHERE url = %s AND mail_key = %s", (self.url, key)).fetchone()
        if row is None:
            raise KeyError(key)
        return _stored(row)

    def list(self) -> list[StoredMail]:
        with self.owner.connection() as conn:
            rows = conn.execute(f"SELECT {_LISTED} FROM mail_repository_mails WHERE url = %s"
                                " ORDER BY mail_key", (self.url,)).fetchall()
        return [_stored(row) for row in rows]

    def retrieve(self, key: str) -> Mail:
        with self.owner.connection() as conn:
            row = conn.execute(
                "SELECT name, sender, recipients, state, error_message, attributes,"
                " mail_params, rcpt_params, queued_at, error_count, content"
                " FROM mail_repository_mails WHERE url = %s AND mail_key = %s",
                (self.url, key)).fetchone()
        if row is None:
            raise KeyError(key)
        names = ("name", "sender", "recipients", "state", "error_message", "attributes",
                 "mail_params", "rcpt_params", "queued_at", "error_count")
        return mail_from_envelope(dict(zip(names, row)), bytes(row[10]), key)

    def __repr__(self) -> str:
        return f"<PostgresMailRepository {self.url} in {self.owner.config.describe()}>"


def _stored(row: Any) -> StoredMail:
    key, name, sender, recipients, state, error, stored_at, size, attributes = row
    return StoredMail(key, name, sender, tuple(recipients), state, error, float(stored_at),
                      int(size), dict(attributes or {}))
