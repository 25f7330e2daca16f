"""``chainmail user`` and ``chainmail alias``: users and the recipient rewrite table.

::

    chainmail user add bob@example.org [--password-stdin]
    chainmail user passwd bob@example.org [--password-stdin]
    chainmail user remove bob@example.org
    chainmail user list
    chainmail alias add sales@example.org bob@example.org          # address alias
    chainmail alias add --forward team@example.org a@elsewhere.net   # forward / group member
    chainmail alias add --domain alias.example example.org           # domain alias
    chainmail alias remove [--forward | --domain] SOURCE [TARGET]
    chainmail alias list
    chainmail alias resolve team@example.org

Passwords are never taken from the command line (it is visible to other
users in the process list and kept in shell history): ``--password-stdin``
reads one line from standard input, otherwise the password is asked twice on
the terminal without echo.  A new password must satisfy the password policy
(at least 8 characters unless ``conf/usersrepository.xml`` says
``<passwordPolicy minLength="..."/>``).  Exit status: 0 done, 1 nothing to do
(already there / not found), 2 bad input.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from .config import load_config
from .config.errors import ConfigError

__all__ = ["add_subcommands", "run"]

OK, NOOP, BAD = 0, 1, 2


def add_subcommands(sub, common: argparse.ArgumentParser) -> None:
    """Add ``user`` and ``alias`` to the ``chainmail`` subcommands ``sub``."""
    user = sub.add_parser("user", parents=[common], help="manage users and their passwords")
    usub = user.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a user (a full address in a local domain)"),
                         ("passwd", "change a user's password")):
        p = usub.add_parser(action, parents=[common], help=text)
        p.add_argument("username", help="full address, e.g. bob@example.org")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input "
                            "(otherwise it is asked twice on the terminal)")
    p = usub.add_parser("remove", parents=[common], help="remove a user")
    p.add_argument("username")
    usub.add_parser("list", parents=[common], help="list the users")

    alias = sub.add_parser("alias", parents=[common],
                           help="manage the recipient rewrite table (aliases, forwards, domain aliases)")
    asub = alias.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a mapping"), ("remove", "remove a mapping")):
        p = asub.add_parser(action, parents=[common], help=text,
                            description=f"{text[0].upper()}{text[1:]}.  Without an option, SOURCE "
                                        "is an address alias of the user TARGET (the user may "
                                        "also send as SOURCE).")
        kind = p.add_mutually_exclusive_group()
        kind.add_argument("--forward", dest="kind", action="store_const", const="forward",
                          help="forward / group member: mail to SOURCE also goes to TARGET "
                               "(repeat for each member; TARGET may be remote)")
        kind.add_argument("--domain", dest="kind", action="store_const", const="domain",
                          help="domain alias: every address of domain SOURCE is the same "
                               "local part at domain TARGET")
        p.set_defaults(kind="alias")
        p.add_argument("source")
        if action == "add":
            p.add_argument("target")
        else:
            p.add_argument("target", nargs="?",
                           help="required except with --domain")
    asub.add_parser("list", parents=[common], help="list the mappings: kind, source, target")
    p = asub.add_parser("resolve", parents=[common],
                        help="print the final recipients of an address")
    p.add_argument("address")


def run(args: argparse.Namespace, conf: str, var: str) -> int:
    """Carry out ``chainmail user ...`` or ``chainmail alias ...``; return the exit status."""
    try:
        config = load_config(conf)
    except ConfigError as err:
        _err(f"configuration error: {err}")
        return BAD
    stores = _Stores(config, var)
    stores.conf = conf
    try:
        if args.command == "user":
            return _user(args, stores)
        return _alias(args, stores)
    finally:
        stores.close()


# -- stores -----------------------------------------------------------------------------


class _Stores:
    """The domain, user and rewrite-table stores of ``<var>/chainmail.db``, opened on demand."""

    def __init__(self, config, var: str) -> None:
        self._config = config
        self._db = os.path.join(var, "chainmail.db")
        self._domains = self._users = self._rrt = None
        self.conf = "conf"

    @property
    def domains(self):
        if self._domains is None:
            from .store.domains import DomainStore
            store = DomainStore(self._db, default_domain=self._config.domainlist.default_domain)
            try:
                store.seed(self._config.domainlist.domains)
            except BaseException:
                store.close()
                raise
            self._domains = store
        return self._domains

    @property
    def users(self):
        if self._users is None:
            from .store.users import UsersRepository
            self._users = UsersRepository(self._db, domains=self.domains)
        return self._users

    @property
    def rrt(self):
        if self._rrt is None:
            from .store.rrt import RecipientRewriteTable
            self._rrt = RecipientRewriteTable(self._db)
        return self._rrt

    def close(self) -> None:
        for store in (self._rrt, self._users, self._domains):
            if store is not None:
                store.close()


# -- user -------------------------------------------------------------------------------


def _user(args, stores: _Stores) -> int:
    from .store.users import UserExistsError, normalize_username

    users = stores.users
    if args.action == "list":
        for name in users.list():
            print(name)
        return OK
    if args.action == "remove":
        name = args.username.strip().lower()
        if not users.remove(name):
            _err(f"no user {name}")
            return NOOP
        print(f"removed user {name}")
        left = [m for m in stores.rrt.list() if m.kind != "domain" and m.target == name]
        if left:
            _err(f"note: still mapped to {name}: "
                 + ", ".join(f"{m.kind} {m.source}" for m in left))
        return OK

    # add / passwd: check everything that can be checked before asking for the password.
    try:
        name = normalize_username(args.username)
    except ValueError as exc:
        _err(str(exc))
        return BAD
    if args.action == "add":
        domain = name.rpartition("@")[2]
        if not stores.domains.contains(domain):
            _err(f"cannot add user {name}: {domain} is not a local domain "
                 f"(add it to domainlist.xml or with: chainmail domain add {domain})")
            return BAD
        if users.contains(name):
            _err(f"user {name} already exists")
            return NOOP
        aliased_to = _alias_target(stores.rrt, name)
        if aliased_to is not None:
            _err(f"cannot add user {name}: it is an alias of {aliased_to} "
                 f"(remove it first: chainmail alias remove {name} {aliased_to})")
            return BAD
    elif not users.contains(name):
        _err(f"no user {name}")
        return NOOP

    from .store.users import load_password_policy
    try:
        policy = load_password_policy(stores.conf)
    except ConfigError as err:
        _err(f"configuration error: {err}")
        return BAD
    password = _read_password(args, name)
    if password is None:
        return BAD
    try:
        policy.check(password)
    except ValueError as exc:
        _err(f"{exc}; nothing changed")
        return BAD
    try:
        if args.action == "add":
            users.add(name, password)
            print(f"added user {name}")
            return OK
        if not users.set_password(name, password):
            _err(f"no user {name}")
            return NOOP
        print(f"changed password of {name}")
        return OK
    except UserExistsError as exc:
        _err(str(exc))
        return NOOP
    except ValueError as exc:
        _err(str(exc))
        return BAD


def _alias_target(rrt, address: str) -> str | None:
    for m in rrt.list():
        if m.kind == "alias" and m.source == address:
            return m.target
    return None


def _read_password(args, name: str) -> str | None:
    """The new password, or ``None`` after printing why there is none."""
    if args.password_stdin:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        password = line.rstrip("\r\n") if line.endswith("\n") else line
        if not password:
            _err("no password on standard input (--password-stdin reads its first line)")
            return None
        return password
    if sys.stdin is None or not sys.stdin.isatty():
        _err("standard input is not a terminal: give the password with --password-stdin")
        return None
    try:
        first = getpass.getpass(f"Password for {name}: ")
        if not first:
            _err("the password must not be empty")
            return None
        second = getpass.getpass("Retype the password: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        _err("no password given")
        return None
    if first != second:
        _err("the passwords differ; nothing changed")
        return None
    return first


# -- alias ------------------------------------------------------------------------------

_KIND_NAMES = {"alias": "alias", "forward": "forward", "domain": "domain alias"}


def _alias(args, stores: _Stores) -> int:
    from .store.rrt import RewriteLoopError

    rrt = stores.rrt
    if args.action == "list":
        mappings = rrt.list()
        width = max((len(m.source) for m in mappings), default=0)
        for m in mappings:
            print(f"{m.kind:<8} {m.source:<{width}}  {m.target}")
        return OK
    if args.action == "resolve":
        try:
            recipients = rrt.resolve(args.address)
        except RewriteLoopError as exc:
            _err(str(exc))
            return BAD
        for address in recipients:
            print(address)
        return OK
    if args.action == "add":
        return _alias_add(args, stores)
    return _alias_remove(args, stores)


def _alias_add(args, stores: _Stores) -> int:
    from .store.rrt import normalize_address

    rrt, kind = stores.rrt, args.kind
    what = _KIND_NAMES[kind]
    try:
        if kind == "domain":
            from .store.domains import normalize_domain
            source, target = normalize_domain(args.source), normalize_domain(args.target)
            if not stores.domains.contains(target):
                _err(f"cannot add domain alias {source} -> {target}: {target} is not a local domain")
                return BAD
            changed = rrt.add_domain_alias(source, target)
        else:
            source = normalize_address(args.source, f"{what} source")
            target = normalize_address(args.target, f"{what} target")
            domain = source.rpartition("@")[2]
            if not stores.domains.contains(domain) and not _is_alias_domain(rrt, domain):
                _err(f"cannot add {what} {source}: {domain} is not a local domain")
                return BAD
            if kind == "alias" and stores.users.contains(source):
                _err(f"cannot add alias {source}: it is a user (an alias is another name for a user)")
                return BAD
            add = rrt.add_alias if kind == "alias" else rrt.add_forward
            changed = add(source, target)
    except ValueError as exc:
        _err(str(exc))
        return BAD
    if not changed:
        _err(f"{what} {source} -> {target} already exists")
        return NOOP
    print(f"added {what} {source} -> {target}")
    if kind == "domain" and not stores.domains.contains(source):
        _err(f"note: {source} is not a local domain, so mail to it is not accepted as local; "
             f"add it with: chainmail domain add {source}")
    return OK


def _alias_remove(args, stores: _Stores) -> int:
    rrt, kind = stores.rrt, args.kind
    what = _KIND_NAMES[kind]
    source = args.source.strip().lower()
    if kind == "domain":
        current = {m.source: m.target for m in rrt.list() if m.kind == "domain"}
        from .store.domains import normalize_domain
        try:
            source = normalize_domain(args.source)
        except ValueError as exc:
            _err(str(exc))
            return BAD
        expected = current.get(source)
        if expected is None or (args.target is not None and not _same_domain(args.target, expected)):
            _err(f"no domain alias {source}" + (f" -> {args.target.lower()}" if args.target else ""))
            return NOOP
        rrt.remove_domain_alias(source)
        print(f"removed domain alias {source} -> {expected}")
        return OK
    if args.target is None:
        _err(f"alias remove: give the target of the {what} to remove "
             f"(chainmail alias list shows them)")
        return BAD
    target = args.target.strip().lower()
    remove = rrt.remove_alias if kind == "alias" else rrt.remove_forward
    if not remove(source, target):
        _err(f"no {what} {source} -> {target}")
        return NOOP
    print(f"removed {what} {source} -> {target}")
    return OK


def _is_alias_domain(rrt, domain: str) -> bool:
    return any(m.kind == "domain" and m.source == domain for m in rrt.list())


def _same_domain(given: str, stored: str) -> bool:
    from .store.domains import normalize_domain
    try:
        return normalize_domain(given) == stored
    except ValueError:
        return False


def _err(message: str) -> None:
    print(f"chainmail: {message}", file=sys.stderr)
