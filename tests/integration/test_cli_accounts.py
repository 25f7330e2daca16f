"""``chainmail user`` and ``chainmail alias`` run as real processes against a temporary conf and var."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHAINMAIL = [sys.executable, "-m", "chainmail"]
ROOT = Path(__file__).resolve().parents[2]

DOMAINLIST = """<domainlist>
  <domainnames><domainname>local.test</domainname></domainnames>
  <autodetect>false</autodetect><autodetectIP>false</autodetectIP>
  <defaultDomain>local.test</defaultDomain>
</domainlist>
"""
SMTPSERVER = "<smtpservers><smtpserver><bind>127.0.0.1:0</bind></smtpserver></smtpservers>\n"


@pytest.fixture
def dirs(tmp_path):
    conf, var = tmp_path / "conf", tmp_path / "var"
    conf.mkdir()
    var.mkdir()   # an existing state directory: the first add says nothing about creating it
    (conf / "domainlist.xml").write_text(DOMAINLIST)
    (conf / "smtpserver.xml").write_text(SMTPSERVER)
    return conf, var


@pytest.fixture
def cm(dirs):
    """``cm("user", "add", "bob@local.test", stdin="pw\\n")`` -> CompletedProcess."""
    conf, var = dirs

    def run(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(
            [*CHAINMAIL, *args, "--conf", str(conf), "--var", str(var)],
            input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(conf.parent),
            start_new_session=True,  # no controlling terminal: getpass cannot open /dev/tty
        )

    return run


def _users(var: Path):
    from chainmail.store.users import UsersRepository
    return UsersRepository(str(var / "chainmail.db"))


def test_user_add_list_passwd_remove(cm, dirs):
    _, var = dirs
    r = cm("user", "add", "Bob@Local.Test", "--password-stdin", stdin="first secret\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "added user bob@local.test\n", "")

    r = cm("user", "add", "bob@local.test", "--password-stdin", stdin="again\n")
    assert r.returncode == 1
    assert "already exists" in r.stderr and r.stdout == ""

    r = cm("user", "add", "alice@local.test", "--password-stdin", stdin="alice's secret\n")
    assert r.returncode == 0
    r = cm("user", "list")
    assert (r.returncode, r.stdout) == (0, "alice@local.test\nbob@local.test\n")

    users = _users(var)
    try:
        assert users.verify("bob@local.test", "first secret")  # the newline is not part of it
        r = cm("user", "passwd", "bob@local.test", "--password-stdin", stdin="second secret\r\n")
        assert (r.returncode, r.stdout) == (0, "changed password of bob@local.test\n")
        assert users.verify("bob@local.test", "second secret")
        assert not users.verify("bob@local.test", "first secret")
    finally:
        users.close()

    r = cm("user", "passwd", "nobody@local.test", "--password-stdin", stdin="x\n")
    assert r.returncode == 1 and "no user nobody@local.test" in r.stderr

    r = cm("user", "remove", "BOB@local.test")
    assert (r.returncode, r.stdout) == (0, "removed user bob@local.test\n")
    r = cm("user", "remove", "bob@local.test")
    assert r.returncode == 1 and "no user" in r.stderr
    assert cm("user", "list").stdout == "alice@local.test\n"


def test_password_is_not_in_the_database(cm, dirs):
    _, var = dirs
    assert cm("user", "add", "bob@local.test", "--password-stdin", stdin="Hunter2-Distinct\n").returncode == 0
    for path in var.iterdir():
        if path.name.startswith("chainmail.db"):
            assert b"Hunter2-Distinct" not in path.read_bytes(), path


@pytest.mark.parametrize("args, stdin, message", [
    (("user", "add", "bob@elsewhere.test", "--password-stdin"), "pw\n", "not a local domain"),
    (("user", "add", "bob", "--password-stdin"), "pw\n", "full address"),
    (("user", "add", "bob+x@local.test", "--password-stdin"), "pw\n", "'+'"),
    (("user", "add", "bob@local.test", "--password-stdin"), "\n", "no password"),
    (("user", "add", "bob@local.test", "--password-stdin"), "", "no password"),
])
def test_user_add_bad_input(cm, args, stdin, message):
    r = cm(*args, stdin=stdin)
    assert r.returncode == 2, r
    assert message in r.stderr
    assert r.stderr.startswith("chainmail: ")
    assert cm("user", "list").stdout == ""


def test_user_add_without_tty_fails_instead_of_hanging(cm):
    r = cm("user", "add", "bob@local.test", timeout=20)  # stdin is /dev/null, no terminal
    assert r.returncode == 2
    assert "--password-stdin" in r.stderr
    assert "Traceback" not in r.stderr
    assert cm("user", "list").stdout == ""


def test_user_add_with_closed_stdin_fails_cleanly(dirs):
    conf, var = dirs
    proc = subprocess.run(
        [*CHAINMAIL, "user", "passwd", "bob@local.test", "--conf", str(conf), "--var", str(var)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
        # close fd 0 in the child entirely
        preexec_fn=lambda: os.close(0),
    )
    assert proc.returncode in (1, 2)  # no such user (checked first) -- never a hang
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [*CHAINMAIL, "user", "add", "bob@local.test", "--conf", str(conf), "--var", str(var)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
        preexec_fn=lambda: os.close(0),
    )
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr


def test_password_is_not_accepted_as_an_argument(cm):
    r = cm("user", "add", "bob@local.test", "hunter2")
    assert r.returncode == 2  # argparse: unrecognized argument
    r = cm("user", "add", "bob@local.test", "--password", "hunter2")
    assert r.returncode == 2
    assert cm("user", "list").stdout == ""


def test_alias_add_list_remove(cm):
    assert cm("user", "add", "bob@local.test", "--password-stdin", stdin="bob's secret\n").returncode == 0

    r = cm("alias", "add", "Sales@Local.Test", "bob@local.test")
    assert (r.returncode, r.stdout) == (0, "added alias sales@local.test -> bob@local.test\n")
    r = cm("alias", "add", "sales@local.test", "bob@local.test")
    assert r.returncode == 1 and "already exists" in r.stderr

    r = cm("alias", "add", "--forward", "team@local.test", "bob@local.test")
    assert (r.returncode, r.stdout) == (0, "added forward team@local.test -> bob@local.test\n")
    assert cm("alias", "add", "--forward", "team@local.test", "x@remote.test").returncode == 0

    r = cm("alias", "add", "--domain", "Alias.Test", "local.test")
    assert r.returncode == 0
    assert r.stdout == "added domain alias alias.test -> local.test\n"
    assert "chainmail domain add alias.test" in r.stderr  # hint: not a local domain yet

    r = cm("alias", "list")
    assert r.returncode == 0
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows == [
        ["alias", "sales@local.test", "bob@local.test"],
        ["domain", "alias.test", "local.test"],
        ["forward", "team@local.test", "bob@local.test"],
        ["forward", "team@local.test", "x@remote.test"],
    ]

    r = cm("alias", "resolve", "team@alias.test")
    assert (r.returncode, r.stdout) == (0, "bob@local.test\nx@remote.test\n")

    r = cm("alias", "remove", "--forward", "team@local.test", "x@remote.test")
    assert (r.returncode, r.stdout) == (0, "removed forward team@local.test -> x@remote.test\n")
    r = cm("alias", "remove", "--forward", "team@local.test", "x@remote.test")
    assert r.returncode == 1
    r = cm("alias", "remove", "sales@local.test", "bob@local.test")
    assert r.returncode == 0
    r = cm("alias", "remove", "--domain", "alias.test")
    assert (r.returncode, r.stdout) == (0, "removed domain alias alias.test -> local.test\n")
    r = cm("alias", "remove", "--domain", "alias.test")
    assert r.returncode == 1
    r = cm("alias", "list")
    assert r.stdout.split() == ["forward", "team@local.test", "bob@local.test"]


@pytest.mark.parametrize("args, message", [
    (("alias", "add", "sales@remote.test", "bob@local.test"), "not a local domain"),
    (("alias", "add", "sales", "bob@local.test"), "full address"),
    (("alias", "add", "bob@local.test", "other@local.test"), "it is a user"),
    (("alias", "add", "--domain", "alias.test", "notlocal.test"), "not a local domain"),
    (("alias", "add", "--domain", "bad..name", "local.test"), "invalid"),
    (("alias", "remove", "sales@local.test"), "give the target"),
])
def test_alias_bad_input(cm, args, message):
    assert cm("user", "add", "bob@local.test", "--password-stdin", stdin="bob's secret\n").returncode == 0
    r = cm(*args)
    assert r.returncode == 2, r
    assert message in r.stderr
    assert cm("alias", "list").stdout == ""


def test_alias_loop_is_refused(cm):
    assert cm("alias", "add", "a@local.test", "b@local.test").returncode == 0
    r = cm("alias", "add", "--forward", "b@local.test", "a@local.test")
    assert r.returncode == 2
    assert "loop" in r.stderr and "b@local.test -> a@local.test -> b@local.test" in r.stderr


def test_user_add_refused_for_an_alias_address(cm):
    assert cm("alias", "add", "sales@local.test", "bob@local.test").returncode == 0
    r = cm("user", "add", "sales@local.test", "--password-stdin", stdin="pw\n")
    assert r.returncode == 2
    assert "alias of bob@local.test" in r.stderr


def test_help_lists_the_subcommands(cm):
    r = cm("user", "--help")
    assert r.returncode == 0
    assert all(word in r.stdout for word in ("add", "remove", "list", "passwd"))
    r = cm("alias", "add", "--help")
    assert r.returncode == 0 and "--forward" in r.stdout and "--domain" in r.stdout


def _run_on_pty(dirs, args, answers):
    """Run chainmail with a pseudo-terminal as stdin/stdout/stderr, answering each prompt."""
    import select

    conf, var = dirs
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*CHAINMAIL, *args, "--conf", str(conf), "--var", str(var)],
        stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True, close_fds=True)
    os.close(slave)
    output = b""
    pending = list(answers)
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 20)
            assert ready, f"no output; so far: {output!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if pending and output.rstrip().endswith(b":"):
                os.write(master, pending.pop(0).encode() + b"\n")
                output += b"<answered>"
        assert proc.wait(timeout=20) is not None
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, output.decode(errors="replace")


def test_interactive_password_prompts_twice_without_echo(dirs, cm):
    code, out = _run_on_pty(dirs, ["user", "add", "bob@local.test"], ["pty-secret", "pty-secret"])
    assert code == 0, out
    assert "Password for bob@local.test:" in out and "Retype the password:" in out
    assert "pty-secret" not in out  # not echoed
    assert "added user bob@local.test" in out
    users = _users(dirs[1])
    try:
        assert users.verify("bob@local.test", "pty-secret")
    finally:
        users.close()

    code, out = _run_on_pty(dirs, ["user", "passwd", "bob@local.test"], ["one", "two"])
    assert code == 2, out
    assert "the passwords differ" in out
    users = _users(dirs[1])
    try:
        assert users.verify("bob@local.test", "pty-secret")
    finally:
        users.close()


def test_user_remove_mentions_mappings_left_behind(cm):
    assert cm("user", "add", "bob@local.test", "--password-stdin", stdin="bob's secret\n").returncode == 0
    assert cm("alias", "add", "sales@local.test", "bob@local.test").returncode == 0
    r = cm("user", "remove", "bob@local.test")
    assert (r.returncode, r.stdout) == (0, "removed user bob@local.test\n")
    assert "still mapped to bob@local.test: alias sales@local.test" in r.stderr
