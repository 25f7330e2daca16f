"""Stores: the embedded defaults behind the queue, domain, user and alias interfaces.

- :mod:`chainmail.store.spool`: the durable directory spool (mail queue).
- :mod:`chainmail.store.domains`: local domains in the shared SQLite database.
- :mod:`chainmail.store.sqlite`: the shared database's connection and migrations.

See docs/storage.md.
"""

from chainmail.store.domains import DomainStore, normalize_domain
from chainmail.store.spool import (
    DirectorySpool,
    Envelope,
    QueuedMessage,
    SpoolFormatError,
    SpoolWriter,
)

__all__ = [
    "DirectorySpool",
    "DomainStore",
    "Envelope",
    "QueuedMessage",
    "SpoolFormatError",
    "SpoolWriter",
    "normalize_domain",
]
