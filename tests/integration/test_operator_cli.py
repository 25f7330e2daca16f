"""``chainmail domain remove`` and the password policy, run as real processes."""

from __future__ import annotations

from .test_cli_accounts import cm, dirs  # noqa: F401  (fixtures)

PASSWORD = "a long enough secret\n"


def test_domain_remove_refuses_while_users_or_mappings_use_it(cm):
    assert cm("domain", "add", "other.test").returncode == 0
    assert cm("user", "add", "bob@other.test", "--password-stdin", stdin=PASSWORD).returncode == 0
    assert cm("alias", "add", "--forward", "team@local.test", "carol@other.test").returncode == 0
    r = cm("domain", "remove", "other.test")
    assert r.returncode == 2
    assert "cannot remove other.test: still used by user bob@other.test, " \
           "forward team@local.test -> carol@other.test" in r.stderr
    assert "--force" in r.stderr and len(r.stderr.splitlines()) == 1
    assert "other.test" in cm("domain", "list").stdout
    r = cm("domain", "remove", "other.test", "--force")
    assert (r.returncode, r.stdout) == (0, "removed other.test\n")
    assert "other.test" not in cm("domain", "list").stdout


def test_domain_remove_of_an_unused_domain(cm):
    assert cm("domain", "add", "spare.test").returncode == 0
    r = cm("domain", "remove", "spare.test")
    assert (r.returncode, r.stdout) == (0, "removed spare.test\n")


def test_domain_remove_refuses_a_domain_of_domainlist_xml(cm, dirs):
    conf, _ = dirs
    (conf / "domainlist.xml").write_text(
        "<domainlist><domainnames><domainname>local.test</domainname>"
        "<domainname>listed.test</domainname></domainnames>"
        "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
        "<defaultDomain>local.test</defaultDomain></domainlist>\n")
    for name, why in (("listed.test", "it comes from"), ("local.test", "it is the defaultDomain of")):
        r = cm("domain", "remove", name, "--force")
        assert r.returncode == 2, r.stderr
        assert f"cannot remove {name}: {why} {conf / 'domainlist.xml'}" in r.stderr


def test_a_short_password_is_refused_in_one_line(cm):
    for args in (("user", "add", "bob@local.test"), ("user", "passwd", "bob@local.test")):
        if args[1] == "passwd":
            assert cm("user", "add", "bob@local.test", "--password-stdin",
                      stdin=PASSWORD).returncode == 0
        r = cm(*args, "--password-stdin", stdin="short\n")
        assert r.returncode == 2
        assert r.stderr.splitlines() == [
            "chainmail: password refused: 5 character(s), at least 8 are required (the default; "
            "set <passwordPolicy minLength=\"...\"/> in usersrepository.xml); nothing changed"]
    assert cm("user", "list").stdout == "bob@local.test\n"


def test_the_minimum_length_comes_from_usersrepository_xml(cm, dirs):
    conf, _ = dirs
    (conf / "usersrepository.xml").write_text(
        "<usersrepository>\n  <passwordPolicy minLength=\"24\"/>\n</usersrepository>\n")
    r = cm("user", "add", "bob@local.test", "--password-stdin", stdin=PASSWORD)
    assert r.returncode == 2
    assert f"at least 24 are required (minLength in {conf / 'usersrepository.xml'}:2)" in r.stderr
    r = cm("user", "add", "bob@local.test", "--password-stdin",
           stdin="twenty-four characters!!\n")
    assert r.returncode == 0, r.stderr
    (conf / "usersrepository.xml").write_text(
        "<usersrepository>\n\n  <passwordPolicy minLength=\"eight\"/>\n</usersrepository>\n")
    r = cm("user", "add", "carol@local.test", "--password-stdin", stdin=PASSWORD)
    assert r.returncode == 2
    assert f"{conf / 'usersrepository.xml'}:3" in r.stderr and "minLength='eight'" in r.stderr
