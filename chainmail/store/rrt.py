"""The recipient rewrite table (James's RecipientRewriteTable), in the shared SQLite database.

Three kinds of mapping, all compared case-insensitively (stored lower-cased):

``alias``   ``sales@example.org -> bob@example.org``: the address is another name
            for that user.  At most one alias target per source.  Aliases (and
            only aliases) let the user send as the alias (:meth:`identities_of`).
``forward`` ``team@example.org -> a@example.org, b@elsewhere.net``: a group or a
            forward; several targets per source, possibly remote.  A forward of
            an address to itself (``bob@d -> bob@d`` next to ``bob@d -> x@y``)
            means "deliver here too" and ends the rewriting there.
``domain``  ``alias.org -> example.org``: every address of ``alias.org`` is the
            same local part at ``example.org``.  One target per source domain.

Rewriting an address (:meth:`resolve`): the address's own alias and forward
targets if it has any; else those of the address without its ``+detail``;
else, if its domain is a domain alias, the same local part in the target
domain; else the address is final.  Targets are rewritten again, recursively,
at most ``max_depth`` steps deep; a loop or a deeper chain raises
:class:`RewriteLoopError`.  A mapping that would close a loop is refused when
it is added.

Lookups (``has_mapping``, ``resolve``, ``identities_of``) run on the event loop
for every RCPT, so they answer from in-memory dictionaries refreshed when
``PRAGMA data_version`` says another connection changed the database (checked
at most once per ``refresh_interval``).
"""

from __future__ import annotations

import builtins

import os
from typing import Any, Iterable, NamedTuple

from chainmail.store import sqlite as _sqlite
from chainmail.store.domains import normalize_domain

__all__ = ["KINDS", "Mapping", "RecipientRewriteTable", "RewriteLoopError", "normalize_address"]

COMPONENT = "rrt"
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE rrt_mappings ("
        " kind TEXT NOT NULL CHECK (kind IN ('alias', 'forward', 'domain')),"
        " source TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " PRIMARY KEY (kind, source, target)"
        ") WITHOUT ROWID",
        # One target per alias source and per alias domain.
        "CREATE UNIQUE INDEX rrt_single_target ON rrt_mappings (kind, source)"
        " WHERE kind IN ('alias', 'domain')",
        "CREATE INDEX rrt_by_source ON rrt_mappings (source)",
    ),
]

KINDS = ("alias", "forward", "domain")


class Mapping(NamedTuple):
    """One row of the table; ``kind`` is ``alias``, ``forward`` or ``domain``."""

    kind: str
    source: str
    target: str


class RewriteLoopError(Exception):
    """Rewriting ``address`` loops, or goes deeper than ``max_depth``.

    ``chain`` is the path that failed, from ``address`` to the repeated (or
    the first too deep) address.  ``loop`` tells the two cases apart.
    """

    def __init__(self, address: str, chain: Iterable[str], *, loop: bool = True) -> None:
        self.address = address
        self.chain = list(chain)
        self.loop = loop
        path = " -> ".join(self.chain)
        what = "mapping loop" if loop else "mapping chain too deep"
        super().__init__(f"{what} rewriting {address}: {path}")


def normalize_address(address: str, what: str = "address") -> str:
    """``local@domain`` lower-cased with its domain in canonical form; ``ValueError`` if invalid."""
    from chainmail.protocol.grammar import GrammarError, parse_mailbox

    if not isinstance(address, str):
        raise TypeError(f"{what} must be a str, not {type(address).__name__}")
    text = address.strip()
    if "@" not in text:
        raise ValueError(f"invalid {what} {address!r}: must be a full address, local@domain")
    try:
        mailbox = parse_mailbox(text, utf8=True, allow_no_domain=False)
        domain = normalize_domain(mailbox.domain or "")
    except (GrammarError, ValueError) as exc:
        raise ValueError(f"invalid {what} {address!r}: {exc}") from None
    return f"{mailbox.local.lower()}@{domain}"


def _normalize_domain(domain: str, what: str) -> str:
    try:
        return normalize_domain(domain)
    except ValueError as exc:
        raise ValueError(f"invalid {what}: {exc}") from None


def _lookup_form(address: Any) -> str:
    """A client-given address in the stored spelling, without validation (fast path)."""
    text = str(address).strip().lower()
    local, at, domain = text.rpartition("@")
    if at and (domain[-1:] == "." or domain[:1] == "[" or not domain.isascii()):
        try:
            return f"{local}@{normalize_domain(domain)}"
        except (ValueError, TypeError):
            pass
    return text


def _strip_detail(address: str) -> str | None:
    """``bob+tag@d`` -> ``bob@d``; ``None`` if there is no detail."""
    local, at, domain = address.rpartition("@")
    plus = local.find("+")
    if plus <= 0:
        return None
    return f"{local[:plus]}{at}{domain}"


class _Tables:
    """An immutable snapshot of the mappings, with the lookups the resolver needs."""

    __slots__ = ("address", "domain", "alias_sources_of", "domain_sources_of", "identities")

    def __init__(self, rows: Iterable[tuple[str, str, str]]) -> None:
        address: dict[str, list[str]] = {}
        domain: dict[str, str] = {}
        alias_sources_of: dict[str, list[str]] = {}
        domain_sources_of: dict[str, list[str]] = {}
        for kind, source, target in sorted(rows):
            if kind == "domain":
                domain[source] = target
                domain_sources_of.setdefault(target, []).append(source)
            else:
                targets = address.setdefault(source, [])
                if target not in targets:
                    targets.append(target)
                if kind == "alias":
                    alias_sources_of.setdefault(target, []).append(source)
        self.address = {k: tuple(v) for k, v in address.items()}
        self.domain = domain
        self.alias_sources_of = {k: tuple(v) for k, v in alias_sources_of.items()}
        self.domain_sources_of = {k: tuple(v) for k, v in domain_sources_of.items()}
        self.identities: dict[str, frozenset[str]] = {}  # identities_of cache for this snapshot

    def step(self, address: str) -> tuple[str, ...] | None:
        """The addresses ``address`` is rewritten to in one step; ``None`` if it is final."""
        targets = self.address.get(address)
        if targets is not None:
            return targets
        stripped = _strip_detail(address)
        if stripped is not None:
            targets = self.address.get(stripped)
            if targets is not None:
                return targets
        local, at, domain = address.rpartition("@")
        if at:
            target_domain = self.domain.get(domain)
            if target_domain is not None:
                return (f"{local}@{target_domain}",)
        return None

    def find_cycle(self, starts: Iterable[str]) -> list[str] | None:
        """A rewriting loop reachable from ``starts`` (as ``[a, b, ..., a]``), or ``None``.

        Unbounded (not limited by ``max_depth``): the graph is finite because
        every address it reaches is a mapping target or a start, possibly moved
        to another domain by a domain alias.
        """
        done: set[str] = set()
        for start in starts:
            if start in done:
                continue
            path: list[str] = [start]
            on_path = {start}
            stack = [iter(self._next(start))]
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    stack.pop()
                    finished = path.pop()
                    on_path.discard(finished)
                    done.add(finished)
                    continue
                if nxt in on_path:
                    return path[path.index(nxt):] + [nxt]
                if nxt in done:
                    continue
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(self._next(nxt)))
        return None

    def _next(self, address: str) -> tuple[str, ...]:
        targets = self.step(address) or ()
        return tuple(t for t in targets if t != address)  # a self-forward ends the rewriting


class RecipientRewriteTable(_sqlite.RefreshedCache):
    """The mappings.  One instance per process; thread-safe."""

    def __init__(self, db_path: str | os.PathLike[str], *, max_depth: int = 10,
                 refresh_interval: float = 1.0) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_depth = max_depth
        self._open(db_path, COMPONENT, MIGRATIONS, refresh_interval)

    # -- reading

    def list(self) -> list[Mapping]:
        """Every mapping, sorted by kind, source, target."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT kind, source, target FROM rrt_mappings ORDER BY kind, source, target"
            ).fetchall()
        return [Mapping(*row) for row in rows]

    def has_mapping(self, address: str) -> bool:
        """Does ``address`` have a mapping (its own, its detail-less address's, or via a
        domain alias of its domain)?  ValidRcptHandler's ``mappingExists``: a mapping
        that loops counts as existing."""
        return self._tables_now().step(_lookup_form(address)) is not None

    def resolve(self, address: str) -> builtins.list[str]:
        """The final recipients of ``address`` after every rewriting, in order, without
        duplicates; ``[address]`` (lower-cased) if it has no mapping.

        ``RewriteLoopError`` if the rewriting loops or needs more than ``max_depth`` steps.
        """
        tables = self._tables_now()
        start = _lookup_form(address)
        out: dict[str, None] = {}
        self._expand(tables, start, [start], out)
        return list(out)

    def _expand(self, tables: _Tables, addr: str, chain: builtins.list[str], out: dict[str, None]) -> None:
        targets = tables.step(addr)
        if targets is None:
            out[addr] = None
            return
        for target in targets:
            if target == addr:
                out[addr] = None
                continue
            if target in chain:
                raise RewriteLoopError(chain[0], chain + [target])
            if len(chain) > self.max_depth:
                raise RewriteLoopError(chain[0], chain + [target], loop=False)
            chain.append(target)
            try:
                self._expand(tables, target, chain, out)
            finally:
                chain.pop()

    def canonical_domain(self, domain: str) -> str:
        """``domain`` after following domain aliases (at most ``max_depth`` of them).
        ``RewriteLoopError`` on a loop or a longer chain."""
        tables = self._tables_now()
        try:
            current = normalize_domain(domain)
        except ValueError:
            return domain.lower()
        chain = [current]
        while True:
            target = tables.domain.get(current)
            if target is None:
                return current
            if target in chain:
                raise RewriteLoopError(chain[0], chain + [target])
            chain.append(target)
            if len(chain) > self.max_depth + 1:
                raise RewriteLoopError(chain[0], chain, loop=False)
            current = target

    def identities_of(self, username: str) -> set[str]:
        """Every address the user ``username`` may send as (James's ``CanSendFrom``).

        The user's own address; every address *aliased* to it, recursively; and
        each of those in every domain that is a domain alias of its domain
        (directly or through other domain aliases).  At most ``max_depth``
        rounds.  Forwards and groups grant nothing.  Compare with the sender's
        username (``UsersRepository.username_for(sender)``, i.e. without ``+detail``).
        """
        tables = self._tables_now()
        user = _lookup_form(username)
        cache = tables.identities
        found = cache.get(user)
        if found is not None:
            return set(found)
        identities = {user}
        frontier = [user]
        for _ in range(self.max_depth):
            new: list[str] = []
            for addr in frontier:
                for source in tables.alias_sources_of.get(addr, ()):
                    if source not in identities:
                        identities.add(source)
                        new.append(source)
                local, at, domain = addr.rpartition("@")
                if at:
                    for alias_domain in tables.domain_sources_of.get(domain, ()):
                        alias_addr = f"{local}@{alias_domain}"
                        if alias_addr not in identities:
                            identities.add(alias_addr)
                            new.append(alias_addr)
            if not new:
                break
            frontier = new
        if len(cache) > 10_000:
            cache.clear()
        cache[user] = frozenset(identities)
        return identities

    # -- changing

    def add_alias(self, source: str, target: str) -> bool:
        """``source`` is another name for ``target``.  ``False`` if that mapping exists.
        ``ValueError`` if an address is invalid, ``source`` is already an alias of
        another address, or the mapping would close a loop."""
        src = normalize_address(source, "alias source")
        dst = normalize_address(target, "alias target")
        if src == dst:
            raise ValueError(f"cannot alias {src} to itself")
        return self._add("alias", src, dst)

    def add_forward(self, source: str, target: str) -> bool:
        """Mail to ``source`` also goes to ``target`` (one member of a group; call once per
        target).  ``False`` if that mapping exists.  ``ValueError`` if an address is
        invalid or the mapping would close a loop.  ``source == target`` keeps a copy
        for ``source`` itself."""
        src = normalize_address(source, "forward source")
        dst = normalize_address(target, "forward target")
        return self._add("forward", src, dst)

    def add_domain_alias(self, source_domain: str, target_domain: str) -> bool:
        """Every address of ``source_domain`` is the same local part at ``target_domain``.
        ``False`` if that mapping exists.  ``ValueError`` if a domain is invalid,
        ``source_domain`` is already an alias of another domain, or it would loop."""
        src = _normalize_domain(source_domain, "alias domain")
        dst = _normalize_domain(target_domain, "target domain")
        if src == dst:
            raise ValueError(f"cannot alias domain {src} to itself")
        return self._add("domain", src, dst)

    def remove_alias(self, source: str, target: str) -> bool:
        return self._remove("alias", source, target, normalize_address)

    def remove_forward(self, source: str, target: str) -> bool:
        return self._remove("forward", source, target, normalize_address)

    def remove_domain_alias(self, source_domain: str) -> bool:
        try:
            src = normalize_domain(source_domain)
        except (ValueError, TypeError):
            return False
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM rrt_mappings WHERE kind = 'domain' AND source = ?", (src,))
            self._reload_locked()
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RecipientRewriteTable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals

    def _add(self, kind: str, src: str, dst: str) -> bool:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")  # see other writers' rows; none slips in meanwhile
            try:
                rows = conn.execute("SELECT kind, source, target FROM rrt_mappings").fetchall()
                if (kind, src, dst) in rows:
                    conn.execute("ROLLBACK")
                    return False
                self._check_new(rows, kind, src, dst)
                conn.execute(
                    "INSERT INTO rrt_mappings (kind, source, target) VALUES (?, ?, ?)",
                    (kind, src, dst))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._reload_locked()
        return True

    def _check_new(self, rows: builtins.list, kind: str, src: str, dst: str) -> None:
        """``ValueError`` if the mapping would give an alias a second target or close a
        loop, given the ``rows`` (kind, source, target) in the table now."""
        if kind in ("alias", "domain"):
            for k, s, t in rows:
                if k == kind and s == src:
                    hint = " (a forward can have several targets)" if kind == "alias" else ""
                    raise ValueError(
                        f"{src} is already an alias of {t}; remove that mapping first{hint}")
        tables = _Tables([*rows, (kind, src, dst)])
        if kind == "domain":
            # A loop through the new edge passes through an address of ``src`` reached
            # from some address mapping: start from all of them.
            starts = [a for k, s, t in rows if k != "domain" for a in (s, t)]
            cycle = self._domain_cycle(tables, src)
            if cycle is None:
                cycle = tables.find_cycle(starts)
        else:
            cycle = tables.find_cycle([src])
        if cycle is not None:
            raise ValueError(f"refused: {kind} mapping {src} -> {dst} would create a loop: "
                             + " -> ".join(cycle))

    @staticmethod
    def _domain_cycle(tables: _Tables, start: str) -> builtins.list[str] | None:
        chain = [start]
        current = start
        while True:
            target = tables.domain.get(current)
            if target is None:
                return None
            if target in chain:
                return chain[chain.index(target):] + [target]
            chain.append(target)
            current = target

    def _remove(self, kind: str, source: str, target: str, normalize) -> bool:
        try:
            src, dst = normalize(source), normalize(target)
        except (ValueError, TypeError):
            return False
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM rrt_mappings WHERE kind = ? AND source = ? AND target = ?",
                (kind, src, dst))
            self._reload_locked()
        return cur.rowcount > 0

    def _tables_now(self) -> _Tables:
        self._refresh()
        return self._tables

    def _load(self, conn) -> None:
        rows = conn.execute("SELECT kind, source, target FROM rrt_mappings").fetchall()
        self._tables = _Tables(rows)
