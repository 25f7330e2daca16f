"""The recipient rewrite table: aliases, forwards, domain aliases, loops, identities."""

from __future__ import annotations

import pytest

from chainmail.store import sqlite as store_sqlite
from chainmail.store.rrt import Mapping, RecipientRewriteTable, RewriteLoopError


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "var" / "chainmail.db")


@pytest.fixture
def rrt(db):
    table = RecipientRewriteTable(db, refresh_interval=0)
    yield table
    table.close()


def _insert(db, *rows):
    """Write rows directly, bypassing the loop check (as a concurrent or older writer might)."""
    conn = store_sqlite.connect(db)
    try:
        conn.executemany("INSERT INTO rrt_mappings (kind, source, target) VALUES (?, ?, ?)", rows)
    finally:
        conn.close()


# -- adding, listing, removing ----------------------------------------------------------


def test_add_list_remove(rrt):
    assert rrt.list() == []
    assert rrt.add_alias("Sales@Example.org", "Bob@Example.org") is True
    assert rrt.add_alias("sales@example.org", "bob@example.org") is False
    assert rrt.add_forward("team@example.org", "a@example.org") is True
    assert rrt.add_forward("team@example.org", "b@remote.test") is True
    assert rrt.add_domain_alias("Alias.Example.", "example.org") is True
    assert rrt.list() == [
        Mapping("alias", "sales@example.org", "bob@example.org"),
        Mapping("domain", "alias.example", "example.org"),
        Mapping("forward", "team@example.org", "a@example.org"),
        Mapping("forward", "team@example.org", "b@remote.test"),
    ]
    assert rrt.remove_forward("team@example.org", "b@remote.test") is True
    assert rrt.remove_forward("team@example.org", "b@remote.test") is False
    assert rrt.remove_alias("SALES@example.org", "bob@example.org") is True
    assert rrt.remove_alias("sales@example.org", "bob@example.org") is False
    assert rrt.remove_domain_alias("alias.example") is True
    assert rrt.remove_domain_alias("alias.example") is False
    assert rrt.remove_alias("not an address", "x") is False
    assert rrt.list() == [Mapping("forward", "team@example.org", "a@example.org")]


@pytest.mark.parametrize("call", [
    lambda t: t.add_alias("sales", "bob@example.org"),
    lambda t: t.add_alias("sales@example.org", "bob@exa mple.org"),
    lambda t: t.add_alias("bob@example.org", "BOB@example.org"),
    lambda t: t.add_forward("@example.org", "bob@example.org"),
    lambda t: t.add_domain_alias("alias..example", "example.org"),
    lambda t: t.add_domain_alias("example.org", "Example.org"),
])
def test_invalid_mappings_are_refused(rrt, call):
    with pytest.raises(ValueError):
        call(rrt)
    assert rrt.list() == []


def test_one_target_per_alias_and_per_alias_domain(rrt):
    rrt.add_alias("sales@example.org", "bob@example.org")
    with pytest.raises(ValueError, match="already an alias of bob@example.org"):
        rrt.add_alias("sales@example.org", "alice@example.org")
    rrt.add_domain_alias("alias.example", "example.org")
    with pytest.raises(ValueError, match="already an alias of example.org"):
        rrt.add_domain_alias("alias.example", "other.example")
    # a forward may have several targets, and may sit next to an alias
    rrt.add_forward("sales@example.org", "archive@example.org")
    assert rrt.resolve("sales@example.org") == ["bob@example.org", "archive@example.org"]


# -- resolve ----------------------------------------------------------------------------


def test_resolve_without_mapping_is_the_address(rrt):
    assert rrt.resolve("Bob@Example.org") == ["bob@example.org"]
    assert not rrt.has_mapping("bob@example.org")


def test_alias_chain(rrt):
    rrt.add_alias("a@example.org", "b@example.org")
    rrt.add_alias("b@example.org", "c@example.org")
    rrt.add_alias("c@example.org", "user@example.org")
    assert rrt.resolve("A@EXAMPLE.org") == ["user@example.org"]
    assert rrt.resolve("b@example.org") == ["user@example.org"]


def test_forward_to_several_targets_recursively_and_deduplicated(rrt):
    for target in ("a@example.org", "b@remote.test", "sub@example.org"):
        rrt.add_forward("team@example.org", target)
    rrt.add_forward("sub@example.org", "c@example.org")
    rrt.add_forward("sub@example.org", "a@example.org")
    rrt.add_alias("c@example.org", "carol@example.org")
    assert rrt.resolve("team@example.org") == [
        "a@example.org", "b@remote.test", "carol@example.org"]


def test_forward_to_itself_keeps_a_copy(rrt):
    rrt.add_forward("bob@example.org", "bob@example.org")
    rrt.add_forward("bob@example.org", "bob@remote.test")
    assert sorted(rrt.resolve("bob@example.org")) == ["bob@example.org", "bob@remote.test"]


def test_detail_falls_back_to_the_plain_address(rrt):
    rrt.add_forward("team@example.org", "a@example.org")
    rrt.add_forward("team+urgent@example.org", "boss@example.org")
    assert rrt.resolve("team+news@example.org") == ["a@example.org"]
    assert rrt.resolve("team+urgent@example.org") == ["boss@example.org"]
    assert rrt.has_mapping("Team+x@Example.org")
    assert rrt.resolve("bob+x@example.org") == ["bob+x@example.org"]


def test_domain_alias(rrt):
    rrt.add_domain_alias("alias.example", "example.org")
    assert rrt.has_mapping("anyone@alias.example")
    assert rrt.has_mapping("Anyone@ALIAS.example")
    assert not rrt.has_mapping("anyone@example.org")
    assert rrt.resolve("Bob@Alias.Example") == ["bob@example.org"]
    # aliases in the target domain apply after the domain rewrite
    rrt.add_alias("sales@example.org", "bob@example.org")
    assert rrt.resolve("sales@alias.example") == ["bob@example.org"]
    # an address mapping of the alias domain takes precedence
    rrt.add_forward("special@alias.example", "x@remote.test")
    assert rrt.resolve("special@alias.example") == ["x@remote.test"]


def test_domain_alias_chain_and_canonical_domain(rrt):
    rrt.add_domain_alias("a.example", "b.example")
    rrt.add_domain_alias("b.example", "real.example")
    assert rrt.resolve("bob@a.example") == ["bob@real.example"]
    assert rrt.canonical_domain("A.Example.") == "real.example"
    assert rrt.canonical_domain("real.example") == "real.example"
    assert rrt.canonical_domain("other.example") == "other.example"


def test_adding_a_loop_is_refused_naming_it(rrt):
    rrt.add_alias("a@example.org", "b@example.org")
    with pytest.raises(ValueError, match="b@example.org -> a@example.org -> b@example.org"):
        rrt.add_alias("b@example.org", "a@example.org")
    rrt.add_forward("list@example.org", "x@example.org")
    rrt.add_forward("x@example.org", "y@example.org")
    with pytest.raises(ValueError, match="loop"):
        rrt.add_forward("y@example.org", "list@example.org")
    rrt.add_domain_alias("one.example", "two.example")
    with pytest.raises(ValueError, match="two.example -> one.example -> two.example"):
        rrt.add_domain_alias("two.example", "one.example")
    assert len(rrt.list()) == 4


def test_loop_through_a_domain_alias_is_refused(rrt):
    rrt.add_alias("bob@b.example", "bob@a.example")
    with pytest.raises(ValueError, match="loop"):
        rrt.add_domain_alias("a.example", "b.example")
    rrt.add_domain_alias("c.example", "d.example")
    with pytest.raises(ValueError, match="loop"):
        rrt.add_forward("x@d.example", "x@c.example")


def test_long_loops_are_refused_too(rrt):
    n = 30  # longer than max_depth: the add-time check is not depth-bound
    for i in range(n - 1):
        rrt.add_forward(f"u{i}@example.org", f"u{i + 1}@example.org")
    with pytest.raises(ValueError, match="loop"):
        rrt.add_forward(f"u{n - 1}@example.org", "u0@example.org")


def test_resolve_raises_on_existing_loop(rrt, db):
    _insert(db, ("forward", "a@example.org", "b@example.org"),
            ("forward", "b@example.org", "c@example.org"),
            ("forward", "c@example.org", "a@example.org"))
    with pytest.raises(RewriteLoopError) as info:
        rrt.resolve("a@example.org")
    err = info.value
    assert err.loop
    assert err.address == "a@example.org"
    assert err.chain == ["a@example.org", "b@example.org", "c@example.org", "a@example.org"]
    assert rrt.has_mapping("a@example.org")  # mappingExists: a looping mapping counts


def test_domain_loop_raises_in_canonical_domain(rrt, db):
    _insert(db, ("domain", "one.example", "two.example"), ("domain", "two.example", "one.example"))
    with pytest.raises(RewriteLoopError):
        rrt.canonical_domain("one.example")
    with pytest.raises(RewriteLoopError):
        rrt.resolve("x@one.example")


def test_depth_limit(db):
    table = RecipientRewriteTable(db, max_depth=3, refresh_interval=0)
    try:
        for i in range(3):
            table.add_alias(f"a{i}@example.org", f"a{i + 1}@example.org")
        assert table.resolve("a0@example.org") == ["a3@example.org"]  # 3 steps: allowed
        table.add_alias("a3@example.org", "a4@example.org")
        with pytest.raises(RewriteLoopError) as info:
            table.resolve("a0@example.org")
        assert not info.value.loop
        assert info.value.chain[0] == "a0@example.org"
        assert "too deep" in str(info.value)
        assert table.resolve("a1@example.org") == ["a4@example.org"]
        for i in range(3):
            table.add_domain_alias(f"d{i}.example", f"d{i + 1}.example")
        assert table.canonical_domain("d0.example") == "d3.example"
        table.add_domain_alias("d3.example", "d4.example")
        with pytest.raises(RewriteLoopError):
            table.canonical_domain("d0.example")
    finally:
        table.close()


def test_default_depth_is_ten(rrt):
    for i in range(11):
        rrt.add_alias(f"a{i}@example.org", f"a{i + 1}@example.org")
    assert rrt.resolve("a1@example.org") == ["a11@example.org"]
    with pytest.raises(RewriteLoopError):
        rrt.resolve("a0@example.org")


# -- identities -------------------------------------------------------------------------


def test_identities_of(rrt):
    rrt.add_alias("sales@example.org", "bob@example.org")
    rrt.add_alias("info@example.org", "sales@example.org")      # recursive
    rrt.add_alias("bob@other.example", "bob@example.org")       # alias in another domain
    rrt.add_forward("team@example.org", "bob@example.org")      # group: no identity
    rrt.add_forward("fwd@example.org", "bob@example.org")
    rrt.add_alias("carol-alias@example.org", "carol@example.org")
    rrt.add_domain_alias("alias.example", "example.org")
    rrt.add_domain_alias("alias2.example", "alias.example")     # domain alias of a domain alias
    ids = rrt.identities_of("Bob@Example.org")
    assert ids == {
        "bob@example.org", "sales@example.org", "info@example.org", "bob@other.example",
        "bob@alias.example", "sales@alias.example", "info@alias.example",
        "bob@alias2.example", "sales@alias2.example", "info@alias2.example",
    }
    assert "team@example.org" not in ids and "fwd@example.org" not in ids
    assert rrt.identities_of("nobody@example.org") == {
        "nobody@example.org", "nobody@alias.example", "nobody@alias2.example"}
    assert rrt.identities_of("x@unrelated.example") == {"x@unrelated.example"}


def test_identities_through_an_alias_written_in_the_alias_domain(rrt):
    rrt.add_domain_alias("alias.example", "example.org")
    rrt.add_alias("boss@corp.example", "bob@alias.example")
    assert "boss@corp.example" in rrt.identities_of("bob@example.org")


def test_identities_bounded_by_max_depth(db):
    table = RecipientRewriteTable(db, max_depth=2, refresh_interval=0)
    try:
        table.add_alias("a1@example.org", "user@example.org")
        table.add_alias("a2@example.org", "a1@example.org")
        table.add_alias("a3@example.org", "a2@example.org")
        assert table.identities_of("user@example.org") == {
            "user@example.org", "a1@example.org", "a2@example.org"}
    finally:
        table.close()


def test_identities_follow_changes(rrt):
    assert rrt.identities_of("bob@example.org") == {"bob@example.org"}
    rrt.add_alias("sales@example.org", "bob@example.org")
    assert rrt.identities_of("bob@example.org") == {"bob@example.org", "sales@example.org"}
    rrt.remove_alias("sales@example.org", "bob@example.org")
    assert rrt.identities_of("bob@example.org") == {"bob@example.org"}


# -- sharing ----------------------------------------------------------------------------


def test_refresh_across_two_instances(db):
    a = RecipientRewriteTable(db, refresh_interval=0)
    b = RecipientRewriteTable(db, refresh_interval=0)
    try:
        assert not b.has_mapping("sales@example.org")
        a.add_alias("sales@example.org", "bob@example.org")
        assert b.has_mapping("sales@example.org")
        assert b.resolve("sales@example.org") == ["bob@example.org"]
        assert b.identities_of("bob@example.org") == {"bob@example.org", "sales@example.org"}
        # b's loop check sees a's rows even before b's cache refreshed
        with pytest.raises(ValueError, match="loop"):
            b.add_alias("bob@example.org", "sales@example.org")
        b.add_domain_alias("alias.example", "example.org")
        assert a.resolve("sales@alias.example") == ["bob@example.org"]
        a.remove_alias("sales@example.org", "bob@example.org")
        assert not b.has_mapping("sales@example.org")
    finally:
        a.close()
        b.close()


def test_schema_shares_the_database(db):
    from chainmail.store.domains import DomainStore
    from chainmail.store.users import UsersRepository
    stores = [DomainStore(db), UsersRepository(db), RecipientRewriteTable(db)]
    try:
        conn = store_sqlite.connect(db)
        versions = dict(conn.execute("SELECT component, version FROM schema_version"))
        conn.close()
        assert versions == {"domains": 1, "users": 1, "rrt": 1}
    finally:
        for s in stores:
            s.close()
