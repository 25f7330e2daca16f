"""``chainmail sieve`` and ``chainmail vacation``: users' Sieve scripts and vacation replies.

::

    chainmail sieve put bob@example.org main filter.sieve [--activate]   # or - for stdin
    chainmail sieve get bob@example.org main
    chainmail sieve list bob@example.org                     # names; the active one marked
    chainmail sieve activate bob@example.org main            # no name: none is active
    chainmail sieve delete bob@example.org main
    chainmail vacation set bob@example.org --subject "Away" --text "Back on Monday." \\
        [--html "<p>...</p>"] [--from-date 2026-07-01] [--to-date 2026-07-14] [--disabled]
    chainmail vacation show bob@example.org
    chainmail vacation clear bob@example.org

Both live in the shared database ``<var>/chainmail.db``, so a running server sees a change
with the next message.  A script is compiled before it is stored: a syntax error or an
extension chainmail does not run is refused (exit status 2) with the reason.  Exit status:
0 done, 1 nothing to do (no such script, user or vacation), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, time as dtime

__all__ = ["add_subcommands", "run"]

OK, NOOP, BAD = 0, 1, 2
COMMANDS = ("sieve", "vacation")


def add_subcommands(sub, common: argparse.ArgumentParser) -> None:
    """Add ``sieve`` and ``vacation`` to the ``chainmail`` subcommands ``sub``."""
    sieve = sub.add_parser("sieve", parents=[common],
                           help="manage users' Sieve scripts (one active per user)")
    ssub = sieve.add_subparsers(dest="action", required=True)
    p = ssub.add_parser("put", parents=[common], help="check and store a script")
    p.add_argument("username")
    p.add_argument("name", help="the script's name")
    p.add_argument("file", nargs="?", default="-", help="the script (default -: standard input)")
    p.add_argument("--activate", action="store_true", help="make it the active script too")
    for action, text in (("get", "print a script"), ("delete", "remove a script")):
        p = ssub.add_parser(action, parents=[common], help=text)
        p.add_argument("username")
        p.add_argument("name")
    p = ssub.add_parser("list", parents=[common], help="list a user's scripts")
    p.add_argument("username")
    p = ssub.add_parser("activate", parents=[common],
                        help="make a script the active one (without a name: none is)")
    p.add_argument("username")
    p.add_argument("name", nargs="?")

    vacation = sub.add_parser("vacation", parents=[common],
                              help="manage users' vacation (out-of-office) replies")
    vsub = vacation.add_subparsers(dest="action", required=True)
    p = vsub.add_parser("set", parents=[common], help="set (and enable) a user's vacation")
    p.add_argument("username")
    p.add_argument("--subject", help="the reply's subject (default: Re: and the original's)")
    p.add_argument("--text", help="the reply's text")
    p.add_argument("--html", help="the reply's HTML alternative")
    p.add_argument("--from-date", metavar="WHEN",
                   help="ISO 8601 date or date and time the replies start (default: now)")
    p.add_argument("--to-date", metavar="WHEN",
                   help="ISO 8601 date (to the end of that day) or date and time they stop")
    p.add_argument("--disabled", action="store_true", help="store it switched off")
    for action, text in (("show", "print a user's vacation"),
                         ("clear", "remove a user's vacation")):
        p = vsub.add_parser(action, parents=[common], help=text)
        p.add_argument("username")


def run(args: argparse.Namespace, conf: str, var: str) -> int:
    """Carry out ``chainmail sieve ...`` or ``chainmail vacation ...``."""
    if not os.path.isdir(var):
        _err(f"state directory {var} does not exist (give --var DIR)")
        return BAD
    db = os.path.join(var, "chainmail.db")
    username = args.username.strip().lower()
    from .store.backends import open_backend
    users = open_backend(conf, var).users(refresh_interval=0)
    try:
        known = users.contains(username)
    finally:
        users.close()
    if not known:
        _err(f"no user {username} (add it first: chainmail user add {username})")
        return NOOP
    if args.command == "sieve":
        return _sieve(args, db, username)
    return _vacation(args, db, username)


def _sieve(args, db: str, username: str) -> int:
    from .store.sieve import SieveStore, script_name_problem
    with SieveStore(db) as store:
        if args.action == "list":
            for each in store.list(username):
                print(f"{each.name}{'  (active)' if each.active else ''}")
            return OK
        if args.action == "activate":
            if not store.activate(username, args.name):
                _err(f"no script {args.name!r} of {username}")
                return NOOP
            print(f"active script of {username}: {args.name}" if args.name
                  else f"no active script for {username}")
            return OK
        if args.action == "get":
            script = store.get(username, args.name)
            if script is None:
                _err(f"no script {args.name!r} of {username}")
                return NOOP
            sys.stdout.write(script.script)
            return OK
        if args.action == "delete":
            if not store.delete(username, args.name):
                _err(f"no script {args.name!r} of {username}")
                return NOOP
            print(f"removed script {args.name} of {username}")
            return OK
        # put
        problem = script_name_problem(args.name)
        if problem:
            _err(problem)
            return BAD
        text = _read(args.file)
        if text is None:
            return BAD
        from chainmail.sieve_script import SieveScriptError, compile_script
        try:
            compile_script(text)
        except SieveScriptError as exc:
            _err(f"script refused: {exc}")
            return BAD
        store.put(username, args.name, text)
        if args.activate:
            store.activate(username, args.name)
        print(f"stored script {args.name} of {username}"
              + (" (active)" if args.activate else ""))
        return OK


def _read(path: str) -> str | None:
    from chainmail.sieve_script import MAX_SCRIPT_BYTES
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_SCRIPT_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        _err(f"cannot read {path}: {exc.strerror or exc}")
        return None
    if len(data) > MAX_SCRIPT_BYTES:
        _err(f"script refused: over the limit of {MAX_SCRIPT_BYTES} bytes")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _err("script refused: not UTF-8")
        return None


def _vacation(args, db: str, username: str) -> int:
    from .store.vacation import Vacation, VacationStore
    with VacationStore(db) as store:
        if args.action == "show":
            vacation = store.get(username)
            if vacation is None:
                _err(f"no vacation for {username}")
                return NOOP
            print(vacation.describe())
            return OK
        if args.action == "clear":
            if not store.clear(username):
                _err(f"no vacation for {username}")
                return NOOP
            print(f"vacation of {username} cleared")
            return OK
        try:
            start = _when(args.from_date, end_of_day=False)
            end = _when(args.to_date, end_of_day=True)
        except ValueError as exc:
            _err(str(exc))
            return BAD
        if start is not None and end is not None and end < start:
            _err("--to-date is before --from-date")
            return BAD
        if not (args.text or args.html):
            _err("give the reply's --text or --html")
            return BAD
        store.set(Vacation(username, not args.disabled, start, end, args.subject, args.text,
                           args.html))
        print(f"vacation of {username} set ({'disabled' if args.disabled else 'enabled'})")
        return OK


def _when(value: str | None, *, end_of_day: bool) -> float | None:
    """An ISO 8601 date or date and time (local time unless it says its offset) as epoch
    seconds; a date alone is the start of the day, or its end for ``end_of_day``."""
    if value is None:
        return None
    text = value.strip()
    try:
        if "T" not in text and " " not in text and len(text) <= 10:
            day = datetime.fromisoformat(text).date()
            return datetime.combine(day, dtime.max if end_of_day else dtime.min).timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{value!r}: expected an ISO 8601 date (2026-07-14) or date and "
                         "time (2026-07-14T18:00 or with an offset)") from None


def _err(message: str) -> None:
    print(f"chainmail: {message}", file=sys.stderr)
