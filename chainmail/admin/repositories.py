"""Mail repositories (error, relay-denied ...): list, read, delete, reprocess.

WebAdmin names a repository as James does, by its path without the scheme
(``var/mail/error/`` for ``file://var/mail/error/`` and for ``postgres://var/mail/error/``);
the command line by its name under ``<var>/mail`` (``error``).  Both forms, and the URL
itself, find it.  With ``conf``, the repositories kept in the PostgreSQL database of
``conf/postgres.properties`` are found too."""

from __future__ import annotations

import threading
from typing import Any

from .errors import Invalid, NotFound

__all__ = ["store", "list_repositories", "find", "path_of", "mail", "stored", "remove",
           "reprocess", "REPROCESSING"]

#: James's attribute counting how often a mail was reprocessed from a repository
REPROCESSING = "mailRepository-reprocessing"


_stores: dict[tuple[str, str | None], tuple[str | None, Any]] = {}
_stores_lock = threading.Lock()


def store(var: str, conf: str | None = None) -> Any:
    """The repository store of ``var`` (and ``conf``): one per process, so that WebAdmin
    keeps one database pool for its requests; a changed ``postgres.properties`` gets a new
    one."""
    from ..mailet.repository import RepositoryStore
    from ..store.postgres.config import load_postgres
    config = load_postgres(conf) if conf is not None else None
    where = f"{config.conninfo()} {config.schema}" if config is not None else None
    with _stores_lock:
        known = _stores.get((var, conf))
        if known is not None and known[0] == where:
            return known[1]
        made = RepositoryStore(var, conf)
        _stores[(var, conf)] = (where, made)
    if known is not None:
        known[1].close()
    return made


def list_repositories(var: str, conf: str | None = None) -> list[Any]:
    return store(var, conf).list()


def path_of(repo: Any) -> str:
    """James's name of a repository: its URL without the scheme (``var/mail/error/``)."""
    url = repo.url or ""
    _, sep, rest = url.partition("://")
    return rest if sep else url


def find(var: str, name: str, conf: str | None = None) -> Any:
    """The repository ``name`` (James's path, URL, name under ``<var>/mail`` or directory);
    ``NotFound`` naming the repositories there are."""
    repos = store(var, conf)
    text = name.strip()
    candidates = [text]
    if text.startswith("var/") or text == "var":
        candidates[:0] = ["file://" + text] + (
            ["postgres://" + text] if repos.postgres is not None else [])
    found = None
    for candidate in candidates:
        try:
            found = repos.find(candidate)
        except ValueError:
            found = None
        if found is not None:
            return found
    known = ", ".join(repos.name_of(r) for r in repos.list()) or "none yet"
    raise NotFound(f"no repository {name!r} (repositories: {known})")


def stored(repo: Any, key: str) -> Any:
    """The listing entry (envelope, no content) of one mail; ``NotFound`` if absent."""
    try:
        return repo.info(key)
    except KeyError:
        raise NotFound(f"no mail {key} in {repo.url}") from None


def mail(repo: Any, key: str) -> Any:
    """One mail with its content; ``NotFound`` if absent."""
    try:
        return repo.retrieve(key)
    except KeyError:
        raise NotFound(f"no mail {key} in {repo.url}") from None


def remove(repo: Any, keys: list[str]) -> list[str]:
    """Delete the mails ``keys``; the keys that were not there."""
    return [key for key in keys if not repo.remove(key)]


def reprocess(var: str, repo: Any, keys: list[str], state: str | None) -> list[tuple[str, str, str]]:
    """Put mails back into the spool, starting at processor ``state`` (their own state when
    None); each leaves the repository once spooled.  Returns (key, outcome, detail):
    ("spooled", spool id) or ("failed", why)."""
    import trio

    from ..mailet.context import MailetContext
    from .queues import open_spool

    if state is not None and not state.strip():
        raise Invalid("the processor to reprocess in must not be empty")
    context = MailetContext(spool=open_spool(var))
    results: list[tuple[str, str, str]] = []

    async def main() -> None:
        for key in keys:
            try:
                item = repo.retrieve(key)
            except (KeyError, ValueError) as exc:
                results.append((key, "failed", str(exc)))
                continue
            if state is not None:
                item.state = state
            item.error_count = 0
            item.hops = 0
            # James's ReprocessingService counts reprocessings in this attribute; its
            # sample error processor does not bounce a reprocessed mail a second time.
            tries = item.attributes.get(REPROCESSING)
            item.attributes[REPROCESSING] = (tries if isinstance(tries, int) else 0) + 1
            msg_id = await context.commit(item)
            repo.remove(key)
            results.append((key, "spooled", msg_id))

    trio.run(main)
    return results

