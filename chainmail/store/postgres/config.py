"""``conf/postgres.properties``: James's PostgreSQL keys, read into a frozen dataclass.

As in James's postgres app, the file's presence is what puts the account stores on
PostgreSQL: without it :func:`load_postgres` returns ``None`` and the embedded SQLite
database in ``var/`` is used.  A file that is there but wrong is an error naming the file
and line, never a silent fall-back to SQLite.

Keys (James's, with James's defaults unless said otherwise): ``database.host``
(localhost), ``database.port`` (5432), ``database.name`` (postgres), ``database.schema``
(public), ``database.username`` (required), ``database.password``, ``pool.initial.size``
and ``pool.max.size`` (1 and 4 *per process*: every worker process has its own pool, so
James's 10 and 15 would multiply), ``ssl.mode`` (allow; libpq's modes) and
``jooq.reactive.timeout`` (10 s: the statement and connection timeout).  chainmail adds
``ssl.rootcert``, ``ssl.cert`` and ``ssl.key`` (PEM files for ``verify-ca``/``verify-full``
and client certificates).  ``row.level.security.enabled`` and the ``non-rls`` keys concern
mailboxes, which chainmail does not keep in PostgreSQL: accepted and ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ...config.errors import ConfigError, ConfigWarning

__all__ = ["FILE", "PostgresConfig", "load_postgres"]

FILE = "postgres.properties"

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_STRINGS = {"database.host", "database.name", "database.schema", "database.username",
            "database.password", "ssl.mode", "ssl.rootcert", "ssl.cert", "ssl.key"}
_INTEGERS = {"database.port", "pool.initial.size", "pool.max.size", "pool.size"}
_DURATIONS = {"jooq.reactive.timeout"}
#: James keys about row level security (mailbox data), with nothing to do here
_IGNORED = {"database.non-rls.username", "database.non-rls.password",
            "database.by-pass-rls.username", "database.by-pass-rls.password",
            "non-rls.pool.initial.size", "non-rls.pool.max.size",
            "by-pass-rls.pool.initial.size", "by-pass-rls.pool.max.size"}
_KNOWN = _STRINGS | _INTEGERS | _DURATIONS | {"row.level.security.enabled"}

# An unquoted SQL identifier: the schema goes into search_path as it is written.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class PostgresConfig:
    host: str = "localhost"
    port: int = 5432
    name: str = "postgres"
    schema: str = "public"
    username: str = ""
    password: str = ""
    pool_initial_size: int = 1
    pool_max_size: int = 4
    ssl_mode: str = "allow"
    ssl_rootcert: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    timeout: float = 10.0
    file: str = ""
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    warnings: tuple[ConfigWarning, ...] = ()

    def line_of(self, key: str) -> int | None:
        return self.lines.get(key)

    def describe(self) -> str:
        """Where the database is, for log lines and errors (never the password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"postgresql://{self.username}@{host}:{self.port}/{self.name}"
                f" (schema {self.schema})")

    def conninfo(self) -> str:
        """The libpq connection string: every session starts in ``schema`` with the
        statement timeout set, and says it is chainmail."""
        from psycopg.conninfo import make_conninfo
        options = (f"-c search_path={self.schema}"
                   f" -c statement_timeout={int(self.timeout * 1000)}")
        extra: dict[str, str] = {}
        for key, value in (("sslrootcert", self.ssl_rootcert), ("sslcert", self.ssl_cert),
                           ("sslkey", self.ssl_key)):
            if value:
                extra[key] = value
        return make_conninfo(
            host=self.host, port=str(self.port), dbname=self.name, user=self.username,
            password=self.password, sslmode=self.ssl_mode,
            connect_timeout=str(max(1, round(self.timeout))), application_name="chainmail",
            options=options, **extra)


def load_postgres(conf_dir: str | os.PathLike[str]) -> PostgresConfig | None:
    """The configuration of ``<conf_dir>/postgres.properties``; ``None`` without the file.
    ``ConfigError`` (file:line: key: what is expected) for a bad value."""
    from ...config.properties import Properties, read_properties_file
    conf = os.fspath(conf_dir)
    path = os.path.join(conf, FILE)
    text = read_properties_file(path)
    if text is None:
        return None
    props = Properties(text, path, _KNOWN, lambda key: key in _IGNORED)
    values, lines, warnings, fail = props.values, props.lines, props.warnings, props.fail
    integer = props.integer

    def location(key: str) -> str | None:
        return props.pem_file(key, conf)

    username = values.get("database.username", "")
    if not username:
        raise ConfigError(path, lines.get("database.username"), "database.username",
                          "required: the PostgreSQL role chainmail connects as")
    schema = values.get("database.schema") or "public"
    if not _IDENTIFIER.fullmatch(schema):
        raise fail("database.schema", f"{schema!r}: expected a plain SQL name (letters, "
                                      "digits and _, not starting with a digit, at most 63)")
    schema = schema.lower()   # as PostgreSQL reads an unquoted name
    ssl_mode = (values.get("ssl.mode") or "allow").lower()
    if ssl_mode not in SSL_MODES:
        raise fail("ssl.mode", f"{values['ssl.mode']!r}: expected one of {', '.join(SSL_MODES)}")
    timeout = 10.0
    if values.get("jooq.reactive.timeout"):
        from ...remote.config import DelayError, parse_duration_ms
        try:
            timeout = parse_duration_ms(values["jooq.reactive.timeout"], 1000) / 1000
        except DelayError as exc:
            raise fail("jooq.reactive.timeout", str(exc)) from None
        if timeout < 1:
            raise fail("jooq.reactive.timeout", f"{values['jooq.reactive.timeout']!r}: expected "
                                                "at least 1 second")
    initial = integer("pool.initial.size", 1, 0, 1000)
    # ``pool.size`` (one size for the pool) is read as the largest size
    maximum = integer("pool.max.size", integer("pool.size", max(4, initial), 1, 1000), 1, 1000)
    if maximum < initial:
        raise fail("pool.max.size", f"{maximum} is less than pool.initial.size ({initial})")
    if values.get("row.level.security.enabled", "false").lower() not in ("true", "false", ""):
        raise fail("row.level.security.enabled",
                   f"{values['row.level.security.enabled']!r}: expected true or false")
    if values.get("row.level.security.enabled", "").lower() == "true":
        warnings.append(ConfigWarning(path, lines.get("row.level.security.enabled"),
                                      "row.level.security.enabled",
                                      "row level security applies to mailboxes, which chainmail "
                                      "does not keep in PostgreSQL; ignored"))
    return PostgresConfig(
        host=values.get("database.host") or "localhost",
        port=integer("database.port", 5432, 1, 65535),
        name=values.get("database.name") or "postgres", schema=schema, username=username,
        password=values.get("database.password", ""), pool_initial_size=initial,
        pool_max_size=maximum, ssl_mode=ssl_mode, ssl_rootcert=location("ssl.rootcert"),
        ssl_cert=location("ssl.cert"), ssl_key=location("ssl.key"), timeout=timeout,
        file=path, lines=lines, warnings=tuple(warnings))
