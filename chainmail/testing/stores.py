"""The state directory of a test: the same stores ``chainmail run`` opens, under one ``var``.

Users, domains, the spool, Maildirs and mail repositories live where a real server keeps
them (``var/chainmail.db``, ``var/spool``, ``var/mail``), so the session driver, the mailet
harness and a running ``chainmail_server`` are all read the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["Spooled", "LocalStores", "read_maildir"]


@dataclass(frozen=True)
class Spooled:
    """A message waiting in the spool: its envelope and content as the server stored them."""

    id: str
    sender: str
    recipients: list[str]
    content: bytes
    attributes: dict[str, Any] = field(default_factory=dict)
    mail_params: dict[str, Any] = field(default_factory=dict)
    rcpt_params: list[dict[str, Any]] = field(default_factory=list)
    state: str = "root"


def read_maildir(path: str | os.PathLike[str]) -> list[bytes]:
    """The messages of one Maildir (``new/`` then ``cur/``, each in name order)."""
    out: list[bytes] = []
    for sub in ("new", "cur"):
        folder = Path(path) / sub
        if folder.is_dir():
            out.extend((folder / name).read_bytes() for name in sorted(os.listdir(folder)))
    return out


class LocalStores:
    """Domains, users, the recipient rewrite table, Maildirs, repositories and the spool of
    the state directory ``var``; opened lazily, closed by :meth:`close`."""

    def __init__(self, var: str | os.PathLike[str], *, default_domain: str = "localhost",
                 domains: Iterable[str] = (), users: Mapping[str, str] | None = None) -> None:
        self.var = Path(var)
        self.var.mkdir(parents=True, exist_ok=True)
        self.db = str(self.var / "chainmail.db")
        self.default_domain = default_domain
        self._open: dict[str, Any] = {}
        for name in domains:
            self.add_domain(name)
        for name, password in (users or {}).items():
            self.add_user(name, password)

    # -- the stores, as the server builds them ---------------------------------------------
    def _store(self, key: str, make) -> Any:
        store = self._open.get(key)
        if store is None:
            store = self._open[key] = make()
        return store

    @property
    def domains(self):
        from chainmail.store.domains import DomainStore
        return self._store("domains", lambda: DomainStore(self.db, default_domain=self.default_domain,
                                                          refresh_interval=0))

    @property
    def users(self):
        from chainmail.store.users import UsersRepository
        return self._store("users", lambda: UsersRepository(self.db, domains=self.domains,
                                                            refresh_interval=0))

    @property
    def rrt(self):
        from chainmail.store.rrt import RecipientRewriteTable
        return self._store("rrt", lambda: RecipientRewriteTable(self.db, refresh_interval=0))

    @property
    def mailboxes(self):
        from chainmail.store.mailbox import MaildirStore
        return self._store("mailboxes", lambda: MaildirStore(self.var / "mail", self.db))

    @property
    def repositories(self):
        from chainmail.mailet.repository import RepositoryStore
        return self._store("repositories", lambda: RepositoryStore(str(self.var)))

    @property
    def spool(self):
        from chainmail.store.spool import DirectorySpool
        return self._store("spool", lambda: DirectorySpool(self.var / "spool"))

    # -- setting up ------------------------------------------------------------------------
    def add_domain(self, name: str) -> None:
        """Make ``name`` a local domain."""
        self.domains.add(name)

    def add_user(self, name: str, password: str) -> None:
        """Create the user ``name`` (``bob@local.test``); its domain must be local."""
        self.users.add(name, password)

    def add_alias(self, source: str, target: str) -> None:
        """Mail to ``source`` goes to ``target`` (the recipient rewrite table)."""
        self.rrt.add_alias(source, target)

    # -- reading results -------------------------------------------------------------------
    def mailbox(self, user: str) -> list[bytes]:
        """The messages delivered into ``user``'s Maildir, oldest name first."""
        return read_maildir(self.mailboxes.path_for(user))

    def repository(self, name: str) -> list:
        """The mails stored in repository ``name`` (``error``, ``relay-denied`` or a
        ``file://var/mail/...`` URL), as :class:`chainmail.mailet.api.Mail` objects."""
        store = self.repositories
        repo = store.find(name)
        if repo is None:
            return []
        return [repo.retrieve(key) for key in repo.keys()]

    def spooled(self, path: str | os.PathLike[str] | None = None) -> list[Spooled]:
        """Every message in the spool (or in the queue directory ``path``), in queue order."""
        from chainmail.store.spool import DirectorySpool
        path = Path(path) if path is not None else self.var / "spool"
        if not path.is_dir():
            return []
        spool = DirectorySpool(path)   # a fresh view: sees other writers
        out = []
        for queued in spool.list():
            with spool.open_body(queued.id) as body:
                content = body.read()
            env = queued.envelope
            out.append(Spooled(queued.id, env.sender, list(env.recipients), content,
                               dict(env.attributes), dict(env.mail_params),
                               [dict(p) for p in env.rcpt_params], env.state))
        return out

    def close(self) -> None:
        for key in ("users", "rrt", "mailboxes", "domains"):
            store = self._open.pop(key, None)
            if store is not None:
                store.close()
        self._open.clear()
