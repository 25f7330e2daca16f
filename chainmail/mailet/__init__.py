"""The mailet container: processors of matchers and mailets, fed by spool workers.

- :mod:`chainmail.mailet.api`: :class:`Mail`, matcher and mailet base classes, configs, the
  ``MailetContext`` protocol;
- :mod:`chainmail.mailet.config`: ``mailetcontainer.xml``;
- :mod:`chainmail.mailet.engine`: processors, routing, entry-point resolution;
- :mod:`chainmail.mailet.outbox`: where mail sent during processing is collected;
- :mod:`chainmail.mailet.context`: the container's context (stores, sending, bouncing);
- :mod:`chainmail.mailet.spoolcodec`: a mail to and from its spool entry;
- :mod:`chainmail.mailet.dsn`: delivery status notifications;
- :mod:`chainmail.mailet.spooler`: spool workers;
- :mod:`chainmail.mailet.repository`: mail repositories.

:func:`build_container` wires them for ``chainmail run``.  See ``docs/mailets.md``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["Container", "build_container"]


class Container:
    """What ``chainmail run`` starts: the spooler and the background services of mailets
    (:meth:`MailetEngine.services`), and what to close afterwards."""

    def __init__(self, config: Any, context: Any, engine: Any, spooler: Any, mailboxes: Any) -> None:
        self.config = config
        self.context = context
        self.engine = engine
        self.spooler = spooler
        self.mailboxes = mailboxes
        self.services = engine.services()

    def close(self) -> None:
        self.engine.destroy()
        self.mailboxes.close()
        if self.context.repositories is not None:
            self.context.repositories.close()


def build_container(config: Any, *, var: str, spool: Any, domains: Any, users: Any, rrt: Any,
                    servers: Any = (), poll_interval: float | None = None,
                    conf: str | None = None, backend: Any = None) -> Container:
    """Build the context, the engine (every matcher and mailet resolved and initialised:
    configuration errors are raised here, before the server starts) and the spooler.
    ``backend`` (``chainmail.store.backends``) gives the mailbox quotas, else
    ``var/chainmail.db`` does."""
    from chainmail.store.mailbox import MaildirStore

    from .context import ContainerContext
    from .engine import build_engine
    from .repository import RepositoryStore
    from .spooler import POLL_INTERVAL, MailSpooler

    servers = list(servers)
    smtp = [s for s in servers if getattr(s, "kind", "smtp") == "smtp"]
    hostname = smtp[0].hello_name if smtp else None
    conf_dir = conf if conf is not None else os.path.dirname(config.file or "") or "conf"
    mailboxes = MaildirStore(os.path.join(var, "mail"), os.path.join(var, "chainmail.db"),
                             quotas=backend.quotas() if backend is not None else None)
    repositories = None
    try:
        # postgres:// and cassandra:// repositories in PostgreSQL with postgres.properties
        repositories = RepositoryStore(var, conf_dir)
        context = ContainerContext(
            domains=domains, users=users, rrt=rrt, mailboxes=mailboxes,
            repositories=repositories, spool=spool, postmaster=_postmaster(config, domains),
            hostname=hostname,
            auth_networks={s.name: s.authorized_addresses for s in servers
                           if getattr(s, "authorized_addresses", None) is not None},
            conf_dir=conf_dir, var_dir=var, states=config.states)
        engine = build_engine(config, context)
        spooler_class = MailSpooler
        from chainmail.store.amqp.spool import BrokerSpool
        if isinstance(spool, BrokerSpool):   # every node consumes RabbitMQ's spool queue
            from .broker_spooler import BrokerSpooler
            spooler_class = BrokerSpooler
        spooler = spooler_class(spool, engine, context, threads=config.threads,
                              error_repository=config.error_repository,
                              poll_interval=poll_interval or POLL_INTERVAL)
    except BaseException:
        mailboxes.close()
        if repositories is not None:
            repositories.close()
        raise
    return Container(config, context, engine, spooler, mailboxes)


def _postmaster(config: Any, domains: Any) -> str:
    postmaster = config.postmaster
    if "@" in postmaster:
        return postmaster
    return f"{postmaster}@{getattr(domains, 'default_domain', None) or 'localhost'}"
