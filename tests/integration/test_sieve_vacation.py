"""Sieve and vacation on a real ``chainmail run``: scripts and vacations set with the CLI,
mail sent over SMTP, results read from the Maildirs (folders included) the server wrote."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys

import pytest

from chainmail.testing.server import shipped_mailetcontainer
from chainmail.testing.stores import read_maildir

PASSWORD = "a long password"
ALICE, BOB, CAROL = "alice@local.test", "bob@local.test", "carol@local.test"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}


def container() -> str:
    """The shipped container with James's sample local-delivery: vacation, Sieve, delivery."""
    shipped = shipped_mailetcontainer()
    local = '<mailet match="All" class="LocalDelivery"/>'
    assert shipped.count(local) == 1
    return shipped.replace(local, '<mailet match="All" class="VacationMailet"/>'
                                  '<mailet match="All" class="Sieve"/>' + local)


@pytest.fixture
def server(chainmail_server):
    return chainmail_server(mailetcontainer=container(), users=USERS)


def cli(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chainmail", "--conf", str(server.conf),
                           "--var", str(server.var), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def message(sender: str, to: str, subject: str, *extra: str) -> bytes:
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
            f"Message-ID: <{abs(hash((sender, subject)))}@test>", *extra]
    return ("\r\n".join(head) + "\r\n\r\nbody\r\n").encode()


def folder(server, user: str, name: str | None = None) -> list[bytes]:
    return read_maildir(server.stores.mailboxes.folder_path(user, name))


def settle(server) -> None:
    """Wait until the spool is empty: every message and every reply has been processed."""
    server.wait_for(lambda: not server.spooled(), what="an empty spool")


SCRIPT = """require ["fileinto", "reject", "mailbox"];
if header :contains "subject" "[spam]" { fileinto :create "Spam"; stop; }
if address :domain :is "from" "local.test" { if header :is "subject" "forward me" {
    redirect "carol@local.test"; stop; } }
if header :matches "subject" "go away*" { reject "Not interested."; }
"""


def test_scripts_file_redirect_and_reject(server):
    done = cli(server, "sieve", "put", BOB, "main", "-", "--activate", stdin=SCRIPT)
    assert done.returncode == 0, done.stderr
    assert cli(server, "sieve", "list", BOB).stdout == "main  (active)\n"

    server.send(ALICE, BOB, message(ALICE, BOB, "[spam] cheap watches"))
    server.send(ALICE, BOB, message(ALICE, BOB, "hello"))
    server.send(ALICE, BOB, message(ALICE, BOB, "forward me"))
    server.send(ALICE, BOB, message(ALICE, BOB, "go away now"))
    settle(server)

    [spam] = folder(server, BOB, "Spam")
    assert b"Subject: [spam] cheap watches" in spam
    assert os.path.isfile(os.path.join(server.stores.mailboxes.folder_path(BOB, "Spam"),
                                       "maildirfolder"))
    [inbox] = folder(server, BOB)
    assert b"Subject: hello" in inbox
    [forwarded] = folder(server, CAROL)
    assert b"Subject: forward me" in forwarded
    assert b"Delivered-To: carol@local.test" in forwarded and b"Delivered-To: bob@local.test" in forwarded
    [rejection] = folder(server, ALICE)
    report = email.message_from_bytes(rejection, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report["Subject"] == "Rejected: go away now" and b"Return-Path: <>" in rejection
    assert b"Not interested." in rejection and b"deleted" in rejection


def test_the_cli_refuses_what_would_not_run_and_manages_scripts(server):
    refused = cli(server, "sieve", "put", BOB, "bad", "-", stdin='require "body"; keep;')
    assert refused.returncode == 2 and "extension 'body' is not supported" in refused.stderr
    syntax = cli(server, "sieve", "put", BOB, "bad", "-", stdin='if true { keep;')
    assert syntax.returncode == 2 and "script refused" in syntax.stderr
    assert cli(server, "sieve", "put", "nobody@local.test", "x", "-", stdin="keep;").returncode == 1
    assert cli(server, "sieve", "put", BOB, "a", "-", stdin="discard;\n").returncode == 0
    assert cli(server, "sieve", "get", BOB, "a").stdout == "discard;\n"
    # stored, not active: mail is delivered as usual
    server.send(ALICE, BOB, message(ALICE, BOB, "one"))
    server.wait_for_mailbox(BOB, 1)
    assert cli(server, "sieve", "activate", BOB, "a").returncode == 0
    server.send(ALICE, BOB, message(ALICE, BOB, "two"))
    settle(server)
    assert len(folder(server, BOB)) == 1
    assert cli(server, "sieve", "delete", BOB, "a").returncode == 0
    assert cli(server, "sieve", "list", BOB).stdout == ""
    assert cli(server, "sieve", "delete", BOB, "a").returncode == 1


def test_vacation_replies_once_per_sender_and_never_to_lists_or_machines(server):
    done = cli(server, "vacation", "set", BOB, "--subject", "Out of office",
               "--text", "Back on Monday.", "--to-date", "2999-12-31")
    assert done.returncode == 0, done.stderr
    assert "Back on Monday." in cli(server, "vacation", "show", BOB).stdout

    server.send(ALICE, BOB, message(ALICE, BOB, "first"))
    server.send(ALICE, BOB, message(ALICE, BOB, "second"))
    server.send(CAROL, BOB, message(CAROL, BOB, "newsletter", "List-Id: <news.local.test>"))
    server.send(CAROL, BOB, message(CAROL, BOB, "bulk", "Precedence: bulk"))
    server.send(CAROL, BOB, message(CAROL, BOB, "robot", "Auto-Submitted: auto-generated"))
    server.send("", BOB, message("MAILER-DAEMON@local.test", BOB, "bounce"))
    settle(server)

    assert len(folder(server, BOB)) == 6
    [reply] = folder(server, ALICE)
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["Subject"] == "Out of office" and parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["From"] == BOB and b"Return-Path: <>" in reply
    assert parsed["In-Reply-To"] and "Back on Monday." in parsed.get_content()
    assert folder(server, CAROL) == []

    # a new vacation answers again; a cleared one does not
    assert cli(server, "vacation", "set", BOB, "--text", "Again away.").returncode == 0
    server.send(ALICE, BOB, message(ALICE, BOB, "third"))
    settle(server)
    assert len(server.wait_for_mailbox(ALICE, 2)) == 2
    assert cli(server, "vacation", "clear", BOB).returncode == 0
    server.send(ALICE, BOB, message(ALICE, BOB, "fourth"))
    settle(server)
    assert len(folder(server, BOB)) == 8 and len(folder(server, ALICE)) == 2


def test_sieve_vacation_answers_once(server):
    script = ('require "vacation";\nvacation :days 2 :subject "Holidays" "Away until May.";\n')
    assert cli(server, "sieve", "put", BOB, "away", "-", "--activate", stdin=script).returncode == 0
    for subject in ("a", "b"):
        server.send(CAROL, BOB, message(CAROL, BOB, subject))
    server.send(ALICE, BOB, message(ALICE, BOB, "c", "Precedence: list"))
    settle(server)
    assert len(folder(server, BOB)) == 3
    [reply] = folder(server, CAROL)
    assert b"Subject: Holidays" in reply and b"Away until May." in reply
    assert folder(server, ALICE) == []
