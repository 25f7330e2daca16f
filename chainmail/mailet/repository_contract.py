"""What every mail repository offers, wherever it keeps its mail (a directory,
:mod:`.repository`; PostgreSQL, :mod:`.postgres_repository`), and the record of a mail both
keep: its own module, so that the two implementations do not import each other."""

from __future__ import annotations

import abc
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .api import Mail

__all__ = ["MailRepository", "StoredMail", "envelope", "mail_from_envelope", "new_key"]


def new_key() -> str:
    """A new mail key: milliseconds then randomness, so keys sort by storing time."""
    return f"{time.time_ns() // 1_000_000:012x}-{secrets.token_hex(8)}"


def envelope(mail: Mail) -> dict[str, Any]:
    """What a repository keeps of ``mail`` besides its content."""
    return {
        "name": mail.name, "sender": mail.sender, "recipients": list(mail.recipients),
        "state": mail.state, "error_message": mail.error_message,
        "attributes": mail.attributes, "mail_params": mail.mail_params,
        "rcpt_params": mail.rcpt_params, "stored_at": time.time(),
        "queued_at": mail.queued_at, "error_count": mail.error_count,
    }


def mail_from_envelope(doc: dict[str, Any], content: bytes, key: str) -> Mail:
    """The mail an :func:`envelope` and its content describe."""
    return Mail(doc.get("name") or key, doc.get("sender") or "", doc.get("recipients") or (),
                content, state=doc.get("state") or "root",
                attributes=doc.get("attributes") or {}, error_message=doc.get("error_message"),
                mail_params=doc.get("mail_params"), rcpt_params=doc.get("rcpt_params"),
                queued_at=float(doc.get("queued_at") or 0),
                error_count=int(doc.get("error_count") or 0))


@dataclass(frozen=True)
class StoredMail:
    """A mail in a repository, as listed: its key and envelope, without the content."""

    key: str
    name: str
    sender: str
    recipients: tuple[str, ...]
    state: str
    error_message: str | None
    stored_at: float
    size: int
    attributes: dict[str, Any]


class MailRepository(abc.ABC):
    """What every repository offers, wherever it keeps its mail: a directory
    (:class:`DirectoryRepository`) or PostgreSQL
    (:class:`chainmail.mailet.postgres_repository.PostgresMailRepository`).  Every method
    blocks."""

    url: str
    #: the directory of a directory repository; ``None`` for one kept in a database
    path: str | None = None

    @abc.abstractmethod
    def store(self, mail: Mail) -> str:
        """Durably store ``mail`` (it survives a crash once this returns); return its key."""

    @abc.abstractmethod
    def remove(self, key: str) -> bool:
        """Delete one mail; ``False`` if it was not there."""

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """The keys of the mails, oldest first."""

    def __len__(self) -> int:
        return len(self.keys())

    @abc.abstractmethod
    def info(self, key: str) -> StoredMail:
        """One mail's listing entry; ``KeyError`` if absent."""

    @abc.abstractmethod
    def list(self) -> list[StoredMail]:
        """Every mail's listing entry, oldest first."""

    @abc.abstractmethod
    def retrieve(self, key: str) -> Mail:
        """One mail with its content; ``KeyError`` if absent."""
