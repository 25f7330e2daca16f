"""Control of the outgoing queues from outside the server: where they live, and flush requests.

Each RemoteDelivery outgoing queue named ``N`` is a :class:`~chainmail.store.spool.DirectorySpool`
at ``<var>/outgoing/<N>/``.  The spool may be shared by several processes, so the command
line lists and removes entries directly.

A flush ("try these now") has to reach a server that may or may not be running, so it is a
file rather than a signal: :func:`request_flush` writes ``<root>/flush/<name>.json``, and the
running queue calls :func:`consume_flush_requests` (about once a second) and treats the
entries each request :meth:`~FlushRequest.matches` as due now.  A server that is not running
finds the request at its next start.  DirectorySpool only uses ``segments/``, ``tmp/`` and
``queue/`` under its root, so ``flush/`` beside them is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass

from chainmail.store.spool import Envelope, QueuedMessage
from chainmail.store.durable import sync_dir as _sync_dir

__all__ = ["FlushRequest", "outgoing_root", "outgoing_queue_names", "request_flush",
           "consume_flush_requests", "pending_flush_requests", "recipient_domains",
           "normalise_domain",
           "OUTGOING_DIR", "FLUSH_DIR"]

log = logging.getLogger("chainmail.remote.control")

OUTGOING_DIR = "outgoing"
FLUSH_DIR = "flush"
_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
#: a temporary file this old was left by a writer that died before its rename
_STALE_TMP = 3600.0


def outgoing_root(var: str | os.PathLike[str], name: str) -> str:
    """The spool directory of outgoing queue ``name``.  The name must be one path component,
    so that a queue name from the configuration or the command line cannot escape ``var``."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"invalid outgoing queue name {name!r}")
    return os.path.join(os.path.abspath(os.fspath(var)), OUTGOING_DIR, name)


def outgoing_queue_names(var: str | os.PathLike[str]) -> list[str]:
    """Names of the outgoing queues that exist under ``var``, sorted: the directories of
    ``<var>/outgoing`` that hold a spool (a ``segments/`` and a ``queue/`` directory)."""
    base = os.path.join(os.fspath(var), OUTGOING_DIR)
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries
                  if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                  and _is_spool(e.path))


def _is_spool(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, d)) for d in ("segments", "queue"))


def recipient_domains(envelope: Envelope) -> set[str]:
    """The lower-cased domains of the envelope's recipients."""
    return {r.rpartition("@")[2].lower() for r in envelope.recipients if "@" in r}


@dataclass(frozen=True)
class FlushRequest:
    """Deliver now what was queued at or before ``at`` (epoch seconds), for every domain or
    only for recipients in ``domain``.  Bounded by ``at`` so that the retries a flush itself
    queues are not flushed again."""

    at: float
    domain: str | None = None

    def matches(self, entry: QueuedMessage) -> bool:
        if entry.queued_at > self.at:
            return False
        return self.domain is None or self.domain.lower() in recipient_domains(entry.envelope)

    def to_json(self) -> bytes:
        return json.dumps({"at": self.at, "domain": self.domain}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FlushRequest:
        """Raises ``ValueError`` for anything but ``{"at": <number>, "domain": <str or null>}``."""
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        at, domain = doc.get("at"), doc.get("domain")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise ValueError(f"bad 'at': {at!r}")
        if domain is not None and (not isinstance(domain, str) or not domain):
            raise ValueError(f"bad 'domain': {domain!r}")
        return cls(float(at), domain)


def normalise_domain(domain: str | None) -> str | None:
    """``Example.COM.`` and ``@example.com`` mean ``example.com``; ``ValueError`` for what
    cannot be a domain."""
    if domain is None:
        return None
    cleaned = domain.strip().lstrip("@").rstrip(".").lower()
    if not cleaned or "@" in cleaned or any(c.isspace() for c in cleaned):
        raise ValueError(f"invalid domain {domain!r}")
    return cleaned


def request_flush(root: str | os.PathLike[str], domain: str | None = None) -> FlushRequest:
    """Ask the queue at ``root`` to try its entries now.  The file appears whole (written
    under a temporary name, fsynced, renamed, directory fsynced), so a reader never sees half
    a request and a request survives a crash once this returns."""
    request = FlushRequest(time.time(), normalise_domain(domain))
    directory = _flush_dir(os.fspath(root), create=True)
    name = f"{time.time_ns():020d}-{secrets.token_hex(8)}"
    tmp = os.path.join(directory, name + _TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, request.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(directory, name + _SUFFIX))
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _sync_dir(directory)
    return request


def consume_flush_requests(root: str | os.PathLike[str]) -> list[FlushRequest]:
    """The flush requests waiting at ``root``, oldest first, deleted as they are read.
    An unreadable request is deleted with a warning: it would otherwise be read forever.
    The deletions are not fsynced; after a crash a request may come back, which only
    flushes once more."""
    return _read_requests(os.fspath(root), consume=True)


def pending_flush_requests(root: str | os.PathLike[str]) -> list[FlushRequest]:
    """The flush requests waiting at ``root``, left in place (for ``chainmail queue list``)."""
    return _read_requests(os.fspath(root), consume=False)


def _read_requests(root: str, *, consume: bool) -> list[FlushRequest]:
    directory = _flush_dir(root, create=False)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith(_SUFFIX):
            request = _read_one(path, consume=consume)
            if request is not None:
                out.append(request)
        elif consume and name.endswith(_TMP_SUFFIX):
            _drop_stale_tmp(path)
    return sorted(out, key=lambda r: r.at)


def _read_one(path: str, *, consume: bool) -> FlushRequest | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None  # consumed meanwhile
    except OSError as exc:
        if consume:
            log.warning("deleting unreadable flush request %s: %s", path, exc)
            _unlink_quietly(path)
        return None
    try:
        request = FlushRequest.from_json(data)
    except ValueError as exc:
        if consume:
            log.warning("deleting malformed flush request %s: %s", path, exc)
            _unlink_quietly(path)
        return None
    if consume:
        _unlink_quietly(path)
    return request


def _drop_stale_tmp(path: str) -> None:
    """A temporary file is only ours to delete once its writer must be gone."""
    with contextlib.suppress(FileNotFoundError):   # gone meanwhile: nothing to do
        if time.time() - os.stat(path).st_mtime > _STALE_TMP:
            _unlink_quietly(path)


def _flush_dir(root: str, *, create: bool) -> str:
    directory = os.path.join(root, FLUSH_DIR)
    if create and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _sync_dir(root)
    return directory



def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
