"""Users in the shared SQLite database: password hashes, lookups, username mapping."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import statistics
import threading
import time

import pytest

from chainmail.store import sqlite as store_sqlite
from chainmail.store.domains import DomainStore
from chainmail.store.users import (
    SCRYPT_LN,
    UserExistsError,
    UsersRepository,
    check_password,
    hash_password,
    needs_rehash,
    normalize_username,
    username_for,
)

PHC = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)\Z")


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "var" / "chainmail.db")


@pytest.fixture
def users(db):
    repo = UsersRepository(db, refresh_interval=0)
    yield repo
    repo.close()


def _stored_hash(db: str, username: str) -> str:
    conn = store_sqlite.connect(db)
    try:
        return conn.execute("SELECT password_hash FROM users WHERE username = ?", (username,)).fetchone()[0]
    finally:
        conn.close()


# -- hashes -----------------------------------------------------------------------------


def test_hash_format_is_phc_scrypt_with_16_byte_salt():
    stored = hash_password("correct horse")
    m = PHC.match(stored)
    assert m, stored
    ln, r, p, salt, digest = m.groups()
    assert (int(ln), int(r), int(p)) == (SCRYPT_LN, 8, 1)
    assert len(base64.b64decode(salt + "==")) == 16
    assert len(base64.b64decode(digest + "==")) == 32
    assert check_password(stored, "correct horse")
    assert not check_password(stored, "correct horse ")
    assert not needs_rehash(stored)


def test_salt_is_random():
    a, b = hash_password("same"), hash_password("same")
    assert a != b
    assert a.split("$")[3] != b.split("$")[3]


def test_hash_matches_reference_scrypt():
    stored = hash_password("pässword", ln=10)
    _, _, params, salt, digest = stored.split("$")
    assert params == "ln=10,r=8,p=1"
    raw_salt = base64.b64decode(salt + "=" * (-len(salt) % 4))
    expected = hashlib.scrypt("pässword".encode(), salt=raw_salt, n=1024, r=8, p=1, dklen=32)
    assert base64.b64decode(digest + "=" * (-len(digest) % 4)) == expected


def test_pbkdf2_hashes_are_understood_and_need_rehash():
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", b"secret", salt, 1000)
    b64 = lambda data: base64.b64encode(data).decode().rstrip("=")  # noqa: E731
    stored = f"$pbkdf2-sha256$i=1000${b64(salt)}${b64(digest)}"
    assert check_password(stored, "secret")
    assert not check_password(stored, "Secret")
    assert needs_rehash(stored)
    assert needs_rehash(hash_password("x", ln=10))


@pytest.mark.parametrize("bad", [
    "secret", "$scrypt$ln=14,r=8$AAAA$AAAA", "$md5$i=1$AAAA$AAAA", "$scrypt$ln=40,r=8,p=1$AAAA$AAAA",
    "$scrypt$ln=14,r=8,p=1$$AAAA", "$scrypt$ln=x,r=8,p=1$AAAA$AAAA", "$scrypt$ln=14,r=8,p=1$A!A$AAAA",
])
def test_malformed_hashes_are_refused(bad):
    with pytest.raises(ValueError):
        check_password(bad, "secret")
    assert needs_rehash(bad)


# -- usernames --------------------------------------------------------------------------


@pytest.mark.parametrize("address, expected", [
    ("bob+tag@Example.org", "bob@example.org"),
    ("BOB@EXAMPLE.ORG", "bob@example.org"),
    ("bob+a+b@example.org", "bob@example.org"),
    ("+tag@example.org", "+tag@example.org"),
    ("bob@example.org.", "bob@example.org"),
    ("bob@Bücher.example", "bob@xn--bcher-kva.example"),
    ("bob@[IPv6:2001:DB8::1]", "bob@[ipv6:2001:db8::1]"),
    ("postmaster", "postmaster"),
])
def test_username_for(address, expected):
    assert username_for(address) == expected
    assert UsersRepository.username_for(address) == expected


@pytest.mark.parametrize("bad", [
    "bob", "@example.org", "bob@", "bob@exa mple.org", "bob..x@example.org", "bob+x@example.org",
    '"bob smith"@example.org', "bob@-example.org", "a" * 65 + "@example.org",
])
def test_invalid_usernames(bad):
    with pytest.raises(ValueError):
        normalize_username(bad)


def test_normalize_username():
    assert normalize_username("  Bob.Smith@Example.ORG ") == "bob.smith@example.org"
    assert normalize_username("bob@bücher.example") == "bob@xn--bcher-kva.example"


# -- repository -------------------------------------------------------------------------


def test_add_list_contains_remove(users):
    assert users.list() == []
    users.add("Bob@Example.org", "s3cret")
    users.add("alice@example.org", "pw")
    assert users.list() == ["alice@example.org", "bob@example.org"]
    assert users.contains("bob@example.org")
    assert users.contains("BOB@example.ORG")
    assert not users.contains("bob+tag@example.org")  # a username, not a recipient
    assert users.contains(users.username_for("Bob+tag@Example.org"))
    assert not users.contains("carol@example.org")
    assert users.remove("BOB@example.org") is True
    assert users.remove("bob@example.org") is False
    assert not users.contains("bob@example.org")
    assert users.list() == ["alice@example.org"]


def test_add_refuses_duplicates_bad_names_and_empty_passwords(users):
    users.add("bob@example.org", "pw")
    with pytest.raises(UserExistsError, match="already exists"):
        users.add("BOB@example.org", "other")
    with pytest.raises(ValueError, match="full address"):
        users.add("bob", "pw")
    with pytest.raises(ValueError, match="empty"):
        users.add("carol@example.org", "")
    assert users.list() == ["bob@example.org"]


def test_add_requires_a_local_domain_when_domains_given(db):
    domains = DomainStore(db)
    domains.add("local.test")
    repo = UsersRepository(db, domains=domains)
    try:
        repo.add("bob@Local.Test", "pw")
        with pytest.raises(ValueError, match="not a local domain"):
            repo.add("bob@elsewhere.test", "pw")
        assert repo.list() == ["bob@local.test"]
    finally:
        repo.close()
        domains.close()


def test_verify_right_wrong_unknown(users):
    users.add("bob@example.org", "correct horse")
    assert users.verify("bob@example.org", "correct horse")
    assert users.verify("Bob@Example.ORG", "correct horse")
    assert users.verify("bob@example.org", "correct horse".encode())
    assert not users.verify("bob@example.org", "Correct horse")
    assert not users.verify("bob@example.org", "")
    assert not users.verify("nobody@example.org", "correct horse")
    assert not users.verify("bob", "correct horse")


def test_set_password(users):
    users.add("bob@example.org", "old")
    assert users.set_password("BOB@example.org", "new") is True
    assert not users.verify("bob@example.org", "old")
    assert users.verify("bob@example.org", "new")
    assert users.set_password("nobody@example.org", "x") is False
    with pytest.raises(ValueError):
        users.set_password("bob@example.org", "")
    assert users.verify("bob@example.org", "new")


def test_no_plain_text_password_in_the_database_files(users, db):
    password = "Zebra-Unique-Passphrase-7391"
    users.add("bob@example.org", password)
    users.set_password("bob@example.org", password + "-2")
    users.close()
    needles = [password.encode(), (password + "-2").encode(), password.encode("utf-16-le")]
    files = [p for p in (db, db + "-wal", db + "-shm") if os.path.exists(p)]
    assert files
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        for needle in needles:
            assert needle not in raw, path
    assert PHC.match(_stored_hash(db, "bob@example.org"))


def test_weak_hash_is_upgraded_after_successful_verify(users, db):
    users.add("bob@example.org", "pw")
    conn = store_sqlite.connect(db)
    weak = hash_password("pw", ln=10)
    conn.execute("UPDATE users SET password_hash = ? WHERE username = ?", (weak, "bob@example.org"))
    conn.close()
    assert not users.verify("bob@example.org", "wrong")
    assert _stored_hash(db, "bob@example.org") == weak  # only a correct password re-hashes
    assert users.verify("bob@example.org", "pw")
    upgraded = _stored_hash(db, "bob@example.org")
    assert upgraded != weak and not needs_rehash(upgraded)
    assert users.verify("bob@example.org", "pw")


def test_unusable_stored_hash_fails_closed(users, db):
    users.add("bob@example.org", "pw")
    conn = store_sqlite.connect(db)
    conn.execute("UPDATE users SET password_hash = 'pw' WHERE username = 'bob@example.org'")
    conn.close()
    assert not users.verify("bob@example.org", "pw")


def test_refresh_across_two_instances(db):
    a = UsersRepository(db, refresh_interval=0)
    b = UsersRepository(db, refresh_interval=0)
    try:
        assert not b.contains("bob@example.org")
        a.add("bob@example.org", "pw")
        assert b.contains("bob@example.org")
        assert b.verify("bob@example.org", "pw")
        b.set_password("bob@example.org", "pw2")
        assert a.verify("bob@example.org", "pw2")
        b.remove("bob@example.org")
        assert not a.contains("bob@example.org")
    finally:
        a.close()
        b.close()


def test_refresh_interval_bounds_staleness(db):
    a = UsersRepository(db)
    b = UsersRepository(db, refresh_interval=0.2)
    try:
        assert not b.contains("bob@example.org")
        a.add("bob@example.org", "pw")
        deadline = time.monotonic() + 2
        while not b.contains("bob@example.org"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        a.close()
        b.close()


def test_schema_version_recorded(users, db):
    conn = store_sqlite.connect(db)
    try:
        assert store_sqlite.schema_version(conn, "users") == 1
    finally:
        conn.close()


def test_verify_cost_and_unknown_user_timing(users):
    """Tens of milliseconds per check, and about the same for an unknown user."""
    users.add("bob@example.org", "pw")

    def timed(name: str) -> float:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            users.verify(name, "wrong")
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    users.verify("bob@example.org", "warm-up")
    known, unknown = timed("bob@example.org"), timed("nobody@example.org")
    assert 0.005 < known < 1.0, known
    assert 0.5 < unknown / known < 2.0, (known, unknown)


def test_verify_runs_in_threads(users):
    users.add("bob@example.org", "pw")
    results = []
    threads = [threading.Thread(target=lambda: results.append(users.verify("bob@example.org", "pw")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
