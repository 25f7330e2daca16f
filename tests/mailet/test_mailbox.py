"""Maildir delivery: durable, unique, readable by Python's mailbox.Maildir; quotas."""

from __future__ import annotations

import mailbox
import os

import pytest

from chainmail.store.mailbox import MaildirStore, QuotaExceededError, maildir_name_for

MSG = b"From: a@b.test\r\nSubject: one\r\n\r\nhello\r\n"
LF = MSG.replace(b"\r\n", b"\n")


def test_deliver_writes_into_new_and_python_reads_it(tmp_path):
    store = MaildirStore(tmp_path / "mail", tmp_path / "db.sqlite")
    k1 = store.deliver("Bob@Local.Test", MSG)
    k2 = store.deliver("bob@local.test", MSG.replace(b"one", b"two"))
    path = tmp_path / "mail" / "bob@local.test"
    assert sorted(os.listdir(path)) == ["cur", "new", "tmp"]
    assert sorted(os.listdir(path / "new")) == sorted([k1, k2]) and k1 != k2
    assert os.listdir(path / "tmp") == []
    box = mailbox.Maildir(str(path), factory=None, create=False)
    assert sorted(m["Subject"] for m in box) == ["one", "two"]
    assert (path / "new" / k1).read_bytes() == LF
    assert f",S={len(LF)}" in k1
    assert store.usage("bob@local.test") == 2 * len(LF)
    store.close()


def test_quota(tmp_path):
    store = MaildirStore(tmp_path / "mail", tmp_path / "db.sqlite")
    size = len(LF)
    store.set_quota("bob@local.test", size + 5)
    assert store.get_quota("BOB@local.test") == size + 5
    store.deliver("bob@local.test", MSG)
    with pytest.raises(QuotaExceededError, match="552 5.2.2 Over quota"):
        store.deliver("bob@local.test", MSG)
    assert len(store.list("bob@local.test")) == 1
    store.set_quota("bob@local.test", None)
    store.deliver("bob@local.test", MSG)
    assert store.get_quota("bob@local.test") is None
    store.close()


def test_directory_names_cannot_escape():
    assert maildir_name_for("a/b@x.test") == "a%2Fb@x.test"
    assert maildir_name_for(".hidden@x.test") == "%2Ehidden@x.test"
    assert maildir_name_for("..") == "%2E."


@pytest.mark.parametrize("by_filesystem", [True, False])
def test_a_group_delivers_each_item_or_says_why_not(tmp_path, by_filesystem):
    """One group: fifty mailboxes sharing one content with their own header lines, one over
    quota; each item gets its key or its own error, and no tmp/ file is left."""
    store = MaildirStore(tmp_path / "mail", tmp_path / "db.sqlite")
    store.root_syncs = by_filesystem and store.root_syncs
    store.set_quota("full@local.test", 10)
    users = [f"u{i}@local.test" for i in range(50)] + ["full@local.test"]
    items = [(u, MSG, f"Delivered-To: {u}\r\n".encode()) for u in users]
    results = store.deliver_many(items)
    assert isinstance(results[-1], QuotaExceededError)
    for user, key in zip(users[:-1], results[:-1]):
        assert isinstance(key, str)
        path = tmp_path / "mail" / user
        assert (path / "new" / key).read_bytes() == f"Delivered-To: {user}\n".encode() + LF
        assert os.listdir(path / "tmp") == []
    assert os.listdir(tmp_path / "mail" / "full@local.test" / "tmp") == []
    store.close()


def test_quota_counts_deliveries_still_in_tmp(tmp_path):
    """The check counts what is being written (another thread or process): a delivery in
    tmp/ takes its place in the quota until it is renamed or stale."""
    store = MaildirStore(tmp_path / "mail", tmp_path / "db.sqlite")
    store.set_quota("bob@local.test", 2 * len(LF))
    store.deliver("bob@local.test", MSG)
    pending = tmp_path / "mail" / "bob@local.test" / "tmp" / f"1.M1P1Q1R0.x,S={len(LF)}"
    pending.write_bytes(LF)
    with pytest.raises(QuotaExceededError):
        store.deliver("bob@local.test", MSG)
    old = pending.stat().st_mtime - 2 * 3600
    os.utime(pending, (old, old))                      # a crashed delivery: not counted
    store.deliver("bob@local.test", MSG)
    assert len(store.list("bob@local.test")) == 2
    store.close()


async def test_concurrent_callers_share_groups_and_the_quota_stays_exact(tmp_path):
    import trio
    store = MaildirStore(tmp_path / "mail", tmp_path / "db.sqlite")
    store.set_quota("bob@local.test", 7 * len(LF))
    calls = []
    real = store.deliver_many
    store.deliver_many = lambda items: calls.append(len(items)) or real(items)
    results = []

    async def one():
        results.extend(await store.adeliver_many([("bob@local.test", MSG)]))
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert sum(isinstance(r, str) for r in results) == 7
    assert sum(isinstance(r, QuotaExceededError) for r in results) == 13
    assert len(calls) < 20 and sum(calls) == 20        # grouped
    assert len(store.list("bob@local.test")) == 7
    store.close()
