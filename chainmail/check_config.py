"""``chainmail check-config``: everything the configuration says, and every error in it.

The server stops at the first error; an operator porting a configuration wants them all
at once.  Every file, server block, handler, mailet and matcher is read on its own and
its errors collected; the TLS material of every block is opened as ``run`` opens it;
``dnsservice.xml`` and every mailet's parameters are shown.  The exit status is 1 when
anything is wrong (with ``strict``, when anything is warned about too).
"""

from __future__ import annotations

import os
import ssl
import sys
from typing import TextIO

from .config import ConfigError, ConfigWarning, collect_config, describe_server
from .config.errors import every_error

__all__ = ["check_config"]


def check_config(conf: str, var: str, *, strict: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    errors: list[ConfigError] = []
    warnings: list[ConfigWarning] = []
    config, found = collect_config(conf)
    errors.extend(found)
    if config is None:
        return _report(errors, warnings, strict, out, err)
    warnings.extend(config.warnings)
    print(f"# configuration directory {conf}", file=out)
    from .server.workers import worker_count
    count = worker_count((*config.smtp_servers, *config.lmtp_servers))
    print(f"worker processes = {count} (ioWorkerCount, the largest of the enabled blocks; "
          f"{'one process, no supervisor' if count == 1 else 'a supervisor and its workers'})",
          file=out)
    dl = config.domainlist
    print(f"domainlist: domains={', '.join(dl.domains) or '(none)'} defaultDomain={dl.default_domain} "
          f"autodetect={str(dl.autodetect).lower()} autodetectIP={str(dl.autodetect_ip).lower()}",
          file=out)
    for line in _describe_dns(conf, errors, warnings):
        print(line, file=out)
    for line in _describe_webadmin(conf, var, config, errors):
        print(line, file=out)
    for line in _describe_postgres(conf, errors, warnings):
        print(line, file=out)
    for line in _describe_rabbitmq(conf, errors, warnings):
        print(line, file=out)
    for server in (*config.smtp_servers, *config.lmtp_servers):
        print(file=out)
        print(f"[{server.kind}server {server.name}] ({server.file}:{server.line})", file=out)
        for key, value in describe_server(server):
            print(f"  {key} = {value}", file=out)
        if not server.enabled:
            continue
        _open_tls(server, errors)
        for line in _describe_chain(server, errors, warnings):
            print(line, file=out)
    from .mailet.cli import describe_container
    for line in describe_container(conf, var, errors=errors, warnings=warnings):
        print(line, file=out)
    return _report(errors, warnings, strict, out, err)


def _report(errors: list[ConfigError], warnings: list[ConfigWarning], strict: bool,
            out: TextIO, err: TextIO) -> int:
    for warning in warnings:
        print(str(warning), file=out)
    errors = every_error(errors)
    for error in errors:
        print(f"chainmail: configuration error: {error}", file=err)
    if errors:
        print(f"chainmail: {len(errors)} configuration error(s)", file=err)
        return 1
    if strict and warnings:
        print(f"chainmail: {len(warnings)} warning(s), which --strict makes errors", file=err)
        return 1
    return 0


def _describe_dns(conf: str, errors: list[ConfigError], warnings: list[ConfigWarning]) -> list[str]:
    from .remote.dns import DEFAULT_PORT, load_dnsservice
    path = os.path.join(conf, "dnsservice.xml")
    try:
        dns = load_dnsservice(path)
    except ConfigError as exc:
        errors.append(exc)
        return [f"dnsservice: ({path}) not readable, see the errors"]
    warnings.extend(dns.warnings)
    where = path if os.path.exists(path) else f"{path} not found: James's defaults"
    servers = ", ".join(h if p == DEFAULT_PORT else f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                        for h, p in dns.servers) or "(none)"
    return [f"dnsservice: ({where})",
            f"  servers = {servers}",
            f"  autodiscover = {str(dns.autodiscover).lower()} (the system's resolv.conf servers "
            f"{'are' if dns.autodiscover else 'are not'} added)",
            f"  authoritative = {str(dns.authoritative).lower()}",
            f"  maxcachesize = {dns.max_cache_size}",
            f"  singleIPperMX = {str(dns.single_ip_per_mx).lower()}",
            f"  timeout = {dns.timeout:g} seconds"]


def _describe_webadmin(conf: str, var: str, config, errors: list[ConfigError]) -> list[str]:
    """``webadmin.properties`` read as ``chainmail run`` reads it (keystore opened)."""
    from .webadmin.service import webadmin_services
    try:
        services = webadmin_services(conf, var, config)
    except ConfigError as exc:
        errors.append(exc)
        return ["webadmin: not usable, see the errors"]
    if not services:
        return ["webadmin: off (webadmin.properties: enabled=true turns it on)"]
    cfg = services[0].config
    return [f"webadmin: {'https' if cfg.https else 'http'}://{cfg.host}:{cfg.port} "
            f"jwt={str(cfg.jwt).lower()}"]


def _describe_postgres(conf: str, errors: list[ConfigError],
                       warnings: list[ConfigWarning]) -> list[str]:
    """Where the account stores are: ``postgres.properties`` read as ``chainmail run``
    reads it, and the database reached once."""
    from .store.postgres.config import load_postgres
    try:
        pg = load_postgres(conf)
    except ConfigError as exc:
        errors.append(exc)
        return ["account stores: postgres.properties not usable, see the errors"]
    if pg is None:
        return ["account stores: SQLite in the var directory (no postgres.properties)"]
    warnings.extend(pg.warnings)
    return [f"account stores: PostgreSQL {pg.username}@{pg.host}:{pg.port}/{pg.name} "
            f"schema={pg.schema} pool={pg.pool_initial_size}..{pg.pool_max_size} "
            f"ssl.mode={pg.ssl_mode}", _reach_postgres(pg, errors)]


def _reach_postgres(pg, errors: list[ConfigError]) -> str:
    """Connect once and compare the schema's migrations with this chainmail's."""
    import psycopg

    from .store.postgres.migrate import status
    try:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            unknown, pending = status(conn, pg.schema)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        errors.append(ConfigError(pg.file, pg.line_of("database.host"), "database.host",
                                  f"cannot reach PostgreSQL at {pg.describe()}: {reason}"))
        return "  database: not reachable, see the errors"
    if unknown:
        errors.append(ConfigError(pg.file, None, "",
                                  f"{pg.describe()}: schema has migration {unknown[-1]}, which "
                                  "this chainmail does not know: upgrade chainmail"))
        return "  database: reachable, schema newer than this chainmail"
    if pending:
        return (f"  database: reachable; migration(s) {', '.join(f'{v:04d}' for v in pending)} "
                "will be applied at the next start")
    return "  database: reachable, schema up to date"


def _describe_rabbitmq(conf: str, errors: list[ConfigError],
                       warnings: list[ConfigWarning]) -> list[str]:
    """Where the spool and the outgoing queues are; the broker is connected to once."""
    from .store.amqp import load_rabbitmq
    try:
        rabbitmq = load_rabbitmq(conf)
    except ConfigError as exc:
        errors.append(exc)
        return ["queues: rabbitmq.properties not usable, see the errors"]
    if rabbitmq is None:
        return ["queues: embedded, in the var directory (no rabbitmq.properties)"]
    warnings.extend(rabbitmq.warnings)
    kind = "quorum" if rabbitmq.quorum_queues else "classic"
    lines = [f"queues: RabbitMQ {rabbitmq.describe()} ({kind} queues): the spool and the "
             "outgoing queues"]
    import trio

    from .store.amqp.broker import Broker, BrokerError

    async def reach() -> None:
        with trio.fail_after(rabbitmq.confirm_timeout + 1):
            async with Broker.connect(rabbitmq):
                return   # connected: that is all this checks
    problem: str | None = None
    try:
        trio.run(reach)
    except BaseException as exc:   # raised through the asyncio loop's nursery: maybe a group
        first: BaseException = exc
        while isinstance(first, BaseExceptionGroup) and first.exceptions:
            first = first.exceptions[0]
        if isinstance(first, trio.TooSlowError):
            problem = "no answer in time"
        elif isinstance(first, BrokerError):
            problem = str(first)
        else:
            raise
    if problem is not None:
        errors.append(ConfigError(rabbitmq.file, rabbitmq.line_of("uri"), "uri",
                                  f"cannot reach RabbitMQ: {problem}"))
        lines.append("  broker: not reachable, see the errors")
    else:
        lines.append("  broker: reachable")
    return lines


def _open_tls(server, errors: list[ConfigError]) -> None:
    """Open the keystore or PEM pair (and SNI certificates) as ``run`` does, so that a wrong
    secret, a JKS file or a missing file is found now rather than at start."""
    tls = server.tls
    if not tls.enabled:
        return
    from .server.tls import build_server_context
    try:
        build_server_context(tls)
    except ConfigError as exc:
        if tls.keystore and not os.path.exists(tls.keystore):
            exc = ConfigError(exc.file, exc.line, exc.element, f"{exc.message}; expected an "
                              "existing PKCS12 keystore (`chainmail keystore` creates a "
                              "self-signed one for trying TLS out)")
        errors.append(exc)
    except (ssl.SSLError, OSError) as exc:
        errors.append(ConfigError(tls.file, tls.line, "tls", f"the key material cannot be "
                                  f"used: {exc}; expected a matching private key and certificate"))


def _describe_chain(server, errors: list[ConfigError], warnings: list[ConfigWarning]) -> list[str]:
    from .chain import build_chain
    from .server.context import ServerContext
    ctx = ServerContext(server, domains=None, spool=None)
    chain = build_chain(server.handlerchain, ctx, timeout=server.handler_timeout,
                        errors=errors, warnings=warnings)
    lines = ["  handler chain, in call order:"]
    return lines + [f"    {i:2d}. {line}" for i, line in enumerate(chain.describe(), 1)]
