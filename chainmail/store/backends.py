"""Where the domains, users and recipient rewrite table live: the one place that decides.

The embedded default is SQLite in ``<var>/chainmail.db`` and needs nothing.  When
``<conf>/postgres.properties`` exists, as in James's postgres app, these stores are in
that PostgreSQL database instead, shared by every process and every server that points
at it: the domains, users and recipient rewrite table, the mailbox quotas and the
greylisting triplets (the other stores: Sieve, vacations, filters, the spool and mail
repositories stay in ``var/``).

    backend = open_backend(conf, var)
    domains = backend.domains(default_domain=...)
    users = backend.users(domains=domains)
    rrt = backend.rrt()
    mailboxes = MaildirStore(os.path.join(var, "mail"), quotas=backend.quotas())

Greylisting's embedded table belongs to its handler (``plugins/smtp/greylist.py``):
:meth:`PostgresBackend.greylist` exists only on the shared side.

Each store is closed by its caller as before; a PostgreSQL backend's pool closes with the
last of its stores.
"""

from __future__ import annotations

import logging
import os

from typing import TYPE_CHECKING

from .domains import DomainStore
from .rrt import RecipientRewriteTable
from .users import UsersRepository

if TYPE_CHECKING:
    from .mailbox import QuotaTable
    from .postgres.greylist import PostgresGreylist
    from .postgres.spamtrap import PostgresSpamTrap

__all__ = ["PostgresBackend", "SqliteBackend", "open_backend"]

log = logging.getLogger("chainmail.store")


class SqliteBackend:
    """The embedded stores, in ``<var>/chainmail.db``."""

    kind = "sqlite"

    def __init__(self, var: str | os.PathLike[str]) -> None:
        from .sqlite import DB_FILENAME
        self.db = os.path.join(os.fspath(var), DB_FILENAME)

    def describe(self) -> str:
        return self.db

    def domains(self, *, default_domain: str = "localhost",
                refresh_interval: float = 1.0) -> DomainStore:
        return DomainStore(self.db, default_domain=default_domain,
                           refresh_interval=refresh_interval)

    def users(self, *, domains: object = None, refresh_interval: float = 1.0) -> UsersRepository:
        return UsersRepository(self.db, domains=domains, refresh_interval=refresh_interval)

    def rrt(self, *, max_depth: int = 10, refresh_interval: float = 1.0) -> RecipientRewriteTable:
        return RecipientRewriteTable(self.db, max_depth=max_depth,
                                     refresh_interval=refresh_interval)

    def quotas(self, *, refresh_interval: float = 1.0) -> QuotaTable:
        """The ``mailbox_quota`` table of ``chainmail.db`` (re-read when the file changed:
        ``refresh_interval`` does not apply)."""
        from .mailbox import SqliteQuotas
        return SqliteQuotas(self.db)


class PostgresBackend:
    """The stores in the database of ``postgres.properties``, over one pool per backend."""

    kind = "postgresql"

    def __init__(self, config) -> None:
        from .postgres import Database
        self.config = config
        self.database = Database(config)

    def describe(self) -> str:
        return self.config.describe()

    def domains(self, *, default_domain: str = "localhost",
                refresh_interval: float = 1.0) -> DomainStore:
        from .postgres.domains import PostgresDomainStore
        return PostgresDomainStore(self.database, default_domain=default_domain,
                                   refresh_interval=refresh_interval)

    def users(self, *, domains: object = None, refresh_interval: float = 1.0) -> UsersRepository:
        from .postgres.users import PostgresUsersRepository
        return PostgresUsersRepository(self.database, domains=domains,
                                       refresh_interval=refresh_interval)

    def rrt(self, *, max_depth: int = 10, refresh_interval: float = 1.0) -> RecipientRewriteTable:
        from .postgres.rrt import PostgresRecipientRewriteTable
        return PostgresRecipientRewriteTable(self.database, max_depth=max_depth,
                                             refresh_interval=refresh_interval)

    def quotas(self, *, refresh_interval: float = 1.0) -> QuotaTable:
        from .postgres.quotas import PostgresQuotas
        return PostgresQuotas(self.database, refresh_interval=refresh_interval)

    def greylist(self) -> PostgresGreylist:
        """The greylisting triplets, asked per RCPT."""
        from .postgres.greylist import PostgresGreylist
        return PostgresGreylist(self.database)

    def spamtrap(self) -> PostgresSpamTrap:
        """SpamTrapHandler's block list, asked per RCPT."""
        from .postgres.spamtrap import PostgresSpamTrap
        return PostgresSpamTrap(self.database)


def open_backend(conf: str | os.PathLike[str],
                 var: str | os.PathLike[str]) -> SqliteBackend | PostgresBackend:
    """PostgreSQL when ``<conf>/postgres.properties`` exists, else SQLite in ``var``.
    ``ConfigError`` (file:line) for a bad ``postgres.properties``; connecting waits for
    the first store."""
    from .postgres.config import load_postgres
    config = load_postgres(conf)
    if config is None:
        return SqliteBackend(var)
    for warning in config.warnings:
        log.warning("%s", warning)
    return PostgresBackend(config)
