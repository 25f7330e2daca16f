"""``chainmail`` command line: run | check-config | domain | queue.

Every command takes ``--conf DIR`` (default ``./conf``) and ``--var DIR`` (default ``./var``);
all state lives under the var directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import cli_accounts, cli_queue, logsetup
from . import cli_filters
from . import cli_sieve
from .config import load_config
from .config.errors import ConfigError

log = logging.getLogger("chainmail")


#: The text log format's formatter (kept under this name for code that imported it).
_LogFormatter = logsetup.TextFormatter


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", default=argparse.SUPPRESS, metavar="DIR",
                        help="configuration directory (default ./conf)")
    common.add_argument("--var", default=argparse.SUPPRESS, metavar="DIR",
                        help="state directory: spool, databases (default ./var)")
    common.add_argument("--log-file", default=argparse.SUPPRESS, metavar="PATH",
                        help="append log lines to PATH instead of stderr; reopened on SIGHUP "
                             "(logrotate); 'syslog' is the same as --syslog")
    common.add_argument("--syslog", action="store_true", default=argparse.SUPPRESS,
                        help="log to syslog (/dev/log), facility mail")
    common.add_argument("--syslog-address", default=argparse.SUPPRESS, metavar="ADDRESS",
                        help="log to syslog at ADDRESS: a socket path, or IP:PORT over UDP")
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                        help="text (default), or json: one JSON object per line")
    return common


class _VersionAction(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"chainmail {version('chainmail')}"
    except PackageNotFoundError:
        return "chainmail (version unknown: the package is not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="chainmail", parents=[common],
                                     description="chainmail mail server")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run the servers of the configuration")
    run.add_argument("--grace-period", type=float, default=30.0, metavar="SECONDS",
                     help="on SIGTERM, how long transactions in flight may take to finish")
    check = sub.add_parser("check-config", parents=[common],
                           help="print each server's effective configuration and handler chain, "
                                "and every error of the configuration")
    check.add_argument("--strict", action="store_true",
                       help="treat warnings (unknown parameters, ignored elements) as errors")
    sub.add_parser("migrate-accounts", parents=[common],
                   help="copy the domains, users (password hashes), aliases and quotas of "
                        "var/chainmail.db into the PostgreSQL of conf/postgres.properties")
    domain = sub.add_parser("domain", parents=[common], help="manage local domains")
    dsub = domain.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        p = dsub.add_parser(action, parents=[common])
        p.add_argument("name")
    p.add_argument("--force", action="store_true",
                   help="remove the domain even though users or mappings still use it")
    dsub.add_parser("list", parents=[common])
    sub.add_parser("keystore", parents=[common],
                   help="create a self-signed PKCS12 keystore for every TLS server whose keystore "
                        "file does not exist yet")
    cli_queue.add_subcommands(sub, common)
    cli_accounts.add_subcommands(sub, common)
    cli_filters.add_subcommands(sub, common)
    cli_sieve.add_subcommands(sub, common)
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


# What each command reads: ``queue`` and ``relaycheck`` need no configuration directory;
# these use the state directory, which ``run`` (once its configuration is good) and the
# commands of _CREATES_STATE may create.
_USES_VAR = {"run", "domain", "queue", "user", "alias", "repository", "quota",
             "migrate-accounts"}
_NO_CONF = {"queue", "relaycheck"}
_CREATES_STATE = {("domain", "add"), ("user", "add"), ("alias", "add")}
EXIT_BROKEN_PIPE = 128 + 13   # as a shell reports a tool killed by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Exit statuses: 0 success, 1 failure, 2 usage or configuration error, 130 interrupted,
    141 when the reader of the output went away (``chainmail queue list | head -1``)."""
    args = build_parser().parse_args(argv)
    try:
        code = _main(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader closed the pipe: nothing more can be said, and Python's exit-time
        # flush must not fail again on the same pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130


def _main(args) -> int:
    conf = os.path.abspath(getattr(args, "conf", "conf"))
    var = os.path.abspath(getattr(args, "var", "var"))
    try:
        logsetup.configure(level=logging.DEBUG if args.verbose else logging.INFO,
                           log_file=getattr(args, "log_file", None),
                           syslog=getattr(args, "syslog_address", None) or (
                               logsetup.DEFAULT_SYSLOG if getattr(args, "syslog", False) else None),
                           fmt=getattr(args, "log_format", "text"))
    except logsetup.LogSetupError as err:
        print(f"chainmail: {err}", file=sys.stderr)
        return 2
    problem = None
    if args.command not in _NO_CONF:
        problem = _conf_problem(conf, explicit=hasattr(args, "conf"))
    if problem is None and args.command in _USES_VAR and args.command != "run":
        problem = _state_dir(var, explicit=hasattr(args, "var"), create=(
            args.command, getattr(args, "action", None)) in _CREATES_STATE, announce=True)
    if problem is not None:
        print(f"chainmail: {problem}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            return _run(conf, var, args.grace_period, var_given=hasattr(args, "var"))
        if args.command == "check-config":
            return _check_config(conf, var, args.strict)
        if args.command == "domain":
            return _domain(conf, var, args)
        if args.command == "queue":
            return cli_queue.run(var, args, conf)
        if args.command == "keystore":
            return _keystore(conf)
        if args.command == "migrate-accounts":
            return _migrate_accounts(conf, var)
        if args.command in ("user", "alias"):
            return cli_accounts.run(args, conf, var)
        if args.command in cli_sieve.COMMANDS:
            return cli_sieve.run(args, conf, var)
        if args.command == "filter":
            return cli_filters.run(args, conf, var)
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


def _conf_problem(conf: str, *, explicit: bool) -> str | None:
    """A configuration directory that is not there is an error, never an empty configuration."""
    given = "--conf" if explicit else "the default ./conf; give --conf DIR"
    if not os.path.exists(conf):
        return f"configuration directory {conf} does not exist ({given})"
    if not os.path.isdir(conf):
        return f"configuration directory {conf} is not a directory ({given})"
    return None


def _state_dir(var: str, *, explicit: bool, create: bool, announce: bool) -> str | None:
    """A missing state directory is created only by ``run`` and the ``add`` commands, and
    only inside an existing directory: a mistyped ``--var`` must not silently start an empty
    state (the others have nothing to read or change there, and say so)."""
    given = "--var" if explicit else "the default ./var; give --var DIR"
    if os.path.isdir(var):
        return None
    if os.path.exists(var):
        return f"state directory {var} is not a directory ({given})"
    if not create:
        return (f"state directory {var} does not exist ({given}); chainmail run and the add "
                f"commands create it")
    parent = os.path.dirname(var)
    if not os.path.isdir(parent):
        return f"state directory {var} cannot be created: {parent} does not exist ({given})"
    try:
        os.mkdir(var, 0o750)
    except OSError as exc:
        return f"cannot create state directory {var}: {exc.strerror or exc}"
    if announce:
        print(f"chainmail: created state directory {var}", file=sys.stderr)
    else:
        log.info("created state directory %s (first start)", var)
    return None


def _load(conf: str):
    config = load_config(conf)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def _domains(backend, var: str, config):
    os.makedirs(var, exist_ok=True)
    return backend.domains(default_domain=config.domainlist.default_domain)


def _spool(var: str, conf: str | None = None, **kwargs):
    """The spool between the servers and the container: ``var/spool``, or RabbitMQ's
    ``spool`` queue when ``conf/rabbitmq.properties`` exists (docs/cluster.md)."""
    if conf is not None:
        from .store.amqp import load_rabbitmq
        rabbitmq = load_rabbitmq(conf)
        if rabbitmq is not None:
            from .store.amqp.spool import BrokerSpool
            from .store.postgres.blobs import open_blobs
            return BrokerSpool(rabbitmq, os.path.join(var, "spool", "tmp"),
                               blobs=open_blobs(conf))   # large content in PostgreSQL
    from .store.spool import DirectorySpool
    return DirectorySpool(os.path.join(var, "spool"), **kwargs)


def _contexts(config, domains, spool, users=None, rrt=None):
    from .server.app import make_context
    return [make_context(s, domains=domains, spool=spool, users=users, rrt=rrt)
            for s in (*config.smtp_servers, *config.lmtp_servers) if s.enabled]


def _run(conf: str, var: str, grace_period: float, *, var_given: bool = True) -> int:
    """One process, or a supervisor and ``ioWorkerCount`` worker processes.  The state
    directory is created on the first start, once the configuration is known to be good."""
    from .server import workers
    config = _load(conf)
    servers = [s for s in (*config.smtp_servers, *config.lmtp_servers) if s.enabled]
    if not servers:
        print(f"chainmail: no enabled server in {conf}", file=sys.stderr)
        return 2
    missing = _missing_keystore(servers, conf)
    if missing is None:
        missing = _state_dir(var, explicit=var_given, create=True, announce=False)
    if missing is not None:
        print(f"chainmail: {missing}", file=sys.stderr)
        return 2
    from . import metrics   # one scrape sums every process of this run (docs/webadmin.md)
    metrics.enable_multiprocess(os.path.join(var, "run", "metrics"))
    try:
        _recover_spool(var, conf)
    except ConfigError as err:
        print(f"chainmail: configuration error: {err}", file=sys.stderr)
        return 2
    count = workers.worker_count(servers)
    if count == 1:
        return _serve(conf, var, config, grace_period)
    try:
        bound, held, _, _ = workers.rebind(servers, {})
    except OSError as exc:
        print(f"chainmail: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _announce(servers, bound)
    from .server.limits import SharedTable
    run = os.path.join(var, "run")
    os.makedirs(run, mode=0o700, exist_ok=True)
    for name in os.listdir(run):   # what an earlier run planned is not this run's
        if name.startswith(("connections.", "reload.json")):
            os.unlink(os.path.join(run, name))
    limits_path = os.path.join(run, "connections")
    SharedTable(limits_path, len(servers), count, create=True).close()
    state = _Supervised(config=config, servers=servers, bound=bound, held=held, count=count,
                        slots=[(limits_path, i, len(servers)) for i in range(len(servers))],
                        tables=[(limits_path, len(servers))])
    log.info("starting %d worker processes (ioWorkerCount)", count)
    try:
        return workers.supervise(
            count,
            # a worker started after a reload (a replacement) starts on the configuration in force
            lambda index, ready_fd: _serve_worker(conf, var, state.config, grace_period,
                                                  worker=index, ready_fd=ready_fd,
                                                  bound=state.bound, limits=(state.slots, count),
                                                  generation=state.generation),
            on_worker_exit=lambda index: _clear_worker(state.tables, count, index),
            on_reload=lambda: _reload_supervised(conf, var, state))
    finally:
        for entries in state.held.values():
            for _, _, sock in entries:
                sock.close()


class _Supervised:
    """What the supervisor keeps of the configuration in force, for reloads and for the
    workers it starts: addresses held, connection-count slots per block (path, index,
    blocks of that table) and every table made so far."""

    def __init__(self, *, config, servers: list, bound: list, held: dict, count: int,
                 slots: list, tables: list) -> None:
        self.config, self.servers, self.bound, self.held = config, servers, bound, held
        self.count, self.slots, self.tables = count, slots, tables
        self.generation = 0


def _announce(servers, bound) -> None:
    for address in bound:
        cfg = servers[address.block]
        host, port = address.sockaddr[:2]
        log.info("%sserver %r listening on %s", cfg.kind, cfg.name,
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def _reload_supervised(conf: str, var: str, state: _Supervised) -> None:
    """The supervisor's side of SIGHUP: check the configuration on disk completely (built
    in a forked child), bind its new addresses and plan it for the workers; on any error
    log it and keep everything (the workers then re-read their keystores only)."""
    from .server import reload, workers
    from .server.limits import SharedTable

    def refuse(why) -> None:
        log.error("configuration reload refused, the configuration in force is kept: %s", why)
    digest = reload.config_digest(conf)
    try:
        config = _load(conf)
    except ConfigError as err:
        return refuse(err)
    servers = [s for s in (*config.smtp_servers, *config.lmtp_servers) if s.enabled]
    if not servers:
        return refuse(f"no enabled server in {conf}")
    missing = _missing_keystore(servers, conf)
    if missing is not None:
        return refuse(missing)
    if workers.worker_count(servers) != state.count:
        log.warning("ioWorkerCount: the number of worker processes (%d) changes at the next "
                    "start", state.count)

    def check() -> None:
        gen = _generation(conf, var, config, _spool(var, conf), worker=None, bound=None, limits=None,
                          tables={}, number=state.generation + 1)
        gen.close()
    why = reload.check_in_child(check)
    if why is not None:
        return refuse(why)
    try:
        bound, held, fresh, dropped = workers.rebind(servers, state.held)
    except OSError as exc:
        return refuse(exc.strerror or exc)
    generation = state.generation + 1
    old_slots = {(s.kind, s.name): slot for s, slot in zip(state.servers, state.slots)}
    new_blocks = [i for i, s in enumerate(servers) if (s.kind, s.name) not in old_slots]
    path = os.path.join(var, "run", f"connections.{generation}")
    if new_blocks:
        SharedTable(path, len(new_blocks), state.count, create=True).close()
        state.tables.append((path, len(new_blocks)))
    slots = [old_slots.get((s.kind, s.name)) or (path, new_blocks.index(i), len(new_blocks))
             for i, s in enumerate(servers)]
    reload.write_plan(var, reload.Plan(generation, digest, bound, slots))
    _announce(servers, [a for a in bound if any(
        a.sockaddr == sockaddr for key in fresh for _, sockaddr, _ in held[key])])
    state.config, state.servers, state.bound, state.held = config, servers, bound, held
    state.slots, state.generation = slots, generation
    for sock in dropped:   # the workers close their own sockets on these as they switch
        sock.close()
    log.info("configuration checked (generation %d): the workers switch to it", generation)
    return None


def _serve_worker(*args, worker: int, **kwargs) -> int:
    """In a forked worker: its index goes into its JSON log lines, then it serves."""
    logsetup.set_worker(worker)
    return _serve(*args, worker=worker, **kwargs)


def _missing_keystore(servers, conf: str) -> str | None:
    """The usual first TLS stumble, answered with what to do: a configured keystore file
    that does not exist yet."""
    for server in servers:
        tls = server.tls
        if tls.enabled and tls.keystore and not os.path.exists(tls.keystore):
            return (f"{server.file}:{server.line}: {server.kind}server {server.name!r}: "
                    f"tls/keystore {tls.keystore} does not exist; to try TLS out, create a "
                    f"self-signed one with: chainmail keystore --conf {conf}; for real use, "
                    f"set <keystore> to your certificate's PKCS12 file")
    return None


def _recover_spool(var: str, conf: str | None = None) -> None:
    """Once, before any server or worker starts: clean up after an interrupted run.  With
    the queues on RabbitMQ, mail still in the embedded ones is moved there."""
    import trio
    spool = _spool(var)
    removed = spool.recover()
    trio.run(spool.aclose)
    if removed:
        log.info("removed %d incomplete message(s) left in the spool by an interrupted run", removed)
    from .store.amqp import load_rabbitmq
    rabbitmq = load_rabbitmq(conf) if conf is not None else None
    if rabbitmq is None:
        return
    from .remote.control import outgoing_queue_names, outgoing_root
    from .store.amqp.broker import BrokerError
    from .store.amqp.moving import move_to_broker
    from .store.amqp.spool import SPOOL_QUEUE
    spools = [(os.path.join(var, "spool"), SPOOL_QUEUE)]
    spools += [(outgoing_root(var, name), f"outgoing.{name}")
               for name in outgoing_queue_names(var)]
    if not any(_has_mail(path) for path, _ in spools):
        return
    try:
        trio.run(move_to_broker, rabbitmq, spools)
    except BaseException as exc:   # through the asyncio loop's nursery: maybe a group
        first: BaseException = exc
        while isinstance(first, BaseExceptionGroup) and first.exceptions:
            first = first.exceptions[0]
        if not isinstance(first, BrokerError):
            raise
        log.error("mail queued in %s before RabbitMQ was configured stays there until a "
                  "start that reaches the broker: %s", var, first)


def _has_mail(path: str) -> bool:
    from .store.spool import DirectorySpool
    return os.path.isdir(path) and bool(DirectorySpool(path).ids())


def _clear_worker(tables: list, count: int, index: int) -> None:
    """A worker died: forget its connections in every table (one per reload that added
    blocks)."""
    from .server.limits import clear_worker
    for path, blocks in tables:
        clear_worker(path, blocks, count, index)


def _serve(conf: str, var: str, config, grace_period: float, *, worker: int | None = None,
           ready_fd: int | None = None, bound=None, limits=None, generation: int = 0) -> int:
    """Build the stores, servers and container of one process and serve until stopped;
    SIGHUP builds them again from the files and switches (:mod:`chainmail.server.reload`).
    ``worker`` is the worker's index when several worker processes serve the blocks."""
    import trio

    from .server.app import run_servers
    from .server.reload import Reloader
    tables: dict = {}   # the shared connection tables, by path, for the life of the process
    try:
        spool = _spool(var, conf)
        spool.shared = worker is not None   # other workers take messages too: claims check again
        webadmin = _webadmin(conf, var, config) if worker in (None, 0) else []
        first = _generation(conf, var, config, spool, worker=worker, bound=bound, limits=limits,
                            tables=tables, number=generation)
    except ConfigError as err:
        print(f"chainmail: configuration error: {err}", file=sys.stderr)
        for table in tables.values():
            table.close()
        return 2
    for activate in first.activate:
        activate()
    reloader = Reloader(first, rebuild=lambda previous: _regeneration(
        conf, var, spool, previous, worker=worker, limits=limits, tables=tables))
    container = first.container
    # Services for the life of the process (the container's are the generation's own).
    services: list = [*webadmin]

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"r")
            os.close(ready_fd)
    try:
        trio.run(lambda: run_servers(first.contexts, grace_period=grace_period, spool=spool,
                                     spooler=container.spooler if container else None,
                                     services=services, bound=bound, worker=worker,
                                     on_ready=ready, reloader=reloader))
    except OSError as exc:
        print(f"chainmail: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        reloader.close_all()
        for table in tables.values():
            table.close()
    return 0


def _webadmin(conf: str, var: str, config) -> list:
    """WebAdmin (``conf/webadmin.properties``), for the first worker or the only process."""
    from .webadmin.service import webadmin_services
    return webadmin_services(conf, var, config)


def _generation(conf: str, var: str, config, spool, *, worker: int | None, bound, limits,
                tables: dict, number: int = 0, previous=None):
    """Everything one configuration needs in one process, built completely (a
    ``ConfigError`` otherwise, with nothing left open): stores, server contexts with their
    handler chains, the mailet container.  Seeding the domain list and the start-up lines
    wait until it is put in force (``activate``)."""
    from .server.reload import Generation, plan_listeners
    from .store.backends import open_backend
    gen = Generation(number, [])
    try:
        backend = open_backend(conf, var)   # SQLite in var/, or conf/postgres.properties
        domains = _domains(backend, var, config)
        gen.closers.append(domains.close)
        db = os.path.join(var, "chainmail.db")
        users = backend.users(domains=domains)
        gen.closers.append(users.close)
        rrt = backend.rrt()
        gen.closers.append(rrt.close)
        contexts = _contexts(config, domains, spool, users, rrt)
        container = _container(conf, var, config, spool, domains, users, rrt, backend)
        if container is None:
            _require_container(contexts, conf)
            from .store.mailbox import MaildirStore
            mailboxes = MaildirStore(os.path.join(var, "mail"), db, quotas=backend.quotas())
            gen.closers.append(mailboxes.close)
        else:
            mailboxes = container.mailboxes
            gen.closers.append(container.close)
        _block_limits(contexts, worker, limits, tables, previous)
    except BaseException:
        gen.close()
        raise
    gen.contexts, gen.container = contexts, container
    gen.services = list(container.services) if container is not None and worker in (None, 0) \
        else []
    gen.listeners = plan_listeners(contexts, bound)
    gen.activate.append(lambda: domains.seed(config.domainlist.domains))
    for ctx in contexts:
        ctx.mailboxes = mailboxes  # LMTP delivers into these directly
        ctx.mailet_engine = container.engine if container is not None else None
    if worker in (None, 0):
        if container is not None:
            gen.activate.append(lambda: _warn_postmaster_without_mailbox(container.context, conf))
        for ctx in contexts:
            c, hostname = ctx.config, ctx.hostname
            gen.activate.append(lambda c=c, hostname=hostname: log.info(
                "%sserver %r: helloName %s, ioWorkerCount %s, bossWorkerCount %s, "
                "maxExecutorCount %s", c.kind, c.name, hostname, c.io_worker_count,
                c.boss_worker_count, c.max_executor_count))
    return gen


def _block_limits(contexts, worker: int | None, limits, tables: dict, previous) -> None:
    """Connection counts: in worker processes, the shared table slot the supervisor gave
    each block; in one process, a block of the configuration in force with the same kind
    and name keeps counting its open connections."""
    if limits is not None:
        from .server.limits import SharedLimits, SharedTable
        assert worker is not None   # shared limits exist only in worker processes
        slots, count = limits
        for ctx, (path, index, blocks) in zip(contexts, slots):
            table = tables.get(path)
            if table is None:
                table = tables[path] = SharedTable(path, blocks, count)
            c = ctx.config
            ctx.limits = SharedLimits(table, index, worker, c.connection_limit,
                                      c.connection_limit_per_ip)
        return
    if previous is None:
        return
    old = {(ctx.config.kind, ctx.config.name): ctx.limits for ctx in previous.contexts}
    for ctx in contexts:
        kept = old.get((ctx.config.kind, ctx.config.name))
        if kept is not None:
            kept.total, kept.per_ip = ctx.config.connection_limit, ctx.config.connection_limit_per_ip
            ctx.limits = kept


def _regeneration(conf: str, var: str, spool, previous, *, worker: int | None, limits,
                  tables: dict):
    """The next generation from the files on disk; in a worker, as the supervisor planned
    it (None when it planned nothing new: its check refused the files)."""
    from .server import reload
    if worker is None:
        return _generation(conf, var, _load(conf), spool, worker=None, bound=None, limits=None,
                           tables=tables, number=previous.number + 1, previous=previous)
    plan = reload.read_plan(var)
    if plan is None or plan.generation <= previous.number:
        return None
    if plan.digest != reload.config_digest(conf):
        raise reload.ReloadRefused("the configuration files changed after the supervisor "
                                   "checked them; send SIGHUP again")
    return _generation(conf, var, _load(conf), spool, worker=worker, bound=plan.bound,
                       limits=(plan.slots, limits[1]), tables=tables, number=plan.generation)


def _warn_postmaster_without_mailbox(context, conf: str) -> None:
    """Mail to the postmaster (bounces of bounces, RFC 5321's required address) is lost in
    bounces when the postmaster has no mailbox: say so once, at start."""
    from .mailet.config import FILE
    address = context.postmaster
    try:
        targets = context.rrt.resolve(address) if context.rrt is not None else [address]
    except Exception:   # a rewrite loop: the mail goes to the error processor
        targets = []
    local = [t for t in targets if context.is_local_email(t)]
    remote = [t for t in targets if not context.is_local_server(t.rpartition("@")[2])]
    if local or remote:
        return
    log.warning("the postmaster address %s (<postmaster> in %s) has no mailbox: mail to it "
                "bounces; create it (chainmail user add %s) or map it to a user (chainmail "
                "alias add %s USER)", address, os.path.join(conf, FILE), address, address)


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


def _container(conf: str, var: str, config, spool, domains, users, rrt, backend=None):
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
                           servers=config.servers, conf=conf, backend=backend)


def _check_config(conf: str, var: str, strict: bool = False) -> int:
    """Every error of the configuration in one pass (:mod:`chainmail.check_config`)."""
    from .check_config import check_config
    return check_config(conf, var, strict=strict)


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


def _migrate_accounts(conf: str, var: str) -> int:
    """``chainmail migrate-accounts``: the embedded accounts into PostgreSQL (docs/cluster.md)."""
    from .store.backends import PostgresBackend, SqliteBackend
    from .store.copy_accounts import copy_accounts
    from .store.postgres import FILE, load_postgres
    from .store.sqlite import DB_FILENAME
    pg = load_postgres(conf)
    if pg is None:
        print(f"chainmail: {os.path.join(conf, FILE)} does not exist: there is no PostgreSQL "
              "to copy the accounts into", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(var, DB_FILENAME)):
        print(f"chainmail: {os.path.join(var, DB_FILENAME)} does not exist: no embedded "
              "accounts to copy", file=sys.stderr)
        return 2
    done = copy_accounts(SqliteBackend(var), PostgresBackend(pg))
    print(f"copied into {pg.describe()}: {done.domains} domain(s), {done.users} user(s), "
          f"{done.mappings} mapping(s), {done.quotas} quota(s); {done.kept} already there, "
          "kept as they are")
    for problem in done.problems:
        print(f"chainmail: not copied: {problem}", file=sys.stderr)
    return 1 if done.problems else 0


def _domain(conf: str, var: str, args) -> int:
    """``chainmail domain add|remove|list`` (:mod:`chainmail.admin.domains`)."""
    from .admin import AdminError, Stores
    from .admin import domains as admin_domains
    stores = Stores(_load(conf), conf, var, seed=False)
    try:
        if args.action == "list":
            for name in admin_domains.list_domains(stores):
                print(name)
            return 0
        if args.action == "add":
            if not admin_domains.add_domain(stores, args.name):
                print(f"chainmail: domain {args.name} already present", file=sys.stderr)
                return 1
        else:
            admin_domains.remove_domain(stores, args.name, force=args.force)
        print(f"{'added' if args.action == 'add' else 'removed'} {args.name.lower()}")
        return 0
    except AdminError as exc:
        print(f"chainmail: {exc}", file=sys.stderr)
        return exc.exit_status
    finally:
        stores.close()
