"""Local domains in the shared SQLite database, and the migration helper."""

from __future__ import annotations

import sqlite3
import time

import pytest

from chainmail.store import sqlite as store_sqlite
from chainmail.store.domains import DomainStore, normalize_domain


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "var" / "chainmail.db")


@pytest.fixture
def store(db):
    s = DomainStore(db)
    yield s
    s.close()


def test_add_remove_list_contains(store):
    assert store.list() == []
    assert store.add("example.org") is True
    assert store.add("example.org") is False
    assert store.add("b.example") is True
    assert store.list() == ["b.example", "example.org"]
    assert store.contains("example.org")
    assert not store.contains("example.com")
    assert store.remove("example.org") is True
    assert store.remove("example.org") is False
    assert not store.contains("example.org")
    assert store.list() == ["b.example"]


def test_case_and_trailing_dot(store):
    assert store.add("Mail.Example.ORG.") is True
    assert store.list() == ["mail.example.org"]
    assert store.add("mail.example.org") is False
    for spelling in ("mail.example.org", "MAIL.EXAMPLE.ORG", "mail.example.org.", "Mail.Example.Org."):
        assert store.contains(spelling), spelling
    assert not store.contains("example.org")
    assert store.remove("MAIL.example.org.") is True


def test_address_literals_and_idn(store):
    assert store.add("[127.0.0.1]")
    assert store.add("[IPv6:2001:DB8:0:0::1]")
    assert store.add("bücher.example")
    assert store.list() == ["[127.0.0.1]", "[ipv6:2001:db8::1]", "xn--bcher-kva.example"]
    assert store.contains("[127.0.0.1]")
    assert store.contains("127.0.0.1")
    assert store.contains("[ipv6:2001:db8::1]")
    assert store.contains("[IPv6:2001:0db8::0:1]")
    assert store.contains("BÜCHER.example")
    assert store.contains("xn--bcher-kva.example.")
    assert not store.contains("[127.0.0.2]")
    assert not store.contains("[not an address]")
    assert store.add("::1") is True  # a bare address is stored as its literal
    assert store.contains("[IPv6:::1]")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "   ",
        "-example.org",
        "example-.org",
        "exa..mple.org",
        ".example.org",
        "under_score.example",
        "bad value",
        "localhost)",
        "a" * 64 + ".example",
        ".".join(["abcdefghi"] * 26),  # 259 characters
        "1.2.3",  # numeric last label: neither a name nor an IPv4 address
        "[127.0.0.1",
        "[999.1.1.1]",
        "[IPv6:zz::1]",
        "[]",
        "127.0.0.1/24",
    ],
)
def test_invalid_names_rejected_with_clear_message(store, bad):
    with pytest.raises(ValueError) as info:
        store.add(bad)
    assert "invalid" in str(info.value)
    assert repr(bad) in str(info.value)
    assert store.list() == []
    assert not store.contains(bad)


def test_normalize_domain_accepts_edge_cases():
    assert normalize_domain("a") == "a"
    assert normalize_domain("3com.example") == "3com.example"
    assert normalize_domain("x" * 63 + ".example") == "x" * 63 + ".example"
    assert normalize_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert normalize_domain(" Example.COM ") == "example.com"
    assert normalize_domain("[192.0.2.1]") == "[192.0.2.1]"


def test_default_domain(db):
    with DomainStore(db) as s:
        assert s.default_domain == "localhost"
    with DomainStore(db, default_domain="MX.Example.org.") as s:
        assert s.default_domain == "mx.example.org"
    with pytest.raises(ValueError):
        DomainStore(db, default_domain="bad name")


def test_other_process_change_seen_within_refresh_bound(db):
    server = DomainStore(db, refresh_interval=0.05)
    cli = DomainStore(db)
    try:
        assert not server.contains("new.example")  # caches "not local"
        assert cli.add("new.example")
        deadline = time.monotonic() + 0.05 + 0.5
        while not server.contains("new.example"):
            assert time.monotonic() < deadline, "change not seen within the refresh bound"
            time.sleep(0.01)
        assert cli.remove("new.example")
        deadline = time.monotonic() + 0.05 + 0.5
        while server.contains("new.example"):
            assert time.monotonic() < deadline, "removal not seen within the refresh bound"
            time.sleep(0.01)
        assert server.list() == []
    finally:
        server.close()
        cli.close()


def test_refresh_is_bounded_not_per_call(db):
    server = DomainStore(db, refresh_interval=3600)
    cli = DomainStore(db)
    try:
        assert cli.add("late.example")
        assert not server.contains("late.example")  # cached until the next check
        assert server.list() == ["late.example"]  # list() always reads the database
        assert server.add("own.example")  # own writes reload at once
        assert server.contains("late.example") and server.contains("own.example")
    finally:
        server.close()
        cli.close()


def test_refresh_interval_zero_checks_every_call(db):
    server = DomainStore(db, refresh_interval=0)
    cli = DomainStore(db)
    try:
        cli.add("now.example")
        assert server.contains("now.example")
    finally:
        server.close()
        cli.close()


def test_seed_is_idempotent_and_adds_default_domain(db):
    with DomainStore(db, default_domain="mx.example.org") as s:
        s.seed(["Example.org", "b.example."])
        s.seed(["example.org", "b.example"])
        assert s.list() == ["b.example", "example.org", "mx.example.org"]
        assert s.contains("mx.example.org")
    with DomainStore(db, default_domain="mx.example.org") as again:
        again.seed(["example.org"])
        assert again.list() == ["b.example", "example.org", "mx.example.org"]


def test_seed_validates_everything_before_writing(store):
    with pytest.raises(ValueError):
        store.seed(["good.example", "bad_name.example"])
    assert store.list() == []


def test_database_is_wal_with_schema_version(db, store):
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT component, version FROM schema_version").fetchall()
        assert rows == [("domains", 1)]
    finally:
        conn.close()


def test_migrate_adds_tables_per_component_once(db, store):
    conn = store_sqlite.connect(db)
    try:
        steps = [
            ("CREATE TABLE users (name TEXT PRIMARY KEY)",),
            ("ALTER TABLE users ADD COLUMN hash TEXT",),
        ]
        assert store_sqlite.migrate(conn, "users", steps[:1]) == 1
        assert store_sqlite.migrate(conn, "users", steps) == 2
        assert store_sqlite.migrate(conn, "users", steps) == 2  # nothing left to do
        assert store_sqlite.schema_version(conn, "users") == 2
        assert store_sqlite.schema_version(conn, "domains") == 1
        conn.execute("INSERT INTO users (name, hash) VALUES ('u', 'h')")
        with pytest.raises(RuntimeError, match="newer"):
            store_sqlite.migrate(conn, "users", steps[:1])
    finally:
        conn.close()


def test_failed_migration_rolls_back(db):
    conn = store_sqlite.connect(db)
    try:
        with pytest.raises(sqlite3.OperationalError):
            store_sqlite.migrate(conn, "broken", [("CREATE TABLE t (x)", "NOT SQL")])
        assert store_sqlite.schema_version(conn, "broken") == 0
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() is None
    finally:
        conn.close()


def test_newer_database_is_refused(db):
    with DomainStore(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'domains'")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade chainmail"):
        DomainStore(db)
