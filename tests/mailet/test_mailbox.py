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
