"""UTF-8 usernames (RFC 6531): one user and one Maildir whether ``ü`` is written composed
(U+00FC) or decomposed (u + U+0308)."""

from __future__ import annotations

import os
import unicodedata

import pytest

from chainmail.store.mailbox import MaildirStore, maildir_name_for, user_key
from chainmail.store.users import UserExistsError, UsersRepository, normalize_username, username_for

COMPOSED = "j\u00fcrgen"             # jürgen, ü as one code point
DECOMPOSED = "ju\u0308rgen"          # jürgen, u + combining diaeresis


def test_the_two_spellings_differ_as_strings():
    assert COMPOSED != DECOMPOSED
    assert unicodedata.normalize("NFC", DECOMPOSED) == COMPOSED


@pytest.fixture
def users(tmp_path):
    repo = UsersRepository(str(tmp_path / "chainmail.db"), refresh_interval=0)
    yield repo
    repo.close()


@pytest.mark.parametrize("local", [COMPOSED, DECOMPOSED, "J\u00dcRGEN", "JU\u0308RGEN"])
def test_usernames_are_stored_in_nfc(local):
    assert normalize_username(f"{local}@Local.Test") == f"{COMPOSED}@local.test"
    assert username_for(f"{local}+tag@Local.Test") == f"{COMPOSED}@local.test"


def test_a_user_added_in_one_form_is_found_in_the_other(users):
    users.add(f"{DECOMPOSED}@local.test", "a long password")
    assert users.list() == [f"{COMPOSED}@local.test"]
    for local in (COMPOSED, DECOMPOSED):
        assert users.contains(f"{local}@local.test")
        assert users.contains(users.username_for(f"{local}+x@local.test"))
    assert users.verify(f"{COMPOSED}@local.test", "a long password")
    assert users.verify(f"{DECOMPOSED}@local.test", "a long password")
    assert not users.verify(f"{DECOMPOSED}@local.test", "wrong password")
    with pytest.raises(UserExistsError):
        users.add(f"{COMPOSED}@local.test", "another password")
    assert users.set_password(f"{DECOMPOSED}@local.test", "a new password")
    assert users.verify(f"{COMPOSED}@local.test", "a new password")
    assert users.remove(f"{DECOMPOSED}@local.test")
    assert not users.contains(f"{COMPOSED}@local.test")


def test_domain_part_is_compared_in_its_idna_form(users):
    users.add(f"{COMPOSED}@b\u00fccher.example", "a long password")
    assert users.list() == [f"{COMPOSED}@xn--bcher-kva.example"]
    assert users.contains(f"{DECOMPOSED}@bu\u0308cher.example")
    assert users.contains(username_for(f"{DECOMPOSED}@B\u00fcCHER.example"))


def test_ascii_names_are_unchanged():
    assert username_for("Bob+x@Local.Test") == "bob@local.test"
    assert maildir_name_for(" Bob@Local.Test ") == "bob@local.test"
    assert user_key("Bob@Local.Test") == "bob@local.test"


def test_maildir_name_is_the_same_for_both_forms():
    assert maildir_name_for(f"{DECOMPOSED}@local.test") == f"{COMPOSED}@local.test"
    assert maildir_name_for(f"{COMPOSED}@local.test") == f"{COMPOSED}@local.test"
    assert maildir_name_for(f"JU\u0308RGEN@local.test") == f"{COMPOSED}@local.test"


def test_both_forms_deliver_into_one_maildir(tmp_path):
    store = MaildirStore(tmp_path / "mail", tmp_path / "chainmail.db", hostname="h")
    try:
        store.deliver(f"{COMPOSED}@local.test", b"Subject: one\r\n\r\n1\r\n")
        store.deliver(f"{DECOMPOSED}@local.test", b"Subject: two\r\n\r\n2\r\n")
        assert os.listdir(tmp_path / "mail") == [f"{COMPOSED}@local.test"]
        assert len(store.list(f"{DECOMPOSED}@local.test")) == 2
        store.set_quota(f"{DECOMPOSED}@local.test", 10_000)
        assert store.get_quota(f"{COMPOSED}@local.test") == 10_000
        assert store.quotas() == {f"{COMPOSED}@local.test": 10_000}
        assert store.usage(f"{DECOMPOSED}@local.test") == store.usage(f"{COMPOSED}@local.test") > 0
    finally:
        store.close()
