"""Mailbox quotas and greylisting on a real PostgreSQL (the server of
``test_postgres_stores``): what one node or process changes, every other one sees; the
embedded SQLite stores are left alone; and an unreachable database makes greylisting
answer a temporary failure rather than let everyone through."""

from __future__ import annotations

import smtplib
import sqlite3
import subprocess
import threading
import time

import pytest

from chainmail.store.backends import PostgresBackend, SqliteBackend, open_backend
from chainmail.store.mailbox import MaildirStore, QuotaExceededError, SqliteQuotas
from chainmail.store.postgres.greylist import GreylistUnavailable
from tests.conftest import CHAINMAIL, raw_exchange, wait_for, wait_for_recipients

from .test_postgres_stores import (  # noqa: F401  (fixtures)
    VALIDRCPT,
    backend,
    conf,
    postgres,
    properties,
    psycopg,
)

GREYLIST = ('<handler class="org.apache.james.smtpserver.fastfail.JDBCGreylistHandler">'
            '<tempBlockTime>1 sec</tempBlockTime></handler>')
TEMP_REJECTED = (451, b"4.4.3 Temporary rejected: Reconnect to deliver later")
UNAVAILABLE = (451, b"4.3.0 Unable to process request")


def _cli(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAINMAIL, *args, "--conf", str(server.conf), "--var",
                           str(server.var)], input=stdin, capture_output=True, text=True,
                          timeout=60)


def _add_user(server, name: str) -> None:
    done = _cli(server, "user", "add", name, "--password-stdin", stdin="a long secret\n")
    assert done.returncode == 0, done.stderr


def _no_sqlite_table(var, table: str) -> bool:
    db = var / "chainmail.db"
    if not db.exists():
        return True
    with sqlite3.connect(db) as conn:
        return table not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


# -- quotas ------------------------------------------------------------------------------

def test_the_backend_chooses_where_quotas_live(backend, tmp_path):
    quotas = backend.quotas(refresh_interval=0)
    try:
        assert type(quotas).__name__ == "PostgresQuotas"
    finally:
        quotas.close()
    embedded = SqliteBackend(tmp_path / "var2").quotas()
    try:
        assert isinstance(embedded, SqliteQuotas)
    finally:
        embedded.close()


def test_two_processes_share_quotas_and_deliveries_obey_them(conf, tmp_path, postgres):
    node = open_backend(conf, tmp_path / "var")   # each its own pool, as two processes
    admin = open_backend(conf, tmp_path / "var")
    assert isinstance(node, PostgresBackend) and isinstance(admin, PostgresBackend)
    store = MaildirStore(tmp_path / "var" / "mail", tmp_path / "var" / "chainmail.db",
                         quotas=node.quotas(refresh_interval=0.1))
    other = MaildirStore(tmp_path / "var" / "mail", quotas=admin.quotas(refresh_interval=0))
    try:
        store.deliver("bob@local.test", b"Subject: one\r\n\r\nfirst\r\n")
        used = store.usage("bob@local.test")
        other.set_quota("BOB@local.test", used + 5)
        assert other.get_quota("bob@local.test") == used + 5
        assert store.get_quota("bob@local.test") == used + 5   # read from the table
        # the delivering store's copy follows the other process within its interval
        wait_for(lambda: store._quota_table.current().get("bob@local.test") == used + 5,
                 timeout=5, what="the quota set by the other process")
        with pytest.raises(QuotaExceededError) as info:
            store.deliver("bob@local.test", b"Subject: two\r\n\r\nsecond\r\n")
        assert str(info.value).startswith("552 5.2.2 Over quota: mailbox of bob@local.test")
        assert store.quotas() == other.quotas() == {"bob@local.test": used + 5}
        other.set_quota("bob@local.test", None)
        wait_for(lambda: "bob@local.test" not in store._quota_table.current(), timeout=5,
                 what="the quota removed by the other process")
        store.deliver("bob@local.test", b"Subject: two\r\n\r\nsecond\r\n")
        with pytest.raises(ValueError):
            other.set_quota("bob@local.test", -1)
    finally:
        store.close()
        other.close()
    # in PostgreSQL only: the embedded database was not given the quota table
    assert _no_sqlite_table(tmp_path / "var", "mailbox_quota")


def test_deliveries_keep_the_last_quotas_while_the_database_is_away(postgres, tmp_path):
    dbname = postgres.new_database()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "postgres.properties").write_text(
        properties(postgres, dbname, **{"jooq.reactive.timeout": "2s"}))
    backend = open_backend(conf, tmp_path / "var")
    store = MaildirStore(tmp_path / "var" / "mail", quotas=backend.quotas(refresh_interval=0.05))
    try:
        store.set_quota("bob@local.test", 10)
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        postgres.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       f" WHERE datname = '{dbname}'")
        time.sleep(0.3)   # several watcher rounds fail meanwhile
        started = time.monotonic()
        with pytest.raises(QuotaExceededError):
            store.deliver("bob@local.test", b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n")
        store.deliver("carol@local.test", b"Subject: small\r\n\r\nx\r\n")
        assert time.monotonic() - started < 0.5
    finally:
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        store.close()


def test_quota_command_line_writes_postgresql(chainmail_factory, postgres):
    dbname = postgres.new_database()
    server = chainmail_factory(handlers=VALIDRCPT,
                               files={"postgres.properties": properties(postgres, dbname)})
    done = _cli(server, "quota", "set", "Bob@local.test", "2k")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "quota of bob@local.test: 2048 bytes"
    assert postgres.admin("SELECT username, max_bytes FROM mailbox_quota", dbname) == \
        [("bob@local.test", 2048)]
    listed = _cli(server, "quota", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[1].split() == ["bob@local.test", "0", "2048"]
    assert _cli(server, "quota", "remove", "bob@local.test").returncode == 0
    assert postgres.admin("SELECT count(*) FROM mailbox_quota", dbname) == [(0,)]
    assert _no_sqlite_table(server.var, "mailbox_quota")


LMTP = ('<lmtpservers><lmtpserver enabled="true"><jmxName>lmtp</jmxName>'
        '<bind>127.0.0.1:0</bind><helloName autodetect="false">lmtp.test</helloName>'
        '<ioWorkerCount>1</ioWorkerCount><handlerchain '
        'coreHandlersPackage="org.apache.james.lmtpserver.CoreCmdHandlerLoader"/>'
        '</lmtpserver></lmtpservers>')


def _lmtp_delivery(server, port: int, rcpt: str, size: int = 500) -> str:
    data = raw_exchange(port, b"LHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<"
                        + rcpt.encode() + b">\r\nDATA\r\nSubject: big\r\n\r\n" + b"x" * size
                        + b"\r\n.\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    return lines[lines.index("354 Ok Send data ending with <CRLF>.<CRLF>") + 1]


def test_a_quota_set_on_one_node_refuses_lmtp_delivery_on_another(chainmail_factory, postgres):
    dbname = postgres.new_database()
    files = {"postgres.properties": properties(postgres, dbname), "lmtpserver.xml": LMTP}
    a, b = (chainmail_factory("<ioWorkerCount>1</ioWorkerCount>", files=files)
            for _ in range(2))
    _add_user(a, "bob@local.test")
    _add_user(a, "cedric@local.test")
    port = b.ports[-1]   # LMTP blocks come after SMTP's
    wait_for_recipients(b, "bob@local.test", "cedric@local.test", port=port,
                        hello=b"LHLO probe.test")
    assert _cli(a, "quota", "set", "bob@local.test", "10").returncode == 0
    over = "552 5.2.2 Over Quota error when delivering message to <bob@local.test>"
    # b reloads the quotas within its refresh interval (a delivery before then is kept)
    wait_for(lambda: _lmtp_delivery(b, port, "bob@local.test") == over, timeout=10,
             what="node b refusing bob's mail over the quota set on node a")
    assert _lmtp_delivery(b, port, "cedric@local.test") == \
        "250 2.6.0 Message received <cedric@local.test>"
    assert _cli(b, "quota", "remove", "bob@local.test").returncode == 0
    wait_for(lambda: _lmtp_delivery(a, a.ports[-1], "bob@local.test").startswith("250 "),
             timeout=10, what="node a delivering again after the quota was removed on b")
    assert _no_sqlite_table(a.var, "mailbox_quota") and _no_sqlite_table(b.var, "mailbox_quota")


def test_mailet_delivery_over_a_postgresql_quota_bounces(chainmail_factory, postgres):
    from chainmail.testing.server import shipped_mailetcontainer
    from chainmail.testing.stores import LocalStores
    dbname = postgres.new_database()
    server = chainmail_factory("<ioWorkerCount>1</ioWorkerCount>", handlers=VALIDRCPT, files={
        "postgres.properties": properties(postgres, dbname),
        "mailetcontainer.xml": shipped_mailetcontainer()})
    _add_user(server, "alice@local.test")
    _add_user(server, "bob@local.test")
    assert _cli(server, "quota", "set", "bob@local.test", "10").returncode == 0
    wait_for_recipients(server, "alice@local.test", "bob@local.test")
    time.sleep(1.2)   # the quota reaches the server's copy within a second
    with server.smtp() as client:
        assert client.sendmail("alice@local.test", ["bob@local.test"],
                               b"Subject: too big\r\nFrom: alice@local.test\r\n\r\n"
                               + b"x" * 200 + b"\r\n") == {}
    stores = LocalStores(server.var)
    try:
        bounce = wait_for(lambda: stores.mailbox("alice@local.test"), timeout=20,
                          what="the bounce in alice's Maildir")
        assert b"5.2.2" in bounce[0]
        assert stores.mailbox("bob@local.test") == []
    finally:
        stores.close()


# -- greylisting -------------------------------------------------------------------------

class Rules:
    """A store with one handler's durations."""

    def __init__(self, store, **durations: float) -> None:
        self.store, self.durations = store, durations

    def check(self, network: str, sender: str, recipient: str, now: float | None = None):
        return self.store.check(network, sender, recipient, now=now, **self.durations)


@pytest.fixture
def greylist(backend):
    made = []

    def make(temp_block=10.0, whitelist_life=100.0, unseen_life=50.0):
        store = backend.greylist()
        made.append(store)
        return Rules(store, temp_block=temp_block, whitelist_life=whitelist_life,
                     unseen_life=unseen_life)
    yield make
    for store in made:
        store.close()


def test_greylist_rules_on_postgresql(greylist, backend):
    g = greylist()
    triplet = ("192.0.2.0/24", "a@remote.example", "bob@local.test")
    t = 1_000_000.0
    assert g.check(*triplet, now=t) is False            # new
    assert g.check(*triplet, now=t + 5) is False        # too early
    assert g.check(*triplet, now=t + 11) is True        # retried after tempBlockTime
    assert g.check(*triplet, now=t + 11 + 99) is True   # whitelisted, renewed
    assert g.check(*triplet, now=t + 11 + 99 + 101) is False   # whitelist expired: new
    assert g.check(*triplet, now=t + 300) is False      # refused and unseen for 89 s: new
    assert g.check(*triplet, now=t + 311) is True
    other = ("192.0.2.0/24", "b@remote.example", "bob@local.test")
    assert g.check(*other, now=t + 400) is False
    assert g.check(*other, now=t + 400 + 51) is False   # unseenLifeTime passed: new again
    # the database's clock when none is given
    assert g.check("198.51.100.0/24", "c@remote.example", "bob@local.test") is False
    with psycopg.connect(backend.config.conninfo(), autocommit=True) as conn:
        rows = conn.execute("SELECT ip, sender, count FROM greylist ORDER BY sender").fetchall()
        assert rows == [("192.0.2.0/24", "a@remote.example", 1),
                        ("192.0.2.0/24", "b@remote.example", 0),
                        ("198.51.100.0/24", "c@remote.example", 0)]
        drift = conn.execute("SELECT abs(extract(epoch FROM create_time - now())) FROM greylist"
                             " WHERE sender = 'c@remote.example'").fetchone()[0]
        assert drift < 60


def test_expired_triplets_are_swept(greylist, backend):
    g = greylist(temp_block=1, whitelist_life=100, unseen_life=10)
    now = time.time()
    g.check("192.0.2.0/24", "old@remote.example", "bob@local.test", now=now - 20)   # unseen
    g.check("192.0.2.0/24", "wl@remote.example", "bob@local.test", now=now - 200)
    g.check("192.0.2.0/24", "wl@remote.example", "bob@local.test", now=now - 150)   # passed
    g.check("192.0.2.0/24", "keep@remote.example", "bob@local.test", now=now - 5)
    fresh = greylist(temp_block=1, whitelist_life=100, unseen_life=10)   # sweeps at once
    fresh.check("192.0.2.0/24", "new@remote.example", "bob@local.test", now=now)
    with psycopg.connect(backend.config.conninfo(), autocommit=True) as conn:
        left = [r[0] for r in conn.execute("SELECT sender FROM greylist ORDER BY sender")]
    assert left == ["keep@remote.example", "new@remote.example"]


def test_two_nodes_seeing_a_new_triplet_at_once_agree(conf, tmp_path, backend):
    nodes = [open_backend(conf, tmp_path / f"n{i}") for i in range(2)]
    stores = [Rules(n.greylist(), temp_block=60, whitelist_life=100, unseen_life=100)
              for n in nodes]
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def attempt(store) -> None:
        try:
            start.wait()
            results.append(store.check("203.0.113.0/24", "x@remote.example", "bob@local.test"))
        except BaseException as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=attempt, args=(stores[i % 2],)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for s in stores:
            s.store.close()
    assert errors == [] and results == [False] * 8
    with psycopg.connect(backend.config.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT count, ip FROM greylist").fetchall() == \
            [(0, "203.0.113.0/24")]


def test_a_triplet_refused_by_one_server_passes_on_another(chainmail_factory, postgres):
    dbname = postgres.new_database()
    files = {"postgres.properties": properties(postgres, dbname)}
    a, b = (chainmail_factory(handlers=GREYLIST, authorized="", files=files)
            for _ in range(2))
    with smtplib.SMTP(a.host, a.port, local_hostname="client.example", timeout=30) as client:
        client.ehlo()
        assert client.mail("sender@remote.example")[0] == 250
        assert client.rcpt("user@local.test") == TEMP_REJECTED
        assert client.rcpt("user@local.test") == TEMP_REJECTED   # too early, still
    time.sleep(1.2)
    with smtplib.SMTP(b.host, b.port, local_hostname="client.example", timeout=30) as client:
        client.ehlo()
        assert client.mail("sender@remote.example")[0] == 250
        assert client.rcpt("user@local.test")[0] == 250
        assert client.data(b"Subject: greylisted\r\n\r\nbody\r\n")[0] == 250
    assert postgres.admin("SELECT ip, sender, recipient, count FROM greylist", dbname) == \
        [("127.0.0.0/24", "sender@remote.example", "user@local.test", 1)]
    assert _no_sqlite_table(a.var, "greylist") and _no_sqlite_table(b.var, "greylist")


def test_greylisting_answers_451_while_postgresql_is_unreachable(chainmail_factory, postgres):
    dbname = postgres.new_database()
    server = chainmail_factory(handlers=GREYLIST, authorized="", files={
        "postgres.properties": properties(postgres, dbname, **{"jooq.reactive.timeout": "2s"})})

    def block(allowed: bool) -> None:
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS {str(allowed).lower()}")
        if not allowed:
            postgres.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           f" WHERE datname = '{dbname}'")

    def rcpt(sender: str) -> tuple[int, bytes]:
        with smtplib.SMTP(server.host, server.port, local_hostname="c.example",
                          timeout=30) as client:
            client.ehlo()
            assert client.mail(sender)[0] == 250
            return client.rcpt("user@local.test")

    try:
        block(False)   # before the first RCPT: greylisting cannot even open its pool
        assert rcpt("one@remote.example") == UNAVAILABLE
        block(True)
        wait_for(lambda: rcpt("one@remote.example") == TEMP_REJECTED, timeout=10,
                 what="the pool opened once the database is back")
        block(False)   # with its pool open
        assert rcpt("two@remote.example") == UNAVAILABLE
        assert "greylisting cannot reach PostgreSQL" in server.log
        block(True)
        wait_for(lambda: rcpt("two@remote.example") == TEMP_REJECTED, timeout=20,
                 what="greylisting working again once the database is back")
    finally:
        block(True)


def test_a_reload_leaves_no_greylist_connections_behind(chainmail_factory, postgres):
    import signal

    from tests.conftest import wait_for_log
    dbname = postgres.new_database()
    server = chainmail_factory("<ioWorkerCount>1</ioWorkerCount>", handlers=GREYLIST,
                               authorized="",
                               files={"postgres.properties": properties(postgres, dbname)})

    def rcpt() -> tuple[int, bytes]:
        with smtplib.SMTP(server.host, server.port, local_hostname="c.example",
                          timeout=30) as client:
            client.ehlo()
            client.mail("sender@remote.example")
            return client.rcpt("user@local.test")

    def connections() -> int:
        return postgres.admin("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                              f"'{dbname}' AND application_name = 'chainmail'")[0][0]
    assert rcpt() == TEMP_REJECTED
    opened = connections()
    for generation in (1, 2):
        server.signal(signal.SIGHUP)
        wait_for_log(server, rf"configuration generation {generation - 1} closed", timeout=20)
        assert rcpt() == TEMP_REJECTED
    assert wait_for(lambda: connections() == opened, timeout=10,
                    what="the greylist pools of the old generations closed")


SPAMTRAP = ('<handler class="org.apache.james.smtpserver.fastfail.SpamTrapHandler">'
            '<spamTrapRecip>trap@local.test</spamTrapRecip><blockTime>60000</blockTime>'
            '</handler>')
BLOCKED = (554, b"5.7.1 Email rejected")


def test_a_client_caught_by_the_spam_trap_of_one_node_is_refused_by_another(chainmail_factory,
                                                                           postgres):
    dbname = postgres.new_database()
    files = {"postgres.properties": properties(postgres, dbname,
                                               **{"jooq.reactive.timeout": "2s"})}
    a, b = (chainmail_factory(handlers=SPAMTRAP, files=files) for _ in range(2))

    def rcpt(server, address: str) -> tuple[int, bytes]:
        with smtplib.SMTP(server.host, server.port, local_hostname="c.example",
                          timeout=30) as client:
            client.ehlo()
            assert client.mail("sender@remote.example")[0] == 250
            return client.rcpt(address)
    assert rcpt(b, "user@local.test")[0] == 250
    assert rcpt(a, "trap@local.test") == BLOCKED
    assert rcpt(b, "user@local.test") == BLOCKED   # the other node knows
    assert [ip for (ip,) in postgres.admin("SELECT ip FROM spamtrap_blocks", dbname)] == \
        ["127.0.0.1"]
    assert _no_sqlite_table(a.var, "spamtrap_blocks")
    postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
    postgres.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                   f"'{dbname}'")
    try:   # the list cannot be read: not refused for good, not let through
        assert rcpt(b, "user@local.test") == UNAVAILABLE
    finally:
        postgres.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
