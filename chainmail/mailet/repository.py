"""Mail repositories: where the container parks mail (error, relay-denied, address-error ...).

James names a repository by URL (``file://var/mail/error/``).  chainmail keeps every
repository as a directory, whatever the scheme (``file``, ``memory``, ``cassandra`` ...): the
path after ``://`` is relative to the state directory with its leading ``var/`` removed
(``file://var/mail/error/`` -> ``<var>/mail/error``), or absolute (``file:///srv/x``).

A repository directory holds one file per mail, named by its key (sortable by time)::

    <one line of JSON: name, sender, recipients, state, error_message, attributes, ...>\\n
    <the message, exactly as it was in the mail>

written to ``.tmp/``, fsynced, renamed into place and the directory fsynced: once
:meth:`MailRepository.store` returns, the mail survives a crash.  A ``.repository`` file
records the URL.  Every method blocks: call it from a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from chainmail.store.durable import sync_dir as _fsync_dir

from .api import Mail

__all__ = ["MailRepository", "RepositoryStore", "StoredMail", "repository_path"]

MARKER = ".repository"
_KEY_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)



def repository_path(url: str, var_dir: str) -> str:
    """The directory of the repository ``url`` (see the module docstring)."""
    text = url.strip()
    _, sep, rest = text.partition("://")
    if not sep:
        rest = text
    if rest.startswith("/"):
        return os.path.normpath(rest)
    rest = rest.strip("/")
    if rest == "var":
        rest = ""
    elif rest.startswith("var/"):
        rest = rest[4:]
    path = os.path.normpath(os.path.join(var_dir, rest))
    if os.path.commonpath([os.path.abspath(var_dir), os.path.abspath(path)]) != os.path.abspath(var_dir):
        raise ValueError(f"repository {url!r} points outside the state directory")
    return path


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


class MailRepository:
    """One repository directory."""

    def __init__(self, path: str, url: str = "") -> None:
        self.path = os.path.abspath(path)
        self.url = url or f"file://{self.path}"
        self._ready = False
        self._lock = threading.Lock()

    def _prepare(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            from chainmail.store.mailbox import _makedirs_durable
            _makedirs_durable(os.path.join(self.path, ".tmp"))
            marker = os.path.join(self.path, MARKER)
            if not os.path.exists(marker):
                with open(marker, "w", encoding="utf-8") as fh:
                    fh.write(self.url + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                _fsync_dir(self.path)
            self._ready = True

    # -- writing

    def store(self, mail: Mail) -> str:
        """Durably store ``mail``; return its key."""
        self._prepare()
        key = f"{time.time_ns() // 1_000_000:012x}-{secrets.token_hex(8)}"
        doc = {
            "name": mail.name, "sender": mail.sender, "recipients": list(mail.recipients),
            "state": mail.state, "error_message": mail.error_message,
            "attributes": mail.attributes, "mail_params": mail.mail_params,
            "rcpt_params": mail.rcpt_params, "stored_at": time.time(),
            "queued_at": mail.queued_at, "error_count": mail.error_count,
        }
        head = json.dumps(doc, ensure_ascii=True, separators=(",", ":"), default=str).encode() + b"\n"
        tmp = os.path.join(self.path, ".tmp", key)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        try:
            for part in (head, mail.content):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, os.path.join(self.path, key))
        except BaseException:
            _unlink(tmp)
            raise
        _fsync_dir(self.path)
        return key

    def remove(self, key: str) -> bool:
        if not _KEY_RE.fullmatch(key):
            return False
        try:
            os.unlink(os.path.join(self.path, key))
        except FileNotFoundError:
            return False
        _fsync_dir(self.path)
        return True

    # -- reading

    def keys(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if _KEY_RE.fullmatch(n))
        except FileNotFoundError:
            return []

    def __len__(self) -> int:
        return len(self.keys())

    def _read(self, key: str, with_content: bool) -> tuple[dict, bytes, int]:
        if not _KEY_RE.fullmatch(key):
            raise KeyError(key)
        try:
            with open(os.path.join(self.path, key), "rb") as fh:
                head = fh.readline()
                content = fh.read() if with_content else b""
                size = os.fstat(fh.fileno()).st_size - len(head)
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            doc = json.loads(head)
        except ValueError as exc:
            raise ValueError(f"{self.path}/{key}: unreadable repository entry: {exc}") from None
        return doc, content, size

    def info(self, key: str) -> StoredMail:
        doc, _, size = self._read(key, False)
        return StoredMail(key, doc.get("name", key), doc.get("sender", ""),
                          tuple(doc.get("recipients", ())), doc.get("state", ""),
                          doc.get("error_message"), float(doc.get("stored_at", 0)), size,
                          dict(doc.get("attributes", {})))

    def list(self) -> list[StoredMail]:
        out = []
        for key in self.keys():
            try:
                out.append(self.info(key))
            except (KeyError, ValueError):
                continue
        return out

    def retrieve(self, key: str) -> Mail:
        doc, content, _ = self._read(key, True)
        return Mail(doc.get("name") or key, doc.get("sender", ""), doc.get("recipients", ()),
                    content, state=doc.get("state") or "root",
                    attributes=doc.get("attributes", {}), error_message=doc.get("error_message"),
                    mail_params=doc.get("mail_params"), rcpt_params=doc.get("rcpt_params"),
                    queued_at=float(doc.get("queued_at") or 0),
                    error_count=int(doc.get("error_count") or 0))

    def __repr__(self) -> str:
        return f"<MailRepository {self.url} at {self.path}>"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class RepositoryStore:
    """Every repository of one state directory, by URL or by name."""

    def __init__(self, var_dir: str) -> None:
        self.var_dir = os.path.abspath(var_dir)
        self.mail_dir = os.path.join(self.var_dir, "mail")
        self._repos: dict[str, MailRepository] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> MailRepository:
        """The repository ``url`` (created on first store)."""
        path = repository_path(url, self.var_dir)
        with self._lock:
            repo = self._repos.get(path)
            if repo is None:
                repo = self._repos[path] = MailRepository(path, url.strip())
            return repo

    def name_of(self, repo: MailRepository) -> str:
        rel = os.path.relpath(repo.path, self.mail_dir)
        return repo.path if rel.startswith("..") else rel

    def list(self) -> list[MailRepository]:
        """The repositories under ``<var>/mail`` (directories holding a ``.repository`` file)."""
        out: list[MailRepository] = []
        if not os.path.isdir(self.mail_dir):
            return out
        for dirpath, dirnames, filenames in os.walk(self.mail_dir):
            dirnames[:] = sorted(d for d in dirnames if "@" not in d and not d.startswith("."))
            if MARKER in filenames:
                try:
                    with open(os.path.join(dirpath, MARKER), encoding="utf-8") as fh:
                        url = fh.readline().strip()
                except OSError:
                    url = ""
                out.append(MailRepository(dirpath, url))
                dirnames[:] = []
        return out

    def find(self, name: str) -> MailRepository | None:
        """A repository by name (``error``, ``relay-denied``: the path under ``<var>/mail``),
        by URL, or by path; ``None`` if there is no such repository."""
        if "://" in name:
            path = repository_path(name, self.var_dir)
        elif os.path.isabs(name):
            path = os.path.normpath(name)
        else:
            path = os.path.normpath(os.path.join(self.mail_dir, name.strip("/")))
        if not os.path.isfile(os.path.join(path, MARKER)):
            return None
        try:
            with open(os.path.join(path, MARKER), encoding="utf-8") as fh:
                url = fh.readline().strip()
        except OSError:
            url = ""
        return MailRepository(path, url)
