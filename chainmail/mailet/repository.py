"""Mail repositories: where the container parks mail (error, relay-denied, address-error ...).

James names a repository by URL (``file://var/mail/error/``).  chainmail keeps a repository
as a directory, whatever the scheme (``file``, ``memory``, ``cassandra`` ...): the path after
``://`` is relative to the state directory with its leading ``var/`` removed
(``file://var/mail/error/`` -> ``<var>/mail/error``), or absolute (``file:///srv/x``).
When ``conf/postgres.properties`` exists, the ``postgres`` and ``cassandra`` schemes (James's
postgres and distributed apps) are kept in that database instead, shared by every node of a
cluster (:mod:`chainmail.mailet.postgres_repository`); ``file://`` stays a directory.

A repository directory holds one file per mail, named by its key (sortable by time)::

    <one line of JSON: name, sender, recipients, state, error_message, attributes, ...>\\n
    <the message, exactly as it was in the mail>

written to ``.tmp/``, fsynced, renamed into place and the directory fsynced: once
:meth:`MailRepository.store` returns, the mail survives a crash.  A ``.repository`` file
records the URL.  Every method blocks: call it from a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import TYPE_CHECKING

from chainmail.store.durable import sync_dir as _fsync_dir

from .api import Mail
from .repository_contract import MailRepository, StoredMail, envelope, mail_from_envelope, new_key

if TYPE_CHECKING:
    from chainmail.mailet.postgres_repository import PostgresRepositories

__all__ = ["DirectoryRepository", "MailRepository", "RepositoryStore", "StoredMail",
           "POSTGRES_SCHEMES", "new_key", "envelope", "mail_from_envelope", "repository_path"]

log = logging.getLogger("chainmail.mailet.repository")

MARKER = ".repository"
#: the schemes kept in PostgreSQL when ``conf/postgres.properties`` exists (James's postgres
#: app, and its distributed app's ``cassandra://`` so that its configuration works unchanged)
POSTGRES_SCHEMES = ("postgres", "cassandra")
_KEY_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

_warned: set[str] = set()
_warned_lock = threading.Lock()


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


def scheme_of(url: str) -> str:
    """The lower-cased scheme of ``url`` (``""`` without one)."""
    scheme, sep, _ = url.strip().partition("://")
    return scheme.lower() if sep else ""


class DirectoryRepository(MailRepository):
    """One repository directory."""

    path: str

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
        key = new_key()
        head = json.dumps(envelope(mail), ensure_ascii=True, separators=(",", ":"),
                          default=str).encode() + b"\n"
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
        return mail_from_envelope(doc, content, key)

    def __repr__(self) -> str:
        return f"<DirectoryRepository {self.url} at {self.path}>"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class RepositoryStore:
    """Every repository of one state directory, by URL or by name.

    With ``conf`` (the configuration directory), a ``conf/postgres.properties`` there puts
    the ``postgres://`` and ``cassandra://`` repositories in that database (``ConfigError``
    here for a bad file; the database is connected on first use).  :meth:`close` lets the
    database go."""

    def __init__(self, var_dir: str, conf: str | None = None) -> None:
        self.var_dir = os.path.abspath(var_dir)
        self.mail_dir = os.path.join(self.var_dir, "mail")
        self.conf = conf
        self._repos: dict[str, MailRepository] = {}
        self._lock = threading.Lock()
        self.postgres: PostgresRepositories | None = None
        if conf is not None:
            from chainmail.store.postgres.config import load_postgres
            config = load_postgres(conf)
            if config is not None:
                from chainmail.mailet.postgres_repository import PostgresRepositories
                self.postgres = PostgresRepositories(config)

    def _in_database(self, url: str) -> bool:
        """Is ``url`` kept in PostgreSQL (else: a directory)?"""
        if scheme_of(url) not in POSTGRES_SCHEMES:
            return False
        if self.postgres is not None:
            return True
        if scheme_of(url) == "postgres":
            _warn_once(url, self.var_dir, self.conf)
        return False

    def get(self, url: str) -> MailRepository:
        """The repository ``url`` (created on first store)."""
        if self._in_database(url):
            assert self.postgres is not None
            return self.postgres.get(url)
        path = repository_path(url, self.var_dir)
        with self._lock:
            repo = self._repos.get(path)
            if repo is None:
                repo = self._repos[path] = DirectoryRepository(path, url.strip())
            return repo

    def name_of(self, repo: MailRepository) -> str:
        """The short name of ``repo``: its path under ``<var>/mail`` (``error``), or, for a
        repository in the database, the same part of its URL."""
        if repo.path is None:
            from chainmail.mailet.postgres_repository import name_of
            return name_of(repo.url)
        rel = os.path.relpath(repo.path, self.mail_dir)
        return repo.path if rel.startswith("..") else rel

    def list(self) -> list[MailRepository]:
        """The repositories under ``<var>/mail`` (directories holding a ``.repository`` file),
        then those in the database."""
        out: list[MailRepository] = []
        if os.path.isdir(self.mail_dir):
            for dirpath, dirnames, filenames in os.walk(self.mail_dir):
                dirnames[:] = sorted(d for d in dirnames if "@" not in d and not d.startswith("."))
                if MARKER in filenames:
                    out.append(DirectoryRepository(dirpath, _marker_url(dirpath)))
                    dirnames[:] = []
        if self.postgres is not None:
            out.extend(self.postgres.list())
        return out

    def find(self, name: str) -> MailRepository | None:
        """A repository by name (``error``, ``relay-denied``: the path under ``<var>/mail``),
        by URL, or by path; ``None`` if there is no such repository.  A name that is no
        directory is looked for in the database too."""
        text = name.strip()
        if "://" in text:
            if self._in_database(text):
                assert self.postgres is not None
                return self.postgres.find(text)
            path = repository_path(text, self.var_dir)
        elif os.path.isabs(text):
            path = os.path.normpath(text)
        else:
            path = os.path.normpath(os.path.join(self.mail_dir, text.strip("/")))
        if os.path.isfile(os.path.join(path, MARKER)):
            return DirectoryRepository(path, _marker_url(path))
        if self.postgres is not None and "://" not in text and not os.path.isabs(text):
            return self.postgres.find(f"postgres://var/mail/{text.strip('/')}/")
        return None

    def close(self) -> None:
        """Let the database go (directory repositories need nothing)."""
        if self.postgres is not None:
            self.postgres.close()


def _marker_url(path: str) -> str:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def _warn_once(url: str, var_dir: str, conf: str | None) -> None:
    with _warned_lock:
        if url in _warned:
            return
        _warned.add(url)
    where = (f"there is no {os.path.join(conf, 'postgres.properties')}" if conf is not None
             else "no PostgreSQL configuration was given")
    log.warning("repository %s is kept as the directory %s: %s", url,
                repository_path(url, var_dir), where)
