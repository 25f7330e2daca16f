"""Mail repositories: URL mapping, durable store, list, retrieve, remove."""

from __future__ import annotations

import os

import pytest

from chainmail.mailet.repository import RepositoryStore, repository_path

from .helpers import mail


def test_urls_map_into_the_state_directory(tmp_path):
    var = str(tmp_path)
    assert repository_path("file://var/mail/error/", var) == f"{var}/mail/error"
    assert repository_path("memory://var/mail/relay-denied", var) == f"{var}/mail/relay-denied"
    assert repository_path("file:///srv/repo/", var) == "/srv/repo"
    with pytest.raises(ValueError):
        repository_path("file://../../etc", var)


def test_store_list_retrieve_remove(tmp_path):
    store = RepositoryStore(str(tmp_path))
    repo = store.get("file://var/mail/error/")
    m = mail(["a@x.test"], attributes={"k": "v"}, error_message="boom", state="error")
    key = repo.store(m)
    assert os.listdir(tmp_path / "mail" / "error" / ".tmp") == []
    [info] = repo.list()
    assert (info.key, info.sender, info.recipients, info.error_message, info.state) == (
        key, "alice@remote.example", ("a@x.test",), "boom", "error")
    back = repo.retrieve(key)
    assert back.content == m.content and back.attributes == {"k": "v"}
    assert [store.name_of(r) for r in store.list()] == ["error"]
    assert store.find("error").path == repo.path and store.find("nothing") is None
    assert repo.remove(key) and repo.keys() == [] and not repo.remove(key)
