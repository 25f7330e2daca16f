"""What an operator relies on, against a real ``chainmail run``: one queue id from the 250
reply to the log, ``queue show|hold|release``, local delivery retried before it bounces,
no server path in what the sender gets, the postmaster warning."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import time

from ..conftest import ChainmailProcess
from .test_mailets import cli, inbox, message, ok, wait_for

QUEUED = re.compile(r"Message received, queued as ([0-9a-f]{12}-[0-9a-f]{20})$")

CONTAINER = """<mailetcontainer>
  <context><postmaster>{postmaster}</postmaster></context>
  <spooler><threads>2</threads></spooler>
  <processors>
    <processor state="root">
      <mailet match="All" class="ToProcessor"><processor>local-delivery</processor></mailet>
    </processor>
    <processor state="local-delivery">
      <mailet match="All" class="LocalDelivery">
        <maxRetries>2</maxRetries><delayTime>{delay}</delayTime>
      </mailet>
    </processor>
    <processor state="error">
      <mailet match="All" class="Bounce"><passThrough>false</passThrough></mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


def start(chainmail_factory, *, delay: str = "1 second", postmaster: str = "postmaster"):
    server = chainmail_factory(files={"mailetcontainer.xml": CONTAINER.format(
        delay=delay, postmaster=postmaster)})
    for user in ("bob@local.test", "carol@local.test"):
        ok(cli(server, "user", "add", user, "--password-stdin", stdin=f"{user} secret\n"))
    time.sleep(1.1)   # the running server sees new users within a second
    return server


def send(server, sender: str, rcpt: str, subject: str) -> str:
    """Send one message; the queue id its 250 reply names."""
    with server.smtp() as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250 and s.rcpt(rcpt)[0] == 250
        code, text = s.data(message(subject, sender))
    assert code == 250
    m = QUEUED.search(text.decode())
    assert m, text
    return m.group(1)


def break_maildir(server, user: str):
    """A file where the user's Maildir directory should be: every write fails (also as root)."""
    path = server.var / "mail" / user
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.rmtree(path)
    path.write_text("not a directory")
    return path


def test_the_250_reply_names_the_queue_id_every_log_line_about_it_names(chainmail_factory):
    server = start(chainmail_factory)
    qid = send(server, "bob@local.test", "carol@local.test", "traced")
    wait_for(lambda: inbox(server, "carol@local.test"), what="the delivery")
    log = wait_for(lambda: f"{qid}: processed" in server.log and server.log, what="the log")
    assert f"queued {qid} from <bob@local.test>" in log
    assert f"{qid}: delivered to <carol@local.test>" in log


def test_a_broken_maildir_is_retried_then_delivered_once_repaired(chainmail_factory):
    server = start(chainmail_factory, delay="2 seconds")
    broken = break_maildir(server, "carol@local.test")
    qid = send(server, "bob@local.test", "carol@local.test", "retried")
    wait_for(lambda: f"{qid}: temporary failure for <carol@local.test>; retry 1 of 2" in server.log,
             what="the first retry to be scheduled")
    shown = ok(cli(server, "queue", "show", qid))
    assert f"queue id:    {qid}" in shown and "processor local-delivery" in shown
    assert "last error:  451 4.3.0 Mailbox temporarily unavailable (retry 1 of 2)" in shown
    assert "Subject: retried" in shown
    broken.unlink()
    [m] = wait_for(lambda: inbox(server, "carol@local.test"), what="the retried delivery")
    assert m["Subject"] == "retried"
    assert inbox(server, "bob@local.test") == []   # no bounce
    # logged just after the delivery it reports
    wait_for(lambda: f"{qid}: delivered to <carol@local.test>" in server.log,
             what="the delivery logged")


def test_retries_exhausted_bounce_with_a_permanent_status_and_no_server_path(chainmail_factory):
    server = start(chainmail_factory)
    broken = break_maildir(server, "carol@local.test")
    qid = send(server, "bob@local.test", "carol@local.test", "doomed")
    [dsn] = wait_for(lambda: inbox(server, "bob@local.test"), timeout=20, what="the bounce")
    raw = dsn.as_bytes().decode("utf-8", "replace")
    parsed = email.message_from_bytes(dsn.as_bytes(), policy=email.policy.default)
    status = parsed.get_payload()[1].get_payload()
    assert status[0]["X-chainmail-Queue-ID"] == qid
    assert status[1]["Action"] == "failed" and status[1]["Status"] == "5.3.0"
    assert "Mailbox temporarily unavailable; gave up after 2 retries" in status[1]["Diagnostic-Code"]
    assert "retrying did not succeed" in raw
    for leak in (str(server.var), "/mail/", "Errno", "Traceback"):
        assert leak not in raw
    log = server.log
    assert f"{qid}: mailbox of carol@local.test not written" in log and str(broken) in log
    assert f"{qid}: temporary failure for <carol@local.test>; retry 2 of 2" in log


def test_queue_hold_keeps_a_message_through_a_restart_until_released(chainmail_factory):
    server = start(chainmail_factory, delay="2 seconds")
    broken = break_maildir(server, "carol@local.test")
    qid = send(server, "bob@local.test", "carol@local.test", "held")
    wait_for(lambda: f"{qid}: temporary failure" in server.log, what="the first failure")
    r = cli(server, "queue", "hold", qid)
    assert r.returncode == 0 and f"held {qid} (spool)" in r.stdout, r.stderr
    broken.unlink()
    wait_for(lambda: f"{qid}: held; left in the spool until released" in server.log,
             what="the spooler to see the hold")
    assert "yes, since" in ok(cli(server, "queue", "show", qid))
    assert "[held]" in ok(cli(server, "queue", "list"))
    assert server.stop() == 0
    again = ChainmailProcess(server.conf, server.var)
    try:
        time.sleep(1.5)
        assert inbox(again, "carol@local.test") == []
        assert ok(cli(again, "queue", "release", qid)).startswith(f"released {qid}")
        [m] = wait_for(lambda: inbox(again, "carol@local.test"), what="the released delivery")
        assert m["Subject"] == "held"
        r = cli(again, "queue", "release", qid)
        assert r.returncode == 1 and "is not held" in r.stderr
        r = cli(again, "queue", "show", qid)
        assert r.returncode == 1 and "is not queued" in r.stderr
    finally:
        again.stop()


def test_queue_hold_refuses_what_is_not_queued(chainmail_factory):
    server = start(chainmail_factory)
    r = cli(server, "queue", "hold", "0190a1b2c3d4-0000a1b2c3d4e5f6a7b8")
    assert r.returncode == 1 and "is not queued" in r.stderr
    r = cli(server, "queue", "hold", "../etc")
    assert r.returncode == 2 and "is not a queue id" in r.stderr


def test_start_warns_once_when_the_postmaster_has_no_mailbox(chainmail_factory):
    server = start(chainmail_factory)
    warning = "the postmaster address postmaster@local.test (<postmaster> in"
    assert server.log.count(warning) == 1
    assert "chainmail user add postmaster@local.test" in server.log
    assert server.stop() == 0
    ok(cli(server, "alias", "add", "postmaster@local.test", "bob@local.test"))
    again = ChainmailProcess(server.conf, server.var)
    try:
        assert "has no mailbox" not in again.log
    finally:
        again.stop()
