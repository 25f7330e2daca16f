"""``chainmail repository list|show|reprocess|remove`` and ``chainmail quota``."""

from __future__ import annotations

import os
import sys
import time

from ..durations import format_age

__all__ = ["add_subcommands", "run", "describe_container"]


_SECRET_WORDS = ("password", "secret")


def _shown(key: str, value: str) -> str:
    return "****" if any(w in key.lower() for w in _SECRET_WORDS) and value else value


def describe_container(conf: str, var: str, errors: list | None = None,
                       warnings: list | None = None) -> list[str]:
    """``chainmail check-config``: the mailet container, every matcher and mailet resolved
    with the parameters it is given (secrets masked).  Without ``errors`` a configuration
    error raises ``ConfigError`` as at start; with a list, every error is appended to it
    and the rest is still described.  Warnings go to ``warnings`` when given, else into
    the returned lines."""
    from ..config.errors import ConfigError
    from .config import FILE, load_mailetcontainer
    from .context import MailetContext
    from .engine import build_engine
    from .repository import RepositoryStore
    path = os.path.join(conf, FILE)
    try:
        config = load_mailetcontainer(path, errors)   # with a list, every error goes there
    except ConfigError as exc:
        if errors is None:
            raise
        errors.append(exc)
        config = None
    if config is None and os.path.exists(path):
        return ["", f"[mailetcontainer] ({path}): not readable, see the errors"]
    if config is None:
        return ["", f"[mailetcontainer] {path} not found: accepted mail stays in the spool"]
    found: list = []
    try:
        repositories = RepositoryStore(var, conf)
    except ConfigError:   # a bad postgres.properties: check-config reports it on its own
        repositories = RepositoryStore(var)
    engine = build_engine(config, MailetContext(repositories=repositories,
                                                postmaster=config.postmaster, conf_dir=conf,
                                                var_dir=var, states=config.states),
                         errors=errors, warnings=found)
    out = ["", f"[mailetcontainer] ({path})",
           f"  postmaster = {config.postmaster}", f"  spooler/threads = {config.threads}",
           f"  spooler/errorRepository = {config.error_repository}"]
    for pconf in config.processors:
        made = {pair.line: pair for pair in engine.processors[pconf.state].pairs}
        out.append(f"  processor {pconf.state}:")
        for i, entry in enumerate(pconf.mailets, 1):
            match = ("not " if entry.invert else "") + entry.matcher.text
            pair = made.get(entry.line)
            target = (f"{type(pair.mailet).__module__}:{type(pair.mailet).__qualname__}"
                      if pair is not None else "(not built: see the errors)")
            extra = "" if entry.on_mailet_exception == "error" else f" (onMailetException={entry.on_mailet_exception})"
            if entry.on_match_exception != "error":
                extra += f" (onMatchException={entry.on_match_exception})"
            out.append(f"    {i:2d}. {match} -> {entry.class_name} -> {target}{extra}")
            for key, value in entry.params.items():
                out.append(f"          {key} = {_shown(key, value)}")
    config_warnings = [*config.warnings, *found]
    if warnings is None:
        out += [str(w) for w in config_warnings]
    else:
        warnings.extend(config_warnings)
    return out


def add_subcommands(sub, common) -> None:
    repo = sub.add_parser("repository", parents=[common],
                          help="mail repositories (error, relay-denied ...): list, show, "
                               "reprocess, remove")
    rsub = repo.add_subparsers(dest="action", required=True)
    rsub.add_parser("list", parents=[common], help="every repository with its mail count")
    show = rsub.add_parser("show", parents=[common],
                           help="the mails of a repository, or one mail in full")
    show.add_argument("name", help="repository: name under var/mail (error), URL or path")
    show.add_argument("key", nargs="?", help="a mail's key: print its envelope and message")
    again = rsub.add_parser("reprocess", parents=[common],
                            help="put mails back into the spool (they leave the repository)")
    again.add_argument("name")
    again.add_argument("keys", nargs="*", metavar="KEY", help="the mails (default: all)")
    again.add_argument("--state", default="root", metavar="PROCESSOR",
                       help="processor to start from (default root)")
    remove = rsub.add_parser("remove", parents=[common], help="delete mails from a repository")
    remove.add_argument("name")
    remove.add_argument("keys", nargs="*", metavar="KEY")
    remove.add_argument("--all", action="store_true", help="delete every mail of the repository")

    quota = sub.add_parser("quota", parents=[common], help="mailbox quotas of local users")
    qsub = quota.add_subparsers(dest="action", required=True)
    qset = qsub.add_parser("set", parents=[common], help="set a user's quota")
    qset.add_argument("user")
    qset.add_argument("size", help="bytes, or with a unit: 500k, 100m, 2g")
    qrm = qsub.add_parser("remove", parents=[common], help="remove a user's quota (unlimited)")
    qrm.add_argument("user")
    qsub.add_parser("list", parents=[common], help="every quota with the current usage")


def run(args, conf: str, var: str) -> int:
    if args.command == "quota":
        return _quota(args, conf, var)
    from .repository import RepositoryStore
    store = RepositoryStore(var, conf)   # with postgres.properties: postgres:// in PostgreSQL
    try:
        return _repository(args, store, var)
    finally:
        store.close()


def _repository(args, store, var: str) -> int:
    if args.action == "list":
        repos = store.list()
        print(f"{'NAME':<28} {'MAILS':>6}  URL")
        for repo in repos:
            print(f"{store.name_of(repo):<28} {len(repo):>6}  {repo.url}")
        print(f"{len(repos)} repositor{'y' if len(repos) == 1 else 'ies'}")
        return 0
    found = store.find(args.name)
    if found is None:
        known = ", ".join(store.name_of(r) for r in store.list()) or "none yet"
        print(f"chainmail: no repository {args.name!r} (repositories: {known})", file=sys.stderr)
        return 1
    repo = found
    if args.action == "show":
        return _show(repo, args.key)
    if args.action == "remove":
        if not args.keys and not args.all:
            print("chainmail: name the mails to remove, or --all", file=sys.stderr)
            return 2
        keys = repo.keys() if args.all else args.keys
        missing = 0
        for key in keys:
            if repo.remove(key):
                print(f"removed {key}")
            else:
                print(f"chainmail: no mail {key} in {args.name}", file=sys.stderr)
                missing += 1
        return 1 if missing else 0
    return _reprocess(repo, args.keys or repo.keys(), args.state, var)


def _show(repo, key: str | None) -> int:
    if key is None:
        mails = repo.list()
        now = time.time()
        print(f"{'KEY':<30} {'AGE':>6} {'STATE':<16} SENDER -> RECIPIENTS: ERROR")
        for m in mails:
            print(f"{m.key:<30} {format_age(now - m.stored_at):>6} {m.state:<16} <{m.sender}> -> "
                  + ", ".join(f"<{r}>" for r in m.recipients)
                  + (f": {m.error_message}" if m.error_message else ""))
        print(f"{len(mails)} mail(s) in {repo.url}")
        return 0
    try:
        mail = repo.retrieve(key)
        info = repo.info(key)
    except KeyError:
        print(f"chainmail: no mail {key} in {repo.url}", file=sys.stderr)
        return 1
    print(f"key: {key}")
    print(f"name: {mail.name}")
    print(f"stored: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(info.stored_at))}")
    print(f"state: {mail.state}")
    print(f"sender: <{mail.sender}>")
    print("recipients: " + ", ".join(f"<{r}>" for r in mail.recipients))
    print(f"error: {mail.error_message or '-'}")
    for name, value in sorted(mail.attributes.items()):
        print(f"attribute {name}: {value}")
    print()
    sys.stdout.flush()
    sys.stdout.buffer.write(mail.content.replace(b"\r\n", b"\n"))
    sys.stdout.buffer.flush()
    return 0


def _reprocess(repo, keys: list[str], state: str, var: str) -> int:
    """The mails back into the spool at ``state`` (``chainmail.admin``, as WebAdmin does)."""
    from chainmail.admin.repositories import reprocess
    failures = 0
    for key, outcome, detail in reprocess(var, repo, keys, state):
        if outcome == "spooled":
            print(f"{key} -> spool {detail} (state {state})")
        else:
            print(f"chainmail: {key}: {detail}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def _quota(args, conf: str, var: str) -> int:
    """Quotas where the server reads them (``var/chainmail.db``, or PostgreSQL with
    ``conf/postgres.properties``); usage from the Maildirs of ``var/mail``."""
    from chainmail.config.size import parse_size
    from chainmail.store.backends import open_backend
    from chainmail.store.mailbox import MaildirStore
    store = MaildirStore(os.path.join(var, "mail"),
                         quotas=open_backend(conf, var).quotas(refresh_interval=0))
    try:
        if args.action == "list":
            quotas = store.quotas()
            print(f"{'USER':<40} {'USED':>12} {'QUOTA':>12}")
            for user, limit in quotas.items():
                print(f"{user:<40} {store.usage(user):>12} {limit:>12}")
            print(f"{len(quotas)} quota(s)")
            return 0
        if args.action == "remove":
            store.set_quota(args.user, None)
            print(f"removed the quota of {args.user.lower()}")
            return 0
        try:
            size = _size(args.size, parse_size)
        except ValueError as exc:
            print(f"chainmail: {exc}", file=sys.stderr)
            return 2
        store.set_quota(args.user, size)
        print(f"quota of {args.user.lower()}: {size} bytes")
        return 0
    finally:
        store.close()


def _size(text: str, parse_size) -> int:
    value = text.strip()
    if value.upper() == "UNLIMITED":
        raise ValueError("use `chainmail quota remove USER` for no quota")
    return parse_size(value, "B")   # a bare number is bytes; 500k, 100m, 2g
