"""Local domains and domain aliases."""

from __future__ import annotations

from .errors import Conflict, Invalid, NotFound
from .stores import Stores

__all__ = ["list_domains", "add_domain", "remove_domain", "removal_refused",
           "domain_aliases", "add_domain_alias", "remove_domain_alias", "normalized"]


def normalized(name: str) -> str:
    """``name`` as the stores keep it; ``Invalid`` when it is not a domain name."""
    from ..store.domains import normalize_domain
    try:
        return normalize_domain(name)
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc)) from None


def list_domains(stores: Stores) -> list[str]:
    return stores.domains.list()


def add_domain(stores: Stores, name: str) -> bool:
    """Add ``name``; False if it was there already."""
    try:
        return stores.domains.add(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def remove_domain(stores: Stores, name: str, *, force: bool = False) -> None:
    """Remove ``name`` unless :func:`removal_refused` objects; ``NotFound`` if not local."""
    refused = removal_refused(stores, name, force)
    if refused is not None:
        raise Conflict(refused)
    if not stores.domains.remove(name):
        raise NotFound(f"domain {name} not present")


def removal_refused(stores: Stores, name: str, force: bool) -> str | None:
    """Why ``name`` must not be removed, or None.  A domain of domainlist.xml comes back at
    every start; one that users or mappings use would send their mail out (``force``
    removes it anyway)."""
    from ..store.domains import normalize_domain
    try:
        domain = normalize_domain(name)
    except ValueError:
        return None   # removing it finds nothing
    dl = stores.config.domainlist
    where = dl.file or "domainlist.xml"
    if domain == normalize_domain(dl.default_domain):
        return (f"cannot remove {domain}: it is the defaultDomain of {where}; change it there "
                "(it is added back at every start)")
    if dl.contains(domain):
        return (f"cannot remove {domain}: it comes from {where} (a <domainname>, or this "
                "host's name with <autodetect>), so it is added back at every start; "
                "remove it there")
    if force or not stores.domains.contains(domain):
        return None
    uses = [f"user {u}" for u in stores.users.list() if u.rpartition("@")[2] == domain]
    for m in stores.rrt.list():
        if m.kind == "domain" and domain in (m.source, m.target):
            uses.append(f"domain alias {m.source} -> {m.target}")
        elif m.kind != "domain" and domain in (m.source.rpartition("@")[2],
                                                m.target.rpartition("@")[2]):
            uses.append(f"{m.kind} {m.source} -> {m.target}")
    if not uses:
        return None
    shown = ", ".join(uses[:10]) + (f" and {len(uses) - 10} more" if len(uses) > 10 else "")
    return (f"cannot remove {domain}: still used by {shown}; remove them first, or give "
            "--force (their mail would then be relayed elsewhere or refused)")


def domain_aliases(stores: Stores, target: str) -> list[str]:
    """The domains aliased to ``target``; ``NotFound`` when ``target`` is neither local nor
    the target of an alias."""
    domain = normalized(target)
    sources = [m.source for m in stores.rrt.list() if m.kind == "domain" and m.target == domain]
    if not sources and not stores.domains.contains(domain):
        raise NotFound(f"{domain} is not a local domain")
    return sources


def add_domain_alias(stores: Stores, source: str, target: str) -> tuple[str, str, bool]:
    """Every address of ``source`` is the same local part at the local domain ``target``.
    Returns the normalized pair and whether it is new."""
    src, dst = normalized(source), normalized(target)
    if src == dst:
        raise Invalid(f"cannot alias domain {src} to itself")
    if not stores.domains.contains(dst):
        raise NotFound(f"cannot add domain alias {src} -> {dst}: {dst} is not a local domain",
                       exit_status=2)
    try:
        changed = stores.rrt.add_domain_alias(src, dst)
    except ValueError as exc:
        raise Conflict(str(exc)) from None
    return src, dst, changed


def remove_domain_alias(stores: Stores, source: str, target: str | None = None) -> tuple[str, str]:
    """Remove the alias of domain ``source`` (to ``target`` when given); the pair removed."""
    from ..store.domains import normalize_domain
    src = normalized(source)
    current = {m.source: m.target for m in stores.rrt.list() if m.kind == "domain"}
    expected = current.get(src)
    if expected is not None and target is not None:
        try:
            same = normalize_domain(target) == expected
        except ValueError:
            same = False
        if not same:
            expected = None
    if expected is None:
        raise NotFound(f"no domain alias {src}" + (f" -> {target.lower()}" if target else ""))
    stores.rrt.remove_domain_alias(src)
    return src, expected
