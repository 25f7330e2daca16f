from __future__ import annotations

import pytest

from chainmail.mailet.context import MailetContext
from chainmail.mailet.repository import RepositoryStore
from chainmail.store.domains import DomainStore
from chainmail.store.mailbox import MaildirStore
from chainmail.store.rrt import RecipientRewriteTable
from chainmail.store.spool import DirectorySpool
from chainmail.store.users import UsersRepository

from .helpers import Record, Slow, install_test_plugins


class Stores:
    def __init__(self, var):
        self.var = var
        db = str(var / "chainmail.db")
        self.domains = DomainStore(db, default_domain="local.test", refresh_interval=0)
        self.domains.add("local.test")
        self.domains.add("other.test")
        self.users = UsersRepository(db, domains=self.domains, refresh_interval=0)
        self.rrt = RecipientRewriteTable(db, refresh_interval=0)
        self.mailboxes = MaildirStore(var / "mail", db)
        self.repositories = RepositoryStore(str(var))
        self.spool = DirectorySpool(var / "spool")

    def context(self, **kw) -> MailetContext:
        return MailetContext(domains=self.domains, users=self.users, rrt=self.rrt,
                             mailboxes=self.mailboxes, repositories=self.repositories,
                             spool=self.spool, postmaster="postmaster", hostname="mx.test", **kw)

    def close(self):
        for s in (self.users, self.rrt, self.mailboxes, self.domains):
            s.close()


@pytest.fixture
def stores(tmp_path):
    s = Stores(tmp_path / "var")
    yield s
    s.close()


@pytest.fixture
def context(stores):
    return stores.context()


@pytest.fixture(autouse=True)
def test_plugins(monkeypatch):
    install_test_plugins(monkeypatch)
    Record.seen = []
    Slow.active, Slow.overlap, Slow.calls = {}, 0, 0
