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
import sys

from .admin import AdminError, Stores, accounts, domains
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
    stores = Stores(config, conf, var)
    try:
        if args.command == "user":
            return _user(args, stores)
        return _alias(args, stores)
    except AdminError as exc:
        _err(str(exc))
        return exc.exit_status
    except ConfigError as err:
        _err(f"configuration error: {err}")
        return BAD
    finally:
        stores.close()


# -- user -------------------------------------------------------------------------------


def _user(args, stores: Stores) -> int:
    if args.action == "list":
        for name in accounts.list_users(stores):
            print(name)
        return OK
    if args.action == "remove":
        left = accounts.remove_user(stores, args.username)
        name = args.username.strip().lower()
        print(f"removed user {name}")
        if left:
            _err(f"note: still mapped to {name}: "
                 + ", ".join(f"{m.kind} {m.source}" for m in left))
        return OK

    # add / passwd: check everything that can be checked before asking for the password.
    if args.action == "add":
        name = accounts.check_new_user(stores, args.username)
    else:
        name = accounts.check_existing_user(stores, args.username)
    from .store.users import load_password_policy
    load_password_policy(stores.conf)   # a broken policy file is reported before the prompt
    password = _read_password(args, name)
    if password is None:
        return BAD
    try:
        accounts.check_password(stores, password)
    except AdminError as exc:
        _err(f"{exc}; nothing changed")
        return BAD
    if args.action == "add":
        accounts.add_user(stores, name, password)
        print(f"added user {name}")
        return OK
    accounts.set_password(stores, name, password)
    print(f"changed password of {name}")
    return OK


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


def _alias(args, stores: Stores) -> int:
    from .store.rrt import RewriteLoopError

    if args.action == "list":
        mappings = accounts.mappings(stores)
        width = max((len(m.source) for m in mappings), default=0)
        for m in mappings:
            print(f"{m.kind:<8} {m.source:<{width}}  {m.target}")
        return OK
    if args.action == "resolve":
        try:
            recipients = stores.rrt.resolve(args.address)
        except RewriteLoopError as exc:
            _err(str(exc))
            return BAD
        for address in recipients:
            print(address)
        return OK
    if args.action == "add":
        return _alias_add(args, stores)
    return _alias_remove(args, stores)


def _alias_add(args, stores: Stores) -> int:
    kind = args.kind
    what = accounts.KIND_NAMES[kind]
    if kind == "domain":
        source, target, changed = domains.add_domain_alias(stores, args.source, args.target)
    else:
        source, target, changed = accounts.add_mapping(stores, kind, args.source, args.target)
    if not changed:
        _err(f"{what} {source} -> {target} already exists")
        return NOOP
    print(f"added {what} {source} -> {target}")
    if kind == "domain" and not stores.domains.contains(source):
        _err(f"note: {source} is not a local domain, so mail to it is not accepted as local; "
             f"add it with: chainmail domain add {source}")
    return OK


def _alias_remove(args, stores: Stores) -> int:
    kind = args.kind
    what = accounts.KIND_NAMES[kind]
    if kind == "domain":
        source, expected = domains.remove_domain_alias(stores, args.source, args.target)
        print(f"removed domain alias {source} -> {expected}")
        return OK
    if args.target is None:
        _err(f"alias remove: give the target of the {what} to remove "
             f"(chainmail alias list shows them)")
        return BAD
    source, target = accounts.remove_mapping(stores, kind, args.source, args.target)
    print(f"removed {what} {source} -> {target}")
    return OK


def _err(message: str) -> None:
    print(f"chainmail: {message}", file=sys.stderr)
