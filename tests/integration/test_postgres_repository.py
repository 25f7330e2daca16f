"""Mail repositories on a real PostgreSQL (the server of ``test_postgres_stores``): the
``postgres://`` and ``cassandra://`` repositories of nodes sharing one database, and
``chainmail run``, the command line and WebAdmin using them."""

from __future__ import annotations

import logging
import smtplib
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from chainmail.mailet.api import Mail
from chainmail.mailet.repository import DirectoryRepository, RepositoryStore
from chainmail.store.postgres.migrate import available
from chainmail.mailet.postgres_repository import PostgresMailRepository, canonical_url
from tests.conftest import wait_for
from tests.integration.test_postgres_stores import _cli, _webadmin, postgres, properties

__all__ = ["postgres"]   # the session fixture, shared with test_postgres_stores

psycopg = pytest.importorskip("psycopg", reason="psycopg is a dependency of chainmail")

#: every byte value, a NUL and a bare CR included: the content must come back byte for byte
CONTENT = (b"Subject: parked\r\nFrom: alice@remote.example\r\n\r\n"
           + bytes(range(256)) + b"\r\n\x00\r\rend\r\n")


def _node(base: Path, postgres_server, dbname: str | None) -> tuple[str, str]:
    """(conf, var) of one node; its postgres.properties names ``dbname`` (none if None)."""
    conf, var = base / "conf", base / "var"
    conf.mkdir(parents=True)
    var.mkdir()
    if dbname is not None:
        (conf / "postgres.properties").write_text(properties(postgres_server, dbname))
    return str(conf), str(var)


@pytest.fixture
def dbname(postgres) -> str:
    return postgres.new_database()


@pytest.fixture
def node(tmp_path, postgres, dbname):
    conf, var = _node(tmp_path / "a", postgres, dbname)
    store = RepositoryStore(var, conf)
    yield store
    store.close()


def _mail(n: int = 0) -> Mail:
    return Mail(f"mail{n}", "alice@remote.example", ["bob@local.test", "carol@local.test"],
                CONTENT, state="error", error_message="a mailet failed: \x00 and all",
                attributes={"remote_addr": "192.0.2.1", "nested": {"list": [1, "two", None]},
                            "mailRepository-reprocessing": 2},
                mail_params={"BODY": "8BITMIME"},
                rcpt_params={"bob@local.test": {"NOTIFY": "FAILURE"}},
                queued_at=1700000000.5, error_count=3)


def _connections(postgres, dbname: str) -> int:
    return postgres.admin("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                          f"'{dbname}' AND application_name = 'chainmail'")[0][0]


def test_store_list_retrieve_remove_round_trip(node, postgres, dbname):
    repo = node.get("postgres://var/mail/parked/")
    assert isinstance(repo, PostgresMailRepository) and repo.path is None
    assert repo.url == "postgres://var/mail/parked/" and len(repo) == 0
    sent = _mail()
    key = repo.store(sent)
    # committed when store returns: another connection sees it at once
    assert postgres.admin("SELECT url, mail_key, size FROM mail_repository_mails", dbname) == \
        [("postgres://var/mail/parked/", key, len(CONTENT))]
    [info] = repo.list()
    assert (info.key, info.name, info.sender, info.recipients, info.state) == (
        key, "mail0", "alice@remote.example", ("bob@local.test", "carol@local.test"), "error")
    assert info.error_message == "a mailet failed: \ufffd and all"   # text holds no NUL
    assert info.size == len(CONTENT) and info.attributes == sent.attributes
    assert repo.info(key) == info and info.stored_at > 0
    back = repo.retrieve(key)
    assert back.content == CONTENT
    assert (back.name, back.sender, back.recipients, back.state) == (
        "mail0", "alice@remote.example", ["bob@local.test", "carol@local.test"], "error")
    assert back.attributes == sent.attributes and back.mail_params == {"BODY": "8BITMIME"}
    assert back.rcpt_params == {"bob@local.test": {"NOTIFY": "FAILURE"}}
    assert (back.queued_at, back.error_count) == (1700000000.5, 3)
    # keys sort by storing time
    more = [repo.store(_mail(n)) for n in range(1, 4)]
    assert repo.keys() == sorted([key, *more]) == [m.key for m in repo.list()]
    assert len(repo) == 4
    # the same repository under James's distributed app's scheme, without the slash
    assert node.get("cassandra://var/mail/parked") is repo
    assert repo.remove(key) and not repo.remove(key) and not repo.remove("nonsense")
    with pytest.raises(KeyError):
        repo.retrieve(key)
    with pytest.raises(KeyError):
        repo.info(key)
    for each in more:
        assert repo.remove(each)
    # emptied, it is still a repository (as a directory stays)
    assert repo.keys() == [] and [r.url for r in node.list()] == ["postgres://var/mail/parked/"]
    assert node.find("parked") is repo and node.name_of(repo) == "parked"
    assert node.find("nothing") is None and node.find("postgres://var/mail/nothing/") is None


def test_file_repositories_stay_directories_with_postgresql(node, postgres, dbname):
    repo = node.get("file://var/mail/error/")
    assert isinstance(repo, DirectoryRepository)
    node.get("postgres://var/mail/parked/").store(_mail())
    key = repo.store(_mail())
    assert (Path(node.var_dir) / "mail" / "error" / key).is_file()
    assert postgres.admin("SELECT url FROM mail_repository_mails", dbname) == \
        [("postgres://var/mail/parked/",)]
    assert [(node.name_of(r), len(r)) for r in node.list()] == [("error", 1), ("parked", 1)]
    assert not (Path(node.var_dir) / "mail" / "parked").exists()
    assert isinstance(node.find("error"), DirectoryRepository)


def test_two_nodes_see_the_same_mails(tmp_path, postgres, dbname):
    conf_a, var_a = _node(tmp_path / "a", postgres, dbname)
    conf_b, var_b = _node(tmp_path / "b", postgres, dbname)
    a, b = RepositoryStore(var_a, conf_a), RepositoryStore(var_b, conf_b)
    try:
        keys: list[str] = []

        def store(n: int) -> None:
            keys.append(a.get("postgres://var/mail/error/").store(_mail(n)))
        threads = [threading.Thread(target=store, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        on_b = b.find("error")
        assert on_b is not None and on_b.url == "postgres://var/mail/error/"
        assert on_b.keys() == sorted(keys) and len(set(keys)) == 8
        assert on_b.retrieve(keys[0]).content == CONTENT
        assert on_b.remove(keys[0])
        assert keys[0] not in a.get("postgres://var/mail/error/").keys()
        assert len(b.get("cassandra://var/mail/error/")) == 7
    finally:
        a.close()
        b.close()


def test_the_pool_opens_on_first_use_and_closes_with_the_store(tmp_path, postgres, dbname):
    conf, var = _node(tmp_path / "a", postgres, dbname)
    store = RepositoryStore(var, conf)
    repo = store.get("postgres://var/mail/x/")   # configuring a mailet connects nothing
    assert _connections(postgres, dbname) == 0
    repo.store(_mail())
    assert _connections(postgres, dbname) >= 1
    store.close()
    wait_for(lambda: _connections(postgres, dbname) == 0, what="the pool closed")
    with pytest.raises(RuntimeError, match="closed"):
        repo.keys()


def test_migration_0003_creates_the_tables(node, postgres, dbname):
    node.list()   # opens the pool: the schema is brought up to date
    versions = [v for (v,) in postgres.admin(
        "SELECT version FROM schema_migrations ORDER BY version", dbname)]
    assert versions == [m.version for m in available()] and 3 in versions
    tables = {r[0] for r in postgres.admin(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", dbname)}
    assert {"mail_repositories", "mail_repository_mails"} <= tables


def test_without_postgres_properties_a_postgres_url_is_a_directory(tmp_path, postgres, caplog):
    conf, var = _node(tmp_path / "a", postgres, None)
    store = RepositoryStore(var, conf)
    with caplog.at_level(logging.WARNING, logger="chainmail.mailet.repository"):
        repo = store.get("postgres://var/mail/nopg/")
        assert store.get("postgres://var/mail/nopg/") is repo
        assert isinstance(repo, DirectoryRepository) and repo.path == f"{var}/mail/nopg"
        assert isinstance(store.get("cassandra://var/mail/cass/"), DirectoryRepository)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned   # once, and not for cassandra://
    assert "postgres://var/mail/nopg/" in warned[0] and "postgres.properties" in warned[0]
    repo.store(_mail())
    assert store.find("nopg") is not None and store.postgres is None


def test_canonical_urls():
    assert canonical_url("cassandra://var/mail/error") == "postgres://var/mail/error/"
    assert canonical_url("postgres://var//mail/error//") == "postgres://var/mail/error/"
    assert canonical_url("postgres:///srv/x") == "postgres:///srv/x/"
    for bad in ("postgres://", "postgres:///", "postgres://../x"):
        with pytest.raises(ValueError):
            canonical_url(bad)


# -- chainmail run, the command line and WebAdmin -------------------------------------------

CONTAINER = """<mailetcontainer>
  <context><postmaster>postmaster</postmaster></context>
  <spooler><threads>2</threads></spooler>
  <processors>
    <processor state="root">
      <mailet match="All" class="ToRepository">
        <repositoryPath>postgres://var/mail/held/</repositoryPath>
      </mailet>
    </processor>
    <processor state="released">
      <mailet match="All" class="ToRepository">
        <repositoryPath>cassandra://var/mail/released</repositoryPath>
      </mailet>
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/error/</repositoryPath>
      </mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


def _listed(server, name: str) -> int | None:
    """The mail count ``chainmail repository list`` gives repository ``name``."""
    done = _cli(server, "repository", "list")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[1])
    return None


def test_two_nodes_park_list_and_reprocess_through_postgresql(chainmail_factory, postgres):
    dbname = postgres.new_database()
    files = {"postgres.properties": properties(postgres, dbname),
             "mailetcontainer.xml": CONTAINER, "webadmin.properties": "enabled=true\nport=0\n"}
    a, b = (chainmail_factory(files=files) for _ in range(2))
    body = (b"From: alice@remote.example\r\nTo: bob@local.test\r\nSubject: parked\r\n"
            b"X-Long: " + b"x" * 900 + b"\r\n\r\nline one\r\n.leading dot\r\n")
    with smtplib.SMTP(a.host, a.port, local_hostname="client.test", timeout=30) as client:
        assert client.sendmail("alice@remote.example", ["bob@local.test"], body) == {}
    # stored by node a, listed by node b
    wait_for(lambda: _listed(b, "held") == 1, timeout=20, what="the mail in held, seen from b")
    listing = _cli(b, "repository", "list").stdout
    assert "postgres://var/mail/held/" in listing
    shown = _cli(b, "repository", "show", "held")
    assert shown.returncode == 0 and "<alice@remote.example> -> <bob@local.test>" in shown.stdout
    [(key, content)] = postgres.admin(
        "SELECT mail_key, content FROM mail_repository_mails WHERE url = "
        "'postgres://var/mail/held/'", dbname)
    assert key in shown.stdout
    assert bytes(content).endswith(body)   # after the Received field
    assert not (a.var / "mail" / "held").exists()
    # WebAdmin of node a: James's path of the repository, its mails, the raw message
    with _webadmin(a) as admin:
        assert {"repository": "var/mail/held/", "path": "var%2Fmail%2Fheld%2F"} in \
            admin.get("/mailRepositories").json()
        base = "/mailRepositories/" + quote("var/mail/held/", safe="")
        assert admin.get(base).json()["size"] == 1
        assert admin.get(base + "/mails").json() == [key]
        raw = admin.get(f"{base}/mails/{key}", headers={"Accept": "message/rfc822"})
        assert raw.status_code == 200 and raw.content == bytes(content)
    # reprocessed from node b: b's spool, b's container, the released repository
    out = _cli(b, "repository", "reprocess", "held", key, "--state", "released")
    assert out.returncode == 0 and f"{key} -> spool" in out.stdout, out.stderr
    wait_for(lambda: _listed(a, "released") == 1, timeout=20, what="the reprocessed mail")
    assert _listed(a, "held") == 0
    [(again, attributes)] = postgres.admin(
        "SELECT content, attributes FROM mail_repository_mails WHERE url = "
        "'postgres://var/mail/released/'", dbname)
    assert bytes(again) == bytes(content)
    assert attributes["mailRepository-reprocessing"] == 1
    assert not (b.var / "mail" / "released").exists()
