"""Users and the address mappings of the recipient rewrite table: aliases, forwards, groups.

James tells forwards from groups by their source: a forward belongs to an existing user,
a group address is no user.  chainmail keeps both as ``forward`` mappings, so the two
listings split them the same way."""

from __future__ import annotations

from typing import Any

from .errors import Conflict, Invalid, NotFound
from .stores import Stores

__all__ = ["list_users", "user_exists", "check_new_user", "check_existing_user",
           "check_password", "add_user", "set_password", "remove_user",
           "add_mapping", "remove_mapping", "mappings", "KIND_NAMES",
           "normalized_address", "alias_sources", "aliased_users", "forward_bases", "forward_targets",
           "groups", "group_members", "add_group_member", "add_forward", "add_alias"]

KIND_NAMES = {"alias": "alias", "forward": "forward", "domain": "domain alias"}


def _username(name: str) -> str:
    from ..store.users import normalize_username
    try:
        return normalize_username(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def normalized_address(address: str, what: str) -> str:
    from ..store.rrt import normalize_address
    try:
        return normalize_address(address, what)
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc)) from None


# -- users ------------------------------------------------------------------------------


def list_users(stores: Stores) -> list[str]:
    return stores.users.list()


def user_exists(stores: Stores, username: str) -> bool:
    """``Invalid`` when ``username`` is no valid user name at all."""
    return stores.users.contains(_username(username))


def check_new_user(stores: Stores, username: str) -> str:
    """The normalized name of a user that may be added (checked before asking a password)."""
    name = _username(username)
    domain = name.rpartition("@")[2]
    if not stores.domains.contains(domain):
        raise Invalid(f"cannot add user {name}: {domain} is not a local domain "
                      f"(add it to domainlist.xml or with: chainmail domain add {domain})")
    if stores.users.contains(name):
        raise Conflict(f"user {name} already exists", exit_status=1)
    aliased_to = _alias_target(stores, name)
    if aliased_to is not None:
        raise Conflict(f"cannot add user {name}: it is an alias of {aliased_to} "
                       f"(remove it first: chainmail alias remove {name} {aliased_to})")
    return name


def check_existing_user(stores: Stores, username: str) -> str:
    name = _username(username)
    if not stores.users.contains(name):
        raise NotFound(f"no user {name}")
    return name


def check_password(stores: Stores, password: str) -> None:
    """The password policy of ``conf/usersrepository.xml`` (``ConfigError`` if unreadable)."""
    from ..store.users import load_password_policy
    policy = load_password_policy(stores.conf)
    try:
        policy.check(password)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def add_user(stores: Stores, username: str, password: str, *, force: bool = False) -> bool:
    """Add a user; with ``force`` an existing user gets the new password instead.
    True if the user was created."""
    from ..store.users import UserExistsError
    if force and stores.users.contains(_username(username)):
        set_password(stores, username, password)
        return False
    name = check_new_user(stores, username)
    check_password(stores, password)
    try:
        stores.users.add(name, password)
    except UserExistsError as exc:
        raise Conflict(str(exc), exit_status=1) from None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return True


def set_password(stores: Stores, username: str, password: str) -> None:
    name = check_existing_user(stores, username)
    check_password(stores, password)
    try:
        changed = stores.users.set_password(name, password)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if not changed:
        raise NotFound(f"no user {name}")


def remove_user(stores: Stores, username: str) -> list[Any]:
    """Remove a user; the mappings that still point to it (left in place) are returned."""
    name = username.strip().lower()
    if not stores.users.remove(name):
        raise NotFound(f"no user {name}")
    return [m for m in stores.rrt.list() if m.kind != "domain" and m.target == name]


def _alias_target(stores: Stores, address: str) -> str | None:
    for m in stores.rrt.list():
        if m.kind == "alias" and m.source == address:
            return m.target
    return None


# -- mappings ---------------------------------------------------------------------------


def mappings(stores: Stores) -> list[Any]:
    return stores.rrt.list()


def _is_alias_domain(stores: Stores, domain: str) -> bool:
    return any(m.kind == "domain" and m.source == domain for m in stores.rrt.list())


def add_mapping(stores: Stores, kind: str, source: str, target: str) -> tuple[str, str, bool]:
    """Add an ``alias`` or ``forward`` mapping (domain aliases: :mod:`.domains`).  Returns
    the normalized pair and whether it is new."""
    what = KIND_NAMES[kind]
    src = normalized_address(source, f"{what} source")
    dst = normalized_address(target, f"{what} target")
    domain = src.rpartition("@")[2]
    if not stores.domains.contains(domain) and not _is_alias_domain(stores, domain):
        raise Invalid(f"cannot add {what} {src}: {domain} is not a local domain")
    if kind == "alias" and stores.users.contains(src):
        raise Conflict(f"cannot add alias {src}: it is a user (an alias is another name for a user)")
    add = stores.rrt.add_alias if kind == "alias" else stores.rrt.add_forward
    try:
        changed = add(src, dst)
    except ValueError as exc:
        message = str(exc)
        if "to itself" in message:
            raise Invalid(message) from None
        raise Conflict(message) from None
    return src, dst, changed


def remove_mapping(stores: Stores, kind: str, source: str, target: str) -> tuple[str, str]:
    """Remove an ``alias`` or ``forward`` mapping; ``NotFound`` if there is none."""
    what = KIND_NAMES[kind]
    src, dst = source.strip().lower(), target.strip().lower()
    remove = stores.rrt.remove_alias if kind == "alias" else stores.rrt.remove_forward
    if not remove(src, dst):
        raise NotFound(f"no {what} {src} -> {dst}")
    return src, dst


# -- James's views of the mappings ------------------------------------------------------


def _of_kind(stores: Stores, kind: str) -> list[Any]:
    return [m for m in stores.rrt.list() if m.kind == kind]


def aliased_users(stores: Stores) -> list[str]:
    """The addresses that have aliases (``GET /address/aliases``)."""
    return sorted({m.target for m in _of_kind(stores, "alias")})


def alias_sources(stores: Stores, user: str) -> list[str]:
    dst = normalized_address(user, "alias target")
    return [m.source for m in _of_kind(stores, "alias") if m.target == dst]


def add_alias(stores: Stores, user: str, source: str) -> None:
    """``PUT /address/aliases/{user}/sources/{source}``: James's checks, then the mapping."""
    dst, src = normalized_address(user, "alias target"), normalized_address(source, "alias source")
    if src == dst:
        raise Invalid("Source and destination can't be the same!")
    if not stores.domains.contains(dst.rpartition("@")[2]):
        raise Invalid(f"Domain in the destination or source is not managed by the DomainList: "
                      f"{dst.rpartition('@')[2]}")
    add_mapping(stores, "alias", src, dst)


def _forwards(stores: Stores) -> list[Any]:
    users = stores.users
    return [m for m in _of_kind(stores, "forward") if users.contains(m.source)]


def forward_bases(stores: Stores) -> list[str]:
    """Users whose mail is forwarded (``GET /address/forwards``)."""
    return sorted({m.source for m in _forwards(stores)})


def forward_targets(stores: Stores, user: str) -> list[str]:
    base = normalized_address(user, "forward source")
    targets = [m.target for m in _forwards(stores) if m.source == base]
    if not targets:
        raise NotFound(f"{base} has no forwards or is no user")
    return targets


def add_forward(stores: Stores, user: str, target: str) -> None:
    base = normalized_address(user, "forward source")
    if not stores.users.contains(base):
        raise NotFound(f"Requested forward address does not match an existing user: {base}")
    add_mapping(stores, "forward", base, target)


def _groups(stores: Stores) -> list[Any]:
    users = stores.users
    return [m for m in _of_kind(stores, "forward") if not users.contains(m.source)]


def groups(stores: Stores) -> list[str]:
    """Group addresses: forwards whose source is no user (``GET /address/groups``)."""
    return sorted({m.source for m in _groups(stores)})


def group_members(stores: Stores, group: str) -> list[str]:
    address = normalized_address(group, "group")
    members = [m.target for m in _groups(stores) if m.source == address]
    if not members:
        raise NotFound(f"no group {address}")
    return members


def add_group_member(stores: Stores, group: str, member: str) -> None:
    address = normalized_address(group, "group")
    if stores.users.contains(address) or _alias_target(stores, address) is not None:
        raise Conflict(f"Requested group address is already used for another purpose: {address}")
    add_mapping(stores, "forward", address, member)
