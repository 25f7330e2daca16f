"""The mailet container end to end: real ``chainmail run`` processes, smtplib and swaks,
accounts made with the CLI, Maildirs read with Python's ``mailbox`` module."""

from __future__ import annotations

import email
import email.policy
import mailbox
import signal
import subprocess
import time

import pytest

from ..conftest import CHAINMAIL, ROOT, ChainmailProcess, need

SHIPPED = (ROOT / "conf" / "mailetcontainer.xml").read_text()


def cli(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAINMAIL, *args, "--conf", str(server.conf), "--var", str(server.var)],
                          input=stdin, capture_output=True, text=True, timeout=30,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def inbox(server, user: str) -> list:
    """The user's messages in the order they were delivered (chainmail's Maildir names start
    with the delivery time: ``<seconds>.M<microseconds>P...``)."""
    path = server.var / "mail" / user
    if not path.is_dir():
        return []
    box = mailbox.Maildir(str(path), factory=None, create=False)

    def delivered_at(key: str) -> tuple[int, int]:
        seconds, _, rest = key.partition(".")
        micro = rest[1:rest.find("P")] if rest.startswith("M") and "P" in rest else "0"
        return (int(seconds), int(micro)) if seconds.isdigit() and micro.isdigit() else (0, 0)

    return [box[key] for key in sorted(box.keys(), key=delivered_at)]


def repo_keys(server, name: str) -> list[str]:
    path = server.var / "mail" / name
    return sorted(p.name for p in path.iterdir() if "-" in p.name) if path.is_dir() else []


def message(subject: str, sender: str = "alice@remote.example", extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: someone\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@test>\r\n{extra}\r\nbody of {subject}\r\n")


def send(server, sender: str, recipients: list[str], subject: str, extra: str = "") -> None:
    with server.smtp() as s:
        assert s.sendmail(sender, recipients, message(subject, sender, extra)) == {}


@pytest.fixture
def mta(chainmail_factory):
    """The shipped mailetcontainer.xml, local domain local.test, users bob and carol, an
    alias, a domain alias (alias.test) and a forward, all made with the CLI."""
    server = chainmail_factory(domains=("local.test",), files={"mailetcontainer.xml": SHIPPED})
    ok(cli(server, "user", "add", "bob@local.test", "--password-stdin", stdin="secret bob\n"))
    ok(cli(server, "user", "add", "carol@local.test", "--password-stdin", stdin="secret carol\n"))
    ok(cli(server, "alias", "add", "sales@local.test", "bob@local.test"))
    ok(cli(server, "alias", "add", "--domain", "alias.test", "local.test"))
    ok(cli(server, "alias", "add", "--forward", "team@local.test", "carol@local.test"))
    ok(cli(server, "alias", "add", "--forward", "team@local.test", "out@remote.example"))
    time.sleep(1.1)  # the server's stores notice other processes' changes within a second
    return server


def test_delivery_to_user_alias_domain_alias_and_forward(mta):
    send(mta, "alice@remote.example", ["bob@local.test"], "direct")
    send(mta, "alice@remote.example", ["sales@local.test"], "alias")
    send(mta, "alice@remote.example", ["Bob+tag@alias.test"], "domain-alias")
    send(mta, "alice@remote.example", ["team@local.test"], "forward")
    bob = wait_for(lambda: len(inbox(mta, "bob@local.test")) == 3 and inbox(mta, "bob@local.test"),
                   what="bob's three messages")
    assert sorted(m["Subject"] for m in bob) == ["alias", "direct", "domain-alias"]
    for m in bob:
        assert m["Received"].startswith("from client.test (EHLO client.test) ([127.0.0.1])")
        assert m["Return-Path"] == "<alice@remote.example>"
    delivered_to = {m["Subject"]: m["Delivered-To"] for m in bob}
    assert delivered_to == {"direct": "bob@local.test", "alias": "bob@local.test",
                            "domain-alias": "bob+tag@local.test"}
    [carol] = wait_for(lambda: inbox(mta, "carol@local.test"), what="carol's forward")
    assert carol["Subject"] == "forward"
    # the remote member of the group goes to RemoteDelivery's outgoing queue (its DNS here
    # answers nothing, so it waits there for a retry)
    wait_for(lambda: "-> <out@remote.example>" in ok(cli(mta, "queue", "list")),
             what="the forward in the outgoing queue")
    assert "queued for remote delivery to out@remote.example" in mta.log
    wait_for(lambda: not mta.queued(), what="an empty spool")


def test_swaks_to_a_local_user(mta):
    swaks = need("swaks")
    result = subprocess.run([swaks, "--server", f"127.0.0.1:{mta.port}", "--helo", "swaks.test",
                             "--from", "carol@local.test", "--to", "bob@local.test",
                             "--header", "Subject: via swaks", "--body", "hello from swaks"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    [m] = wait_for(lambda: inbox(mta, "bob@local.test"), what="the swaks message")
    assert m["Subject"] == "via swaks" and "hello from swaks" in m.get_payload()
    assert m["Received"].startswith("from swaks.test")


def test_unknown_local_user_bounces_to_the_sender_and_is_kept(mta):
    send(mta, "bob@local.test", ["nobody@local.test"], "lost")
    [dsn] = wait_for(lambda: inbox(mta, "bob@local.test"), what="the bounce")
    parsed = email.message_from_bytes(dsn.as_bytes(), policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed["Return-Path"] == "<>"
    status = parsed.get_payload()[1].get_payload()
    assert status[1]["Final-Recipient"] == "rfc822; nobody@local.test"
    assert status[1]["Status"] == "5.1.1"
    [key] = repo_keys(mta, "address-error")
    shown = ok(cli(mta, "repository", "show", "address-error", key))
    assert "recipients: <nobody@local.test>" in shown and "no such user here" in shown
    assert "Subject: lost" in shown


def test_over_quota_is_bounced(mta):
    ok(cli(mta, "quota", "set", "carol@local.test", "300"))
    send(mta, "bob@local.test", ["carol@local.test"], "big", extra="X-Pad: " + "x" * 400 + "\r\n")
    [dsn] = wait_for(lambda: inbox(mta, "bob@local.test"), what="the over-quota bounce")
    assert "552 5.2.2 Over quota" in dsn.as_string()
    assert inbox(mta, "carol@local.test") == []
    wait_for(lambda: repo_keys(mta, "error"), what="the error repository")
    assert "carol@local.test" in ok(cli(mta, "quota", "list"))


CRASHING = """<mailetcontainer>
  <context><postmaster>postmaster</postmaster></context>
  <spooler><threads>2</threads></spooler>
  <processors>
    <processor state="root">
      <mailet match="HasHeader=X-Crash" class="ToRepository">
        <repositoryPath>file:///dev/null/cannot/be/a/directory/</repositoryPath>
      </mailet>
      <mailet match="All" class="ToProcessor"><processor>local-delivery</processor></mailet>
    </processor>
    <processor state="local-delivery">
      <mailet match="All" class="LocalDelivery"/>
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/error/</repositoryPath>
        <onMailetException>propagate</onMailetException>
      </mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


def test_crashing_mailet_sends_the_mail_to_the_error_processor_and_cli_reprocesses_it(chainmail_factory):
    server = chainmail_factory(files={"mailetcontainer.xml": CRASHING})
    ok(cli(server, "user", "add", "bob@local.test", "--password-stdin", stdin="bob's secret\n"))
    time.sleep(1.1)
    send(server, "alice@remote.example", ["bob@local.test"], "crash", extra="X-Crash: yes\r\n")
    [key] = wait_for(lambda: repo_keys(server, "error"), what="the error repository")
    listing = ok(cli(server, "repository", "list"))
    assert "error" in listing and "file://var/mail/error/" in listing
    shown = ok(cli(server, "repository", "show", "error"))
    assert key in shown and "mailet ToRepository in processor root failed" in shown
    assert inbox(server, "bob@local.test") == []
    # once the cause is understood: back into the spool, past the crashing mailet
    out = ok(cli(server, "repository", "reprocess", "error", key, "--state", "local-delivery"))
    assert f"{key} -> spool" in out
    [m] = wait_for(lambda: inbox(server, "bob@local.test"), what="the reprocessed mail")
    assert m["Subject"] == "crash"
    assert repo_keys(server, "error") == []
    # remove
    send(server, "alice@remote.example", ["bob@local.test"], "again", extra="X-Crash: yes\r\n")
    [key] = wait_for(lambda: repo_keys(server, "error"), what="the second failure")
    assert cli(server, "repository", "remove", "error").returncode == 2
    assert ok(cli(server, "repository", "remove", "error", key)) == f"removed {key}\n"
    assert repo_keys(server, "error") == []
    queue = ok(cli(server, "queue", "list"))
    assert "STATE" in queue and "0 message(s) queued" in queue
    described = ok(cli(server, "check-config"))
    assert "processor local-delivery:" in described
    assert "All -> LocalDelivery -> chainmail_plugins.mailets.mailets:LocalDelivery" in described


def test_kill_9_while_processing_then_restart_delivers_every_message(chainmail_factory):
    slow = SHIPPED.replace("<threads>20</threads>", "<threads>1</threads>")
    server = chainmail_factory(files={"mailetcontainer.xml": slow})
    ok(cli(server, "user", "add", "bob@local.test", "--password-stdin", stdin="bob's secret\n"))
    time.sleep(1.1)
    count = 60
    with server.smtp() as s:
        for i in range(count):
            assert s.sendmail("alice@remote.example", ["bob@local.test"], message(f"m{i}")) == {}
    # kill -9 once processing has begun (typically a few delivered, most still spooled)
    wait_for(lambda: inbox(server, "bob@local.test"), what="the first delivery")
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    delivered_before = len(inbox(server, "bob@local.test"))
    left = len(server.queued())
    assert delivered_before + left >= count   # accepted = delivered or still spooled
    restarted = ChainmailProcess(server.conf, server.var)
    try:
        wait_for(lambda: not restarted.queued(), timeout=20, what="the spool to drain")
        subjects = [m["Subject"] for m in inbox(restarted, "bob@local.test")]
        assert set(subjects) == {f"m{i}" for i in range(count)}   # at least once each
        assert len(subjects) >= count
    finally:
        assert restarted.stop() == 0


def test_without_mailet_container_mail_stays_spooled(chainmail):
    send(chainmail, "alice@remote.example", ["bob@local.test"], "kept")
    assert "no mailet container is configured" in chainmail.log
    time.sleep(0.3)
    assert len(chainmail.queued()) == 1
    queue = subprocess.run([*CHAINMAIL, "queue", "list", "--var", str(chainmail.var)],
                           capture_output=True, text=True, timeout=30).stdout
    assert " root " in queue and "<alice@remote.example> -> <bob@local.test>" in queue


def test_run_refuses_a_broken_mailet_container_naming_file_and_line(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text("<smtpservers><smtpserver><bind>127.0.0.1:0</bind>"
                                         "</smtpserver></smtpservers>\n")
    (conf / "mailetcontainer.xml").write_text(
        '<mailetcontainer><processors>\n<processor state="root">\n'
        '<mailet match="All" class="LocalDeliveryy"/>\n</processor></processors></mailetcontainer>\n')
    result = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{conf / 'mailetcontainer.xml'}:3: mailet: no installed mailet provides 'LocalDeliveryy'" in result.stderr
