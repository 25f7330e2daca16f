"""The domain, user and rewrite-table stores (``<var>/chainmail.db``, or the database of
``conf/postgres.properties``: :mod:`chainmail.store.backends`), opened on demand.

One object serves a command-line invocation or the whole life of WebAdmin; the stores are
thread-safe and see other processes' changes within their refresh interval."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["Stores"]


class Stores:
    """``config`` is the loaded configuration; with ``seed`` its domain list is added to
    the domain store as at start (``chainmail domain`` shows the store as it is)."""

    def __init__(self, config: Any, conf: str, var: str, *, seed: bool = True) -> None:
        self.config = config
        self.seed = seed
        self.conf = conf
        self.var = var
        self.db = os.path.join(var, "chainmail.db")
        self._backend: Any = None
        self._domains: Any = None
        self._users: Any = None
        self._rrt: Any = None

    @property
    def backend(self) -> Any:
        """Where the stores live (``ConfigError`` for a bad ``postgres.properties``)."""
        if self._backend is None:
            from ..store.backends import open_backend
            self._backend = open_backend(self.conf, self.var)
        return self._backend

    @property
    def domains(self) -> Any:
        if self._domains is None:
            store = self.backend.domains(default_domain=self.config.domainlist.default_domain)
            if self.seed:
                try:
                    store.seed(self.config.domainlist.domains)
                except BaseException:
                    store.close()
                    raise
            self._domains = store
        return self._domains

    @property
    def users(self) -> Any:
        if self._users is None:
            self._users = self.backend.users(domains=self.domains)
        return self._users

    @property
    def rrt(self) -> Any:
        if self._rrt is None:
            self._rrt = self.backend.rrt()
        return self._rrt

    def close(self) -> None:
        for store in (self._rrt, self._users, self._domains):
            if store is not None:
                store.close()
        self._domains = self._users = self._rrt = None

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
