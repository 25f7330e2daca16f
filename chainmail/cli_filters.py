"""``chainmail filter``: each user's filtering rules, applied by the ``JMAPFiltering`` mailet.

::

    chainmail filter add bob@example.org --if subject contains "[news]" --folder News
    chainmail filter add bob@example.org --if from exactly-equals boss@example.org \\
        --if header:X-Priority start-with 1 --any --move-to Urgent
    chainmail filter add bob@example.org --if to contains list@ --forward me@elsewhere.example --keep-copy
    chainmail filter add bob@example.org --if subject contains spam --reject
    chainmail filter add bob@example.org --json rule.json      # James's JSON rule (or a list), - = stdin
    chainmail filter list bob@example.org [--json]
    chainmail filter remove bob@example.org ID
    chainmail filter clear bob@example.org

Fields: ``from``, ``to``, ``cc``, ``recipient`` (To and Cc), ``subject``, ``header:NAME``;
comparators: ``contains``, ``not-contains``, ``exactly-equals``, ``not-exactly-equals``,
``start-with``, ``any``.  Conditions must all hold, or one with ``--any``.  The rules live
in ``<var>/chainmail.db``; a running server applies a change from the next mail.  Exit status: 0
done, 1 nothing to do (no such user, rule or rules), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .store.filters import COMPARATORS, FIELDS, RuleError, parse_rule

__all__ = ["add_subcommands", "run"]

OK, NOOP, BAD = 0, 1, 2


def add_subcommands(sub, common: argparse.ArgumentParser) -> None:
    """Add ``filter`` to the ``chainmail`` subcommands ``sub``."""
    flt = sub.add_parser("filter", parents=[common],
                         help="manage users' filtering rules (James's JMAP filters)")
    fsub = flt.add_subparsers(dest="action", required=True)
    add = fsub.add_parser("add", parents=[common], help="add a rule after the user's others")
    add.add_argument("username", help="full address, e.g. bob@example.org")
    add.add_argument("--if", dest="conditions", nargs=3, action="append", default=[],
                     metavar=("FIELD", "COMPARATOR", "VALUE"),
                     help=f"a condition; FIELD: {', '.join(FIELDS)} or header:NAME; "
                          f"COMPARATOR: {', '.join(COMPARATORS)} (repeatable)")
    add.add_argument("--any", action="store_true", help="one condition suffices (default: all)")
    add.add_argument("--folder", action="append", default=[], metavar="NAME",
                     help="file the mail into this folder (repeatable; 'A/B' for a subfolder)")
    add.add_argument("--move-to", metavar="NAME", help="file the mail into this folder")
    add.add_argument("--reject", action="store_true", help="do not deliver it to the user")
    add.add_argument("--forward", action="append", default=[], metavar="ADDRESS",
                     help="forward the mail to this address (repeatable)")
    add.add_argument("--keep-copy", action="store_true", help="with --forward: deliver it too")
    add.add_argument("--name", help="the rule's name (default: its id)")
    add.add_argument("--id", dest="rule_id", help="the rule's id (default: the next number)")
    add.add_argument("--json", dest="json_file", metavar="FILE",
                     help="read the rule (or a list of rules) in James's JSON form; - = stdin")
    lst = fsub.add_parser("list", parents=[common], help="list a user's rules in order")
    lst.add_argument("username")
    lst.add_argument("--json", action="store_true", help="print the rules in James's JSON form")
    rm = fsub.add_parser("remove", parents=[common], help="remove one rule")
    rm.add_argument("username")
    rm.add_argument("rule_id", metavar="ID")
    clear = fsub.add_parser("clear", parents=[common], help="remove every rule of a user")
    clear.add_argument("username")


def run(args: argparse.Namespace, conf: str, var: str) -> int:
    """Carry out ``chainmail filter ...``; return the exit status."""
    if not os.path.isdir(var):
        _err(f"state directory {var} does not exist (give --var DIR; `chainmail user add` "
             "creates it)")
        return BAD
    from .store.filters import FilterStore
    from .store.sqlite import DB_FILENAME
    db = os.path.join(var, DB_FILENAME)
    user = args.username.strip().lower()
    store = FilterStore(db)
    try:
        if args.action == "add":
            if not _known_user(conf, db, user):
                _err(f"no user {user} (`chainmail user list` shows the users)")
                return NOOP
            return _add(args, store, user)
        if args.action == "list":
            return _list(args, store, user)
        if args.action == "remove":
            if store.remove(user, args.rule_id):
                print(f"removed rule {args.rule_id} of {user}")
                return OK
            _err(f"{user} has no rule {args.rule_id!r}")
            return NOOP
        count = store.clear(user)
        print(f"removed {count} rule(s) of {user}")
        return OK if count else NOOP
    finally:
        store.close()


def _known_user(conf: str, db: str, user: str) -> bool:
    from .config import load_config
    from .store.backends import open_backend
    config = load_config(conf)
    backend = open_backend(conf, os.path.dirname(db))
    domains = backend.domains(default_domain=config.domainlist.default_domain)
    try:
        users = backend.users(domains=domains)
        try:
            return users.contains(users.username_for(user))
        finally:
            users.close()
    finally:
        domains.close()


def _rules_from_args(args, store, user: str) -> list:
    if args.json_file:
        if args.conditions or args.folder or args.move_to or args.reject or args.forward:
            raise RuleError("--json takes the whole rule: give no --if or action options")
        text = sys.stdin.read() if args.json_file == "-" else Path(args.json_file).read_text()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RuleError(f"{args.json_file}: not JSON: {exc}") from None
        return [parse_rule(item) for item in (data if isinstance(data, list) else [data])]
    if args.keep_copy and not args.forward:
        raise RuleError("--keep-copy goes with --forward")
    rule = {
        "id": args.rule_id or store.next_id(user),
        "name": args.name,
        "conditionGroup": {"conditionCombiner": "OR" if args.any else "AND",
                           "conditions": [{"field": f, "comparator": c, "value": v}
                                          for f, c, v in args.conditions]},
        "action": {"appendIn": {"mailboxIds": args.folder},
                   "moveTo": {"mailboxName": args.move_to} if args.move_to else None,
                   "reject": args.reject,
                   "forwardTo": ({"addresses": args.forward, "keepACopy": args.keep_copy}
                                 if args.forward else None)},
    }
    return [parse_rule(rule)]


def _add(args, store, user: str) -> int:
    try:
        rules = _rules_from_args(args, store, user)
        for rule in rules:
            store.add(user, rule)
            print(f"added rule {rule.id} for {user}: {_describe(rule)}")
    except (RuleError, OSError) as exc:
        _err(str(exc))
        return BAD
    return OK


def _describe(rule) -> str:
    joiner = " or " if rule.combiner == "OR" else " and "
    when = joiner.join(f"{c.field} {c.comparator} {json.dumps(c.value)}" for c in rule.conditions)
    actions = [f"into {f}" for f in rule.folders]
    if rule.move_to:
        actions.append(f"into {rule.move_to}")
    if rule.reject:
        actions.append("reject")
    if rule.forward:
        actions.append("forward to " + ", ".join(rule.forward)
                       + (" (keep a copy)" if rule.keep_a_copy else ""))
    return f"if {when}: {'; '.join(actions)}"


def _list(args, store, user: str) -> int:
    rules = store.rules(user)
    if args.json:
        print(json.dumps([rule.to_json() for rule in rules], indent=2))
        return OK
    if not rules:
        print(f"{user} has no filtering rules")
        return NOOP
    for rule in rules:
        name = f" ({rule.name})" if rule.name != rule.id else ""
        print(f"{rule.id}{name}: {_describe(rule)}")
    return OK


def _err(message: str) -> None:
    print(f"chainmail: {message}", file=sys.stderr)
