"""``chainmail`` command line: run | check-config | domain | queue.

Every command takes ``--conf DIR`` (default ``./conf``) and ``--var DIR`` (default ``./var``);
all state lives under the var directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from . import cli_accounts, cli_queue
from .config import load_config
from .config.errors import ConfigError

log = logging.getLogger("chainmail")


class _LogFormatter(logging.Formatter):
    """The standard format, with the date formatted once a second instead of per line (a
    busy server writes a few lines per message)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._text},{int(record.msecs):03d}"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", default=argparse.SUPPRESS, metavar="DIR",
                        help="configuration directory (default ./conf)")
    common.add_argument("--var", default=argparse.SUPPRESS, metavar="DIR",
                        help="state directory: spool, databases (default ./var)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="chainmail", parents=[common],
                                     description="chainmail mail server")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run the servers of the configuration")
    run.add_argument("--grace-period", type=float, default=30.0, metavar="SECONDS",
                     help="on SIGTERM, how long transactions in flight may take to finish")
    sub.add_parser("check-config", parents=[common],
                   help="print each server's effective configuration and handler chain")
    domain = sub.add_parser("domain", parents=[common], help="manage local domains")
    dsub = domain.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        p = dsub.add_parser(action, parents=[common])
        p.add_argument("name")
    dsub.add_parser("list", parents=[common])
    sub.add_parser("keystore", parents=[common],
                   help="create a self-signed PKCS12 keystore for every TLS server whose keystore "
                        "file does not exist yet")
    cli_queue.add_subcommands(sub, common)
    cli_accounts.add_subcommands(sub, common)
    from .mailet import cli as mailet_cli
    mailet_cli.add_subcommands(sub, common)
    relaycheck = sub.add_parser("relaycheck", parents=[common],
                                help="open-relay self-test: run relay tricks against an SMTP server")
    relaycheck.add_argument("target", metavar="HOST:PORT",
                            help="server to test: an IP address ([::1]:25 for IPv6) or localhost; "
                                 "names are never resolved")
    relaycheck.add_argument("--from", dest="sender", default="relaycheck@relay-check.invalid",
                            metavar="ADDR", help="MAIL FROM address of the tricks "
                                                 "(default relaycheck@relay-check.invalid)")
    relaycheck.add_argument("--local-domain", default="localhost", metavar="DOMAIN",
                            help="a domain the server accepts mail for (default localhost)")
    relaycheck.add_argument("--helo", default="relaycheck.invalid", metavar="NAME",
                            help="EHLO/HELO name (default relaycheck.invalid)")
    relaycheck.add_argument("--timeout", type=float, default=10.0, metavar="S",
                            help="seconds to wait for the connection and each reply (default 10)")
    relaycheck.add_argument("--starttls", action="store_true",
                            help="issue STARTTLS after EHLO (the certificate is not verified)")
    relaycheck.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    conf = os.path.abspath(getattr(args, "conf", "conf"))
    var = os.path.abspath(getattr(args, "var", "var"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        if args.command == "run":
            return _run(conf, var, args.grace_period)
        if args.command == "check-config":
            return _check_config(conf, var)
        if args.command == "domain":
            return _domain(conf, var, args)
        if args.command == "queue":
            return cli_queue.run(var, args)
        if args.command == "keystore":
            return _keystore(conf)
        if args.command in ("user", "alias"):
            return cli_accounts.run(args, conf, var)
        if args.command in ("repository", "quota"):
            from .mailet import cli as mailet_cli
            return mailet_cli.run(args, conf, var)
        if args.command == "relaycheck":
            from .relaycheck import main as relaycheck_main
            return relaycheck_main(args)
    except ConfigError as err:
        print(f"chainmail: configuration error: {err}", file=sys.stderr)
        return 2
    return 1


def _load(conf: str):
    config = load_config(conf)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def _domains(var: str, config):
    from .store.domains import DomainStore
    os.makedirs(var, exist_ok=True)
    store = DomainStore(os.path.join(var, "chainmail.db"),
                        default_domain=config.domainlist.default_domain)
    return store


def _spool(var: str, **kwargs):
    from .store.spool import DirectorySpool
    return DirectorySpool(os.path.join(var, "spool"), **kwargs)


def _contexts(config, domains, spool, users=None, rrt=None):
    from .server.app import make_context
    return [make_context(s, domains=domains, spool=spool, users=users, rrt=rrt)
            for s in (*config.smtp_servers, *config.lmtp_servers) if s.enabled]


def _run(conf: str, var: str, grace_period: float) -> int:
    """One process, or a supervisor and ``ioWorkerCount`` worker processes."""
    from .server import workers
    config = _load(conf)
    servers = [s for s in (*config.smtp_servers, *config.lmtp_servers) if s.enabled]
    if not servers:
        print(f"chainmail: no enabled server in {conf}", file=sys.stderr)
        return 2
    _recover_spool(var)
    count = workers.worker_count(servers)
    if count == 1:
        return _serve(conf, var, config, grace_period)
    try:
        bound, holders = workers.bind_addresses(servers)
    except OSError as exc:
        print(f"chainmail: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for address in bound:
        cfg = servers[address.block]
        host, port = address.sockaddr[:2]
        log.info("%sserver %r listening on %s", cfg.kind, cfg.name,
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    from .server.limits import SharedTable
    os.makedirs(os.path.join(var, "run"), mode=0o700, exist_ok=True)
    limits_path = os.path.join(var, "run", "connections")
    SharedTable(limits_path, len(servers), count, create=True).close()
    log.info("starting %d worker processes (ioWorkerCount)", count)
    try:
        return workers.supervise(
            count,
            lambda index, ready_fd: _serve(conf, var, config, grace_period, worker=index,
                                           ready_fd=ready_fd, bound=bound,
                                           limits=(limits_path, count)),
            on_worker_exit=lambda index: _clear_worker(limits_path, len(servers), count, index))
    finally:
        for sock in holders:
            sock.close()


def _recover_spool(var: str) -> None:
    """Once, before any server or worker starts: clean up after an interrupted run."""
    import trio
    spool = _spool(var)
    removed = spool.recover()
    trio.run(spool.aclose)
    if removed:
        log.info("removed %d incomplete message(s) left in the spool by an interrupted run", removed)


def _clear_worker(path: str, blocks: int, count: int, index: int) -> None:
    from .server.limits import clear_worker
    clear_worker(path, blocks, count, index)


def _serve(conf: str, var: str, config, grace_period: float, *, worker: int | None = None,
           ready_fd: int | None = None, bound=None, limits=None) -> int:
    """Build the stores, servers and container of one process and serve until stopped.
    ``worker`` is the worker's index when several worker processes serve the blocks."""
    import trio

    from .server.app import run_servers
    domains = _domains(var, config)
    domains.seed(config.domainlist.domains)
    from .store.rrt import RecipientRewriteTable
    from .store.users import UsersRepository
    db = os.path.join(var, "chainmail.db")
    users = UsersRepository(db, domains=domains)
    rrt = RecipientRewriteTable(db)
    spool = _spool(var)
    spool.shared = worker is not None   # other workers take messages too: claims check again
    try:
        contexts = _contexts(config, domains, spool, users, rrt)
        container = _container(conf, var, config, spool, domains, users, rrt)
        if container is None:
            _require_container(contexts, conf)
    except ConfigError as err:
        print(f"chainmail: configuration error: {err}", file=sys.stderr)
        return 2
    if container is not None:
        mailboxes = container.mailboxes
    else:
        from .store.mailbox import MaildirStore
        mailboxes = MaildirStore(os.path.join(var, "mail"), db)
    table = None
    if limits is not None:
        from .server.limits import SharedLimits, SharedTable
        table = SharedTable(limits[0], len(contexts), limits[1])
    for block, ctx in enumerate(contexts):
        ctx.mailboxes = mailboxes  # LMTP delivers into these directly
        ctx.mailet_engine = container.engine if container is not None else None
        c = ctx.config
        if table is not None:
            ctx.limits = SharedLimits(table, block, worker, c.connection_limit,
                                      c.connection_limit_per_ip)
        if worker in (None, 0):
            log.info("%sserver %r: helloName %s, ioWorkerCount %s, bossWorkerCount %s, "
                     "maxExecutorCount %s", c.kind, c.name, ctx.hostname, c.io_worker_count,
                     c.boss_worker_count, c.max_executor_count)
    services = container.services if container is not None and worker in (None, 0) else ()

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"r")
            os.close(ready_fd)
    try:
        trio.run(lambda: run_servers(contexts, grace_period=grace_period, spool=spool,
                                     spooler=container.spooler if container else None,
                                     services=services, bound=bound, worker=worker,
                                     on_ready=ready))
    except OSError as exc:
        print(f"chainmail: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if container is not None:
            container.close()
        else:
            mailboxes.close()
        users.close()
        rrt.close()
        domains.close()
        if table is not None:
            table.close()
    return 0


def _require_container(contexts, conf: str) -> None:
    """A handler that needs the mailet container (LMTP's ``MailetContainerHandler``) is a
    configuration error, naming its file and line, when there is no mailetcontainer.xml."""
    from .mailet.config import FILE
    for ctx in contexts:
        for entry in ctx.chain.entries:
            handler = entry.handler
            if getattr(handler, "needs_mailet_container", False):
                cfg = getattr(handler, "config", None)
                raise ConfigError(getattr(cfg, "file", "") or ctx.config.file,
                                  getattr(cfg, "line", None) or ctx.config.line,
                                  f"handler {entry.name}",
                                  f"needs the mailet container, but {os.path.join(conf, FILE)} "
                                  "does not exist")


def _container(conf: str, var: str, config, spool, domains, users, rrt):
    """The mailet container of ``conf/mailetcontainer.xml``; None (mail stays spooled) without it."""
    from .mailet import build_container
    from .mailet.config import FILE, load_mailetcontainer
    path = os.path.join(conf, FILE)
    mc = load_mailetcontainer(path)
    if mc is None:
        log.info("no mailet container is configured (%s not found): accepted mail stays in "
                 "the spool", path)
        return None
    for warning in mc.warnings:
        log.warning("%s", warning)
    return build_container(mc, var=var, spool=spool, domains=domains, users=users, rrt=rrt,
                           servers=config.servers, conf=conf)


def _check_config(conf: str, var: str) -> int:
    from .config import describe_server
    from .server.context import ServerContext
    from .chain import build_chain
    config = _load(conf)
    print(f"# configuration directory {conf}")
    from .server.workers import worker_count
    count = worker_count((*config.smtp_servers, *config.lmtp_servers))
    print(f"worker processes = {count} (ioWorkerCount, the largest of the enabled blocks; "
          f"{'one process, no supervisor' if count == 1 else 'a supervisor and its workers'})")
    dl = config.domainlist
    print(f"domainlist: domains={', '.join(dl.domains) or '(none)'} defaultDomain={dl.default_domain} "
          f"autodetect={str(dl.autodetect).lower()} autodetectIP={str(dl.autodetect_ip).lower()}")
    for server in (*config.smtp_servers, *config.lmtp_servers):
        print()
        print(f"[{server.kind}server {server.name}] ({server.file}:{server.line})")
        for key, value in describe_server(server):
            print(f"  {key} = {value}")
        if not server.enabled:
            continue
        ctx = ServerContext(server, domains=None, spool=None)
        chain = build_chain(server.handlerchain, ctx, timeout=server.handler_timeout)
        print("  handler chain, in call order:")
        for i, line in enumerate(chain.describe(), 1):
            print(f"    {i:2d}. {line}")
    from .mailet.cli import describe_container
    for line in describe_container(conf, var):
        print(line)
    for warning in config.warnings:
        print(str(warning))
    return 0


def _keystore(conf: str) -> int:
    """For trying TLS out: real deployments bring their own certificates."""
    from .server.tls import create_self_signed_keystore
    config = _load(conf)
    done: set[str] = set()
    for server in (*config.smtp_servers, *config.lmtp_servers):
        tls = server.tls
        if not (server.enabled and tls.enabled and tls.keystore) or tls.keystore in done:
            continue
        done.add(tls.keystore)
        if os.path.exists(tls.keystore):
            print(f"{tls.keystore}: exists, kept")
            continue
        if tls.keystore_type.upper() not in ("PKCS12", "JKS"):
            print(f"{tls.keystore}: keystoreType {tls.keystore_type} is not PKCS12; not created")
            continue
        names = sorted({server.hello_name, "localhost"})
        try:
            create_self_signed_keystore(tls.keystore, tls.secret, names)
        except OSError as exc:
            print(f"chainmail: {server.file}:{server.line}: tls/keystore: cannot create "
                  f"{tls.keystore}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"{tls.keystore}: created a self-signed certificate for {', '.join(names)}")
    return 0


def _domain(conf: str, var: str, args) -> int:
    config = _load(conf)
    store = _domains(var, config)
    try:
        if args.action == "list":
            for name in store.list():
                print(name)
            return 0
        try:
            changed = store.add(args.name) if args.action == "add" else store.remove(args.name)
        except ValueError as exc:
            print(f"chainmail: {exc}", file=sys.stderr)
            return 2
        if not changed:
            state = "already present" if args.action == "add" else "not present"
            print(f"chainmail: domain {args.name} {state}", file=sys.stderr)
            return 1
        print(f"{'added' if args.action == 'add' else 'removed'} {args.name.lower()}")
        return 0
    finally:
        store.close()
