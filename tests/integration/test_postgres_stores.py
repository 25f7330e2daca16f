"""The account stores on a real PostgreSQL (the Debian package's server, started here on
loopback): postgres.properties, migrations, the stores' behaviour against the embedded
ones', and ``chainmail run`` and the command line sharing one database."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from chainmail.config.errors import ConfigError
from chainmail.store.backends import PostgresBackend, SqliteBackend, open_backend
from chainmail.store.postgres import Database, PostgresConfig, load_postgres
from chainmail.store.postgres.migrate import MigrationError, available, migrate
from chainmail.store.rrt import RewriteLoopError
from chainmail.store.users import UserExistsError, hash_password
from tests.conftest import CHAINMAIL, ROOT, wait_for, wait_for_recipients

psycopg = pytest.importorskip("psycopg", reason="psycopg is a dependency of chainmail")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROLE, PASSWORD = "chainmail", "pg secret"


class Postgres:
    """A PostgreSQL server of its own, on 127.0.0.1 with password (SCRAM) logins."""

    def __init__(self, base: Path, port: int) -> None:
        self.base, self.port = base, port
        self.data = base / "data"
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count()

    def _as_owner(self) -> list[str]:
        # postgres refuses to run as root: run it as the postgres account then.
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        import trustme
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        # TLS offered with a certificate for 127.0.0.1 from a throwaway CA.
        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(str(self.base / "ca.pem"))
        cert = self.ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(self.base / "server.crt"))
        cert.private_key_pem.write_to_path(str(self.base / "server.key"))
        os.chmod(self.base / "server.key", 0o600)
        if os.geteuid() == 0:
            for path in (self.base, pwfile, self.base / "server.crt", self.base / "server.key"):
                shutil.chown(path, "postgres")
        subprocess.run([*self._as_owner(), str(PG_BIN / "initdb"), "-D", str(self.data),
                        "-U", ROLE, f"--pwfile={pwfile}", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd="/")
        self._launch()

    def _launch(self) -> None:
        self.log = open(self.base / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [*self._as_owner(), str(PG_BIN / "postgres"), "-D", str(self.data),
             "-k", str(self.base), "-h", "127.0.0.1", "-p", str(self.port),
             "-c", "fsync=off", "-c", "max_connections=200", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.base / 'server.crt'}",
             "-c", f"ssl_key_file={self.base / 'server.key'}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd="/")
        wait_for(self._ready, timeout=30, what="PostgreSQL accepting connections")

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, \
            (self.base / "postgres.log").read_text()
        try:
            self.admin("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def admin(self, query: str, dbname: str = "postgres"):
        with psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, password=PASSWORD,
                             dbname=dbname, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else None

    def new_database(self) -> str:
        name = f"t{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def crash(self) -> None:
        """kill -9 of the server; :meth:`restart` starts it again on the same data."""
        assert self.proc is not None
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)   # the server itself, not the runuser around it
        self.proc.wait(30)
        self.log.close()

        def backends_gone() -> bool:   # they leave on their own once the postmaster is gone
            found = subprocess.run(["pgrep", "-f", str(self.data)], capture_output=True)
            return found.returncode == 1
        wait_for(backends_gone, timeout=20, what="PostgreSQL's processes gone")

    def restart(self) -> None:
        """Start again after :meth:`crash` (crash recovery)."""
        self._launch()
        wait_for(self._ready, timeout=30, what="PostgreSQL accepting connections again")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()   # SIGTERM: smart shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres():
    if not (PG_BIN / "postgres").exists():
        pytest.fail(f"{PG_BIN / 'postgres'} is not installed; tests/setup-system.sh installs it "
                    "(apt-get install postgresql)")
    # Not under pytest's tmp_path: its parent is private to the user running the tests.
    base = Path(tempfile.mkdtemp(prefix="chainmail-pg-"))
    os.chmod(base, 0o755)
    server = Postgres(base, _free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def properties(server: Postgres, dbname: str, **extra: str) -> str:
    keys = {"database.host": "127.0.0.1", "database.port": str(server.port),
            "database.name": dbname, "database.username": ROLE, "database.password": PASSWORD,
            **extra}
    return "".join(f"{k}={v}\n" for k, v in keys.items())


@pytest.fixture
def conf(tmp_path, postgres):
    """A conf directory whose postgres.properties names a fresh database."""
    path = tmp_path / "conf"
    path.mkdir()
    (path / "postgres.properties").write_text(properties(postgres, postgres.new_database()))
    return path


@pytest.fixture
def backend(conf, tmp_path):
    made = open_backend(conf, tmp_path / "var")
    assert isinstance(made, PostgresBackend)
    return made


@pytest.fixture
def stores(backend):
    """(domains, users, rrt) as a server builds them, answering from memory at once."""
    domains = backend.domains(default_domain="local.test", refresh_interval=0)
    domains.add("local.test")
    users = backend.users(domains=domains, refresh_interval=0)
    rrt = backend.rrt(refresh_interval=0)
    yield domains, users, rrt
    for store in (rrt, users, domains):
        store.close()


# -- postgres.properties ----------------------------------------------------------------

def test_without_the_file_the_embedded_stores_serve(tmp_path):
    (tmp_path / "conf").mkdir()
    assert load_postgres(tmp_path / "conf") is None
    made = open_backend(tmp_path / "conf", tmp_path / "var")
    assert isinstance(made, SqliteBackend)
    assert made.db == str(tmp_path / "var" / "chainmail.db")


def test_james_keys_and_defaults(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "postgres.properties").write_text(
        "# James's sample\ndatabase.username=james\nrow.level.security.enabled=false\n"
        "non-rls.pool.max.size=10\npool.initial.size=2\nssl.mode=require\n"
        "jooq.reactive.timeout=5second\ncolour=blue\n")
    config = load_postgres(conf)
    assert config is not None
    assert (config.host, config.port, config.name, config.schema) == \
        ("localhost", 5432, "postgres", "public")
    assert (config.username, config.password) == ("james", "")
    assert (config.pool_initial_size, config.pool_max_size) == (2, 4)
    assert (config.ssl_mode, config.timeout) == ("require", 5.0)
    [warning] = config.warnings
    assert (warning.line, warning.element) == (8, "colour")
    info = config.conninfo()
    assert "sslmode=require" in info and "search_path=public" in info
    assert "statement_timeout=5000" in info and "connect_timeout=5" in info


@pytest.mark.parametrize("text, line, key, words", [
    ("database.host=db\n", None, "database.username", "required"),
    ("database.username=u\ndatabase.port=54x\n", 2, "database.port", "from 1 to 65535"),
    ("database.username=u\n\nssl.mode=sometimes\n", 3, "ssl.mode", "verify-full"),
    ("database.username=u\ndatabase.schema=mail; drop\n", 2, "database.schema", "plain SQL"),
    ("database.username=u\npool.initial.size=8\npool.max.size=3\n", 3, "pool.max.size",
     "less than"),
    ("database.username=u\njooq.reactive.timeout=soon\n", 2, "jooq.reactive.timeout",
     "not a duration"),
    ("database.username=u\nssl.rootcert=missing.pem\n", 2, "ssl.rootcert", "no such file"),
])
def test_bad_values_name_file_line_and_key(tmp_path, text, line, key, words):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "postgres.properties").write_text(text)
    with pytest.raises(ConfigError) as err:
        open_backend(conf, tmp_path / "var")
    assert (err.value.file, err.value.line, err.value.element) == \
        (str(conf / "postgres.properties"), line, key)
    assert words in err.value.message


def test_unreachable_or_refused_database_is_a_clear_error(tmp_path, postgres):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "postgres.properties").write_text(
        properties(postgres, "postgres", **{"database.password": "wrong"}))
    with pytest.raises(ConfigError) as err:
        open_backend(conf, tmp_path / "var").domains()
    assert err.value.element == "database.host" and err.value.line == 1
    assert "password authentication failed" in err.value.message
    assert "wrong" not in str(err.value)
    (conf / "postgres.properties").write_text(
        properties(postgres, "postgres", **{"database.port": str(_free_port())}))
    with pytest.raises(ConfigError, match="cannot use PostgreSQL at postgresql://chainmail@"):
        open_backend(conf, tmp_path / "var").users()


def _ssl_in_use(store) -> bool:
    with store.database.connection() as conn:
        return conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone()[0]


def test_tls_with_a_verified_server_certificate(tmp_path, postgres):
    import trustme
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.pem").write_bytes((postgres.base / "ca.pem").read_bytes())
    trustme.CA().cert_pem.write_to_path(str(conf / "other-ca.pem"))
    dbname = postgres.new_database()
    (conf / "postgres.properties").write_text(properties(
        postgres, dbname, **{"ssl.mode": "verify-full", "ssl.rootcert": "ca.pem"}))
    store = open_backend(conf, tmp_path / "var").domains()
    try:
        assert _ssl_in_use(store)
    finally:
        store.close()
    (conf / "postgres.properties").write_text(properties(
        postgres, dbname, **{"ssl.mode": "verify-full", "ssl.rootcert": "other-ca.pem"}))
    with pytest.raises(ConfigError, match="certificate verify failed"):
        open_backend(conf, tmp_path / "var").domains()
    (conf / "postgres.properties").write_text(properties(
        postgres, dbname, **{"ssl.mode": "disable"}))
    store = open_backend(conf, tmp_path / "var").domains()
    try:
        assert not _ssl_in_use(store)
    finally:
        store.close()


# -- migrations -------------------------------------------------------------------------

def test_migrations_apply_once_and_are_recorded(backend, postgres):
    config = backend.config
    shipped = available()
    assert [m.version for m in shipped][:1] == [1] and shipped[0].name == "accounts"
    store = backend.domains()
    try:
        rows = postgres.admin("SELECT version, name FROM schema_migrations ORDER BY version",
                              config.name)
        assert rows == [(m.version, m.name) for m in shipped]
        tables = {r[0] for r in postgres.admin(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", config.name)}
        assert {"domains", "users", "rrt_mappings", "store_changes",
                "schema_migrations"} <= tables
    finally:
        store.close()
    # Opened again (another process, a restart): nothing is applied twice.
    with psycopg.connect(config.conninfo(), autocommit=True) as conn:
        assert migrate(conn, config.schema) == []
    assert postgres.admin("SELECT count(*) FROM schema_migrations", config.name) == \
        [(len(shipped),)]


def test_workers_starting_together_migrate_once(tmp_path, postgres):
    conf = tmp_path / "conf"
    conf.mkdir()
    dbname = postgres.new_database()
    (conf / "postgres.properties").write_text(
        properties(postgres, dbname, **{"database.schema": "Mail"}))
    config = load_postgres(conf)
    assert config is not None
    results: list = []

    def one() -> None:
        with psycopg.connect(config.conninfo(), autocommit=True) as conn:
            results.append(migrate(conn, "mail"))
    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [[], [], [], [m.version for m in available()]]
    assert postgres.admin("SELECT count(*) FROM mail.schema_migrations", dbname) == \
        [(len(available()),)]
    # the stores work in that schema, and nothing went to public
    domains = open_backend(conf, tmp_path / "var").domains()
    try:
        domains.add("schema.test")
    finally:
        domains.close()
    assert postgres.admin("SELECT name FROM mail.domains", dbname) == [("schema.test",)]
    assert postgres.admin("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                          dbname) == [(0,)]


def test_a_newer_schema_is_refused(backend, postgres):
    backend.domains().close()
    postgres.admin("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')",
                   backend.config.name)
    with pytest.raises(ConfigError, match="migration 9999.*newer chainmail"):
        backend.users()
    with psycopg.connect(backend.config.conninfo(), autocommit=True) as conn:
        with pytest.raises(MigrationError):
            migrate(conn, "public")


def test_a_failing_migration_leaves_nothing(backend, postgres):
    from chainmail.store.postgres.migrate import Migration
    config = backend.config
    broken = [*available(), Migration(2, "broken", "CREATE TABLE half (x int); SELECT 1/0;")]
    with psycopg.connect(config.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrate(conn, "public", broken)
    assert postgres.admin("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                          config.name) == [(0,)]


# -- the stores: the embedded stores' behaviour -----------------------------------------

def test_domains(stores):
    domains, _, _ = stores
    assert domains.contains("LOCAL.test.")
    assert domains.add("Example.ORG") is True
    assert domains.add("example.org") is False
    assert domains.add("bücher.example") is True
    assert domains.contains("xn--bcher-kva.example") and domains.contains("BÜCHER.example")
    assert domains.list() == ["example.org", "local.test", "xn--bcher-kva.example"]
    with pytest.raises(ValueError):
        domains.add("bad name")
    assert domains.remove("example.org") is True
    assert domains.remove("example.org") is False
    assert domains.remove("bad name") is False
    domains.seed(["seeded.test", "local.test"])
    assert domains.list() == ["local.test", "seeded.test", "xn--bcher-kva.example"]
    with pytest.raises(ValueError):
        domains.seed(["fine.test", "not valid"])
    assert not domains.contains("fine.test")


def test_users_hashes_and_lookups(stores, postgres, backend):
    _, users, _ = stores
    users.add("Bob@Local.Test", "correct horse")
    assert users.contains("bob@local.test") and users.contains("BOB@local.test")
    assert users.contains(users.username_for("bob+tag@LOCAL.test"))
    assert not users.contains("carol@local.test")
    assert users.list() == ["bob@local.test"]
    [(stored,)] = postgres.admin("SELECT password_hash FROM users", backend.config.name)
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$") and "correct horse" not in stored
    assert users.verify("BOB@local.test", "correct horse")
    assert not users.verify("bob@local.test", "wrong horse")
    assert not users.verify("nobody@local.test", "correct horse")
    with pytest.raises(UserExistsError):
        users.add("bob@local.test", "again")
    with pytest.raises(ValueError, match="not a local domain"):
        users.add("eve@elsewhere.test", "secret")
    with pytest.raises(ValueError, match=r"'\+' separates"):
        users.add("bob+x@local.test", "secret")
    with pytest.raises(ValueError, match="empty"):
        users.add("dan@local.test", "")
    assert users.set_password("bob@local.test", "battery staple") is True
    assert users.verify("bob@local.test", "battery staple")
    assert not users.verify("bob@local.test", "correct horse")
    assert users.set_password("nobody@local.test", "x") is False
    assert users.remove("BOB@local.test") is True
    assert users.remove("bob@local.test") is False
    assert not users.contains("bob@local.test") and users.list() == []


def test_a_weaker_hash_is_upgraded_after_login(stores, postgres, backend):
    _, users, _ = stores
    weak = hash_password("old password", ln=10)
    postgres.admin(f"INSERT INTO users VALUES ('old@local.test', '{weak}')", backend.config.name)
    assert users.verify("old@local.test", "old password")
    [(stored,)] = postgres.admin("SELECT password_hash FROM users", backend.config.name)
    assert stored != weak and stored.startswith("$scrypt$ln=14,")
    assert users.verify("old@local.test", "old password")


def test_aliases_forwards_groups_and_domain_aliases(stores):
    domains, _, rrt = stores
    domains.add("alias.test")
    assert rrt.add_alias("Sales@local.test", "bob@local.test") is True
    assert rrt.add_alias("sales@local.test", "bob@local.test") is False
    with pytest.raises(ValueError, match="already an alias"):
        rrt.add_alias("sales@local.test", "carol@local.test")
    for member in ("bob@local.test", "carol@local.test", "x@remote.test"):
        rrt.add_forward("team@local.test", member)
    rrt.add_domain_alias("alias.test", "local.test")
    assert rrt.resolve("sales@local.test") == ["bob@local.test"]
    assert rrt.resolve("sales+q@local.test") == ["bob@local.test"]
    assert rrt.resolve("team@alias.test") == ["bob@local.test", "carol@local.test",
                                              "x@remote.test"]
    assert rrt.resolve("nobody@local.test") == ["nobody@local.test"]
    assert rrt.has_mapping("anyone@alias.test") and not rrt.has_mapping("anyone@local.test")
    assert rrt.canonical_domain("ALIAS.test") == "local.test"
    assert rrt.identities_of("bob@local.test") == {"bob@local.test", "sales@local.test",
                                                   "bob@alias.test", "sales@alias.test"}
    assert [tuple(m) for m in rrt.list()] == [
        ("alias", "sales@local.test", "bob@local.test"),
        ("domain", "alias.test", "local.test"),
        ("forward", "team@local.test", "bob@local.test"),
        ("forward", "team@local.test", "carol@local.test"),
        ("forward", "team@local.test", "x@remote.test")]
    assert rrt.remove_forward("team@local.test", "x@remote.test") is True
    assert rrt.remove_forward("team@local.test", "x@remote.test") is False
    assert rrt.remove_domain_alias("alias.test") is True
    assert rrt.remove_alias("sales@local.test", "bob@local.test") is True
    assert rrt.resolve("team@local.test") == ["bob@local.test", "carol@local.test"]
    assert not rrt.has_mapping("sales@local.test")


def test_loops_are_refused_and_deep_chains_raise(stores, backend):
    _, _, rrt = stores
    rrt.add_forward("a@local.test", "b@local.test")
    rrt.add_forward("b@local.test", "c@local.test")
    with pytest.raises(ValueError, match="loop: c@local.test -> a@local.test -> b@local.test"):
        rrt.add_forward("c@local.test", "a@local.test")
    rrt.add_domain_alias("one.test", "two.test")
    with pytest.raises(ValueError, match="loop"):
        rrt.add_domain_alias("two.test", "one.test")
    assert len(rrt.list()) == 3
    shallow = backend.rrt(max_depth=1, refresh_interval=0)
    try:
        with pytest.raises(RewriteLoopError) as err:
            shallow.resolve("a@local.test")
        assert err.value.loop is False
    finally:
        shallow.close()


# -- several processes on one database ---------------------------------------------------

def test_other_processes_changes_are_seen_within_the_refresh_interval(conf, tmp_path):
    server_side = open_backend(conf, tmp_path / "a")   # each its own pool, as two processes
    admin_side = open_backend(conf, tmp_path / "b")
    domains = server_side.domains(default_domain="local.test", refresh_interval=0.1)
    users = server_side.users(domains=domains, refresh_interval=0.1)
    rrt = server_side.rrt(refresh_interval=0.1)
    admin = [admin_side.domains(refresh_interval=0), admin_side.rrt(refresh_interval=0)]
    admin.insert(1, admin_side.users(domains=admin[0], refresh_interval=0))
    try:
        admin[0].add("local.test")
        admin[1].add("bob@local.test", "a long secret")
        admin[2].add_alias("info@local.test", "bob@local.test")
        wait_for(lambda: domains.contains("local.test") and users.contains("bob@local.test")
                 and rrt.resolve("info@local.test") == ["bob@local.test"], timeout=5,
                 what="the other pool's changes")
        admin[1].remove("bob@local.test")
        wait_for(lambda: not users.contains("bob@local.test"), timeout=5, what="the removal")
    finally:
        for store in (*admin, rrt, users, domains):
            store.close()


def test_lookups_keep_answering_from_memory_while_the_database_is_away(postgres, tmp_path):
    dbname = postgres.new_database()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "postgres.properties").write_text(
        properties(postgres, dbname, **{"jooq.reactive.timeout": "2s"}))
    backend = open_backend(conf, tmp_path / "var")
    domains = backend.domains(default_domain="local.test", refresh_interval=0.05)
    users = backend.users(refresh_interval=0.05)
    try:
        domains.add("local.test")
        users.add("bob@local.test", "a long secret")
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        postgres.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       f" WHERE datname = '{dbname}'")
        time.sleep(0.3)   # several watcher rounds fail meanwhile
        started = time.monotonic()
        for _ in range(1000):
            assert users.contains("bob@local.test") and domains.contains("local.test")
        assert time.monotonic() - started < 0.5
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        with psycopg.connect(backend.config.conninfo(), autocommit=True) as conn:
            conn.execute("DELETE FROM users")
        wait_for(lambda: not users.contains("bob@local.test"), timeout=10,
                 what="the store to catch up once the database is back")
    finally:
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        users.close()
        domains.close()


# -- chainmail run and the command line ---------------------------------------------------

VALIDRCPT = '<handler class="org.apache.james.smtpserver.fastfail.ValidRcptHandler"/>'


def _rcpt_reply(server, address: str) -> tuple[int, bytes]:
    with server.smtp() as client:
        client.ehlo()
        client.mail("sender@remote.example")
        return client.rcpt(address)


def _cli(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*CHAINMAIL, *args, "--conf", str(server.conf), "--var",
                           str(server.var)], input=stdin, capture_output=True, text=True,
                          timeout=60, env=env)


def _webadmin(server):
    import re

    import httpx
    match = wait_for(lambda: re.search(r"webadmin \(http\) listening on ([0-9.]+):(\d+)",
                                       server.log), what="the webadmin listening line")
    return httpx.Client(base_url=f"http://{match.group(1)}:{match.group(2)}", timeout=10)


@pytest.fixture
def two_servers(chainmail_factory, postgres):
    """Two ``chainmail run`` (own conf and var, WebAdmin on) on one PostgreSQL database."""
    from chainmail.testing.server import shipped_mailetcontainer
    dbname = postgres.new_database()
    files = {"postgres.properties": properties(postgres, dbname),
             "mailetcontainer.xml": shipped_mailetcontainer(),
             "webadmin.properties": "enabled=true\nport=0\n"}
    servers = [chainmail_factory(handlers=VALIDRCPT, files=files) for _ in range(2)]
    return servers, dbname


def test_chainmail_run_accepts_mail_for_a_user_added_with_the_command_line(two_servers,
                                                                          postgres):
    from chainmail.testing.stores import LocalStores
    (server, _), dbname = two_servers
    assert _rcpt_reply(server, "bob@local.test") == (550, b"5.1.1 Unknown user: bob@local.test")
    done = _cli(server, "user", "add", "bob@local.test", "--password-stdin",
                stdin="a long secret\n")
    assert done.returncode == 0, done.stderr
    listed = _cli(server, "user", "list")
    assert listed.returncode == 0 and listed.stdout.split() == ["bob@local.test"]
    assert postgres.admin("SELECT username FROM users", dbname) == [("bob@local.test",)]
    assert _cli(server, "sieve", "list", "bob@local.test").returncode == 0
    unknown = _cli(server, "sieve", "list", "nobody@local.test")
    assert unknown.returncode != 0 and "no user nobody@local.test" in unknown.stderr
    wait_for_recipients(server, "bob@local.test")
    with server.smtp() as client:
        refused = client.sendmail("sender@remote.example", ["bob@local.test"],
                                  b"Subject: hello\r\nFrom: sender@remote.example\r\n\r\nhi\r\n")
    assert refused == {}
    stores = LocalStores(server.var)
    try:
        delivered = wait_for(lambda: stores.mailbox("bob@local.test"), timeout=20,
                             what="delivery into bob's Maildir")
    finally:
        stores.close()
    assert b"Subject: hello" in delivered[0]
    # The users are in PostgreSQL only: the embedded database has no user table in use.
    import sqlite3
    db = server.var / "chainmail.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "users" not in tables and "domains" not in tables


def test_two_servers_on_one_database_see_each_others_user_changes(two_servers):
    (a, b), _ = two_servers
    with _webadmin(a) as admin_a, _webadmin(b) as admin_b:
        assert admin_a.put("/users/carol@local.test",
                           json={"password": "a long secret"}).status_code == 204
        wait_for_recipients(b, "carol@local.test")
        assert admin_b.get("/users").json() == [{"username": "carol@local.test"}]
        assert admin_b.put("/users/dave@local.test",
                           json={"password": "a long secret"}).status_code == 204
        assert admin_b.put("/address/aliases/carol@local.test/sources/info@local.test"
                           ).status_code == 204
        wait_for_recipients(a, "dave@local.test", "info@local.test")
        assert admin_a.delete("/users/carol@local.test").status_code == 204
        wait_for(lambda: _rcpt_reply(b, "carol@local.test")[0] == 550, timeout=10,
                 what="b refusing the user a removed")
    with smtplib.SMTP(b.host, b.port, local_hostname="client.test", timeout=30) as client:
        assert client.noop()[0] == 250


def test_reload_reopens_the_database_and_a_broken_file_is_refused(chainmail_factory, postgres):
    import signal

    from tests.conftest import wait_for_log
    dbname = postgres.new_database()
    server = chainmail_factory("<ioWorkerCount>1</ioWorkerCount>", handlers=VALIDRCPT,
                               files={"postgres.properties": properties(postgres, dbname)})
    assert _cli(server, "user", "add", "bob@local.test", "--password-stdin",
                stdin="a long secret\n").returncode == 0
    wait_for_recipients(server, "bob@local.test")

    def connections() -> int:
        return postgres.admin("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                              f"'{dbname}' AND application_name = 'chainmail'")[0][0]
    before = connections()
    server.signal(signal.SIGHUP)
    wait_for_log(server, r"configuration reloaded \(generation 1\)", timeout=20)
    wait_for_log(server, r"configuration generation 0 closed", timeout=20)
    assert _rcpt_reply(server, "bob@local.test")[0] == 250
    assert wait_for(lambda: connections() == before, timeout=10,
                    what="the old generation's pool closed")
    # A broken postgres.properties is refused with its file and line; the server goes on.
    props = server.conf / "postgres.properties"
    props.write_text(props.read_text() + "database.port=none\n")
    server.signal(signal.SIGHUP)
    log = wait_for_log(server, r"configuration reload refused", timeout=20)
    assert f"{props}:6: database.port: 'none': expected a whole number" in log
    assert _rcpt_reply(server, "bob@local.test")[0] == 250
    assert _rcpt_reply(server, "carol@local.test")[0] == 550


def test_a_password_check_while_the_database_is_down_is_a_temporary_failure(conf, tmp_path,
                                                                           postgres):
    from chainmail.store.users import UsersUnavailable
    (conf / "postgres.properties").write_text(
        (conf / "postgres.properties").read_text() + "jooq.reactive.timeout=2second\n")
    backend = open_backend(conf, tmp_path / "var")
    users = backend.users()
    try:
        users.add("carol@local.test", "secret-pw-1")
        postgres.crash()
        try:
            with pytest.raises(UsersUnavailable, match="PostgreSQL"):
                users.verify("carol@local.test", "secret-pw-1")
            assert users.contains("carol@local.test")   # lookups: from the copy in memory
        finally:
            postgres.restart()
        assert wait_for(lambda: _verifies(users), 20, "password checks again")
    finally:
        users.close()


def _verifies(users) -> bool:
    from chainmail.store.users import UsersUnavailable
    try:
        return users.verify("carol@local.test", "secret-pw-1")
    except UsersUnavailable:
        return False


def test_migrate_accounts_copies_the_embedded_accounts_once(tmp_path, postgres):
    """Domains, users (their hashes: the old passwords keep working), aliases, forwards,
    domain aliases and quotas of var/chainmail.db, into PostgreSQL; a second run keeps
    what is there."""
    conf, var = tmp_path / "conf", tmp_path / "var"
    conf.mkdir()
    (conf / "domainlist.xml").write_text(
        "<domainlist><domainnames><domainname>local.test</domainname></domainnames>"
        "<defaultDomain>local.test</defaultDomain><autodetect>false</autodetect>"
        "<autodetectIP>false</autodetectIP></domainlist>")

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CHAINMAIL, *args, "--conf", str(conf), "--var", str(var)],
                              input=stdin, capture_output=True, text=True, timeout=60)
    for command in (("domain", "add", "other.test"), ("alias", "add", "postmaster@local.test",
                                                       "ann@local.test")):
        done = cli(*command)
        assert done.returncode == 0, done.stderr
    for user in ("ann@local.test", "bob@other.test"):
        assert cli("user", "add", user, "--password-stdin", stdin="old-secret-1\n").returncode == 0
    assert cli("quota", "set", "ann@local.test", "1000000").returncode == 0
    embedded = SqliteBackend(var)
    rrt = embedded.rrt()
    rrt.add_forward("team@local.test", "bob@other.test")
    rrt.add_domain_alias("alias.test", "local.test")
    rrt.close()
    dbname = postgres.new_database()
    (conf / "postgres.properties").write_text(properties(postgres, dbname))
    first = cli("migrate-accounts")
    assert first.returncode == 0, first.stderr
    assert "2 user(s), 3 mapping(s), 1 quota(s); 0 already there" in first.stdout, first.stdout
    backend = open_backend(conf, var)
    assert isinstance(backend, PostgresBackend)
    users, rrt, quotas = backend.users(), backend.rrt(), backend.quotas()
    try:
        assert users.verify("ann@local.test", "old-secret-1")
        assert users.verify("bob@other.test", "old-secret-1")
        assert not users.verify("ann@local.test", "wrong")
        assert sorted(rrt.resolve("team@local.test")) == ["bob@other.test"]
        assert rrt.resolve("ann@alias.test") == ["ann@local.test"]
        assert quotas.get("ann@local.test") == 1000000
    finally:
        users.close()
        rrt.close()
        quotas.close()
    again = cli("migrate-accounts")
    assert again.returncode == 0 and "0 user(s), 0 mapping(s), 0 quota(s)" in again.stdout
