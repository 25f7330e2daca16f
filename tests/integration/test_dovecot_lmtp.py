"""LMTPDelivery against a real Dovecot (Debian's ``dovecot-lmtpd``), started by each test with
its own configuration on loopback: mail lands in Dovecot's Maildirs, refusals bounce with
Dovecot's reason, temporary failures are retried for their recipients only, and a stopped
Dovecot leaves the mail queued until it is back."""

from __future__ import annotations

import email
import email.policy
import grp
import mailbox
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from chainmail.config.errors import ConfigError
from chainmail.mailet.repository import RepositoryStore
from chainmail.testing.harness import MailetHarness
from chainmail_plugins.mailets.lmtp_delivery import LMTPDelivery

from ..conftest import wait_for, wait_for_log

DOVECOT = "/usr/sbin/dovecot"
USERS = ("alice@local.test", "bob@local.test", "broken@local.test")
MESSAGE = (b"From: sender@remote.example\r\nTo: alice@local.test\r\nSubject: to the store\r\n"
           b"Message-ID: <store-1@remote.example>\r\n\r\nhello Dovecot\r\n.dotted line\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot:
    """A Dovecot serving LMTP only, on 127.0.0.1 and a Unix socket, with a passwd-file
    userdb.  Its directory is outside pytest's (private) tmp tree so that Dovecot's
    unprivileged users can reach it; ``broken@`` has a Maildir nobody may write."""

    def __init__(self) -> None:
        if os.geteuid() == 0:   # root is refused as Dovecot's own users: the package's
            internal, login, owner = "dovecot", "dovenull", pwd.getpwnam("dovenull")
        else:
            owner = pwd.getpwuid(os.geteuid())
            internal = login = owner.pw_name
        self.root = Path(tempfile.mkdtemp(prefix="cm-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.mail = self.root / "mail"
        self.mail.mkdir()
        os.chown(self.mail, owner.pw_uid, owner.pw_gid)
        broken = self.mail / "broken@local.test"
        broken.mkdir(mode=0o500)
        os.chown(broken, owner.pw_uid, owner.pw_gid)
        passwd = self.root / "passwd"
        passwd.write_text("".join(f"{u}::{owner.pw_uid}:{owner.pw_gid}::{self.mail / u}\n"
                                  for u in USERS))
        passwd.chmod(0o644)
        self.socket = str(self.root / "run" / "lmtp")
        self.conf = self.root / "dovecot.conf"
        self.conf.write_text(f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
info_log_path = {self.root}/dovecot.log
protocols = lmtp
ssl = no
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
default_login_user = {login}
first_valid_uid = {min(owner.pw_uid, 100)}
first_valid_gid = {min(owner.pw_gid, 100)}
auth_username_format = %Lu
mail_location = maildir:{self.mail}/%u
userdb {{
  driver = passwd-file
  args = {passwd}
}}
passdb {{
  driver = passwd-file
  args = {passwd}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
""")
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> "Dovecot":
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

        def greets() -> bool:
            assert self.proc is not None and self.proc.poll() is None, \
                f"dovecot exited with {self.proc and self.proc.returncode}:\n{self.log}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    return s.recv(100).startswith(b"220 ")
            except OSError:
                return False

        wait_for(greets, 20, "Dovecot's LMTP greeting")
        return self

    def stop(self) -> None:
        """SIGTERM to the master, which ends its children; the whole group if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

        def closed() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) != 0

        wait_for(closed, 10, "Dovecot's port to close")

    def inbox(self, user: str) -> list[email.message.EmailMessage]:
        path = self.mail / user
        if not (path / "new").is_dir():
            return []
        box = mailbox.Maildir(str(path), factory=None, create=False)
        return [email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
                for key in box.keys()]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def dovecot():
    if not os.access(DOVECOT, os.X_OK) or not os.access("/usr/lib/dovecot/lmtp", os.X_OK):
        pytest.fail("Dovecot is not installed; tests/setup-system.sh installs it "
                    "(apt-get install dovecot-core dovecot-lmtpd)")
    server = Dovecot()
    yield server
    server.cleanup()


# ------------------------------------------------------------------ the mailet, in process

@pytest.fixture
def harness():
    with MailetHarness(states=("root", "error", "bounces")) as h:
        yield h


def test_per_recipient_outcomes(dovecot, harness):
    """alice and bob delivered, nobody bounced with Dovecot's words, broken (a Maildir
    Dovecot cannot write) retried alone; NOTIFY=SUCCESS earns its delivered report."""
    dovecot.start()
    mailet = harness.mailet(LMTPDelivery, {"host": f"127.0.0.1:{dovecot.port}",
                                           "maxRetries": "2", "delayTime": "30 s"})
    rcpts = ["alice@local.test", "nobody@local.test", "broken@local.test", "Bob@local.test"]
    mail = harness.mail(MESSAGE, sender="sender@remote.example", recipients=rcpts,
                        rcpt_params={"alice@local.test": {"NOTIFY": "SUCCESS"}})
    started = time.time()
    run = harness.service(mailet, mail)
    assert mail.state == "ghost"
    [alice] = dovecot.inbox("alice@local.test")
    [bob] = dovecot.inbox("bob@local.test")
    assert alice["Subject"] == "to the store" and alice["Return-Path"] == "<sender@remote.example>"
    assert alice.get_content() == "hello Dovecot\n.dotted line\n"
    assert bob["Message-ID"] == "<store-1@remote.example>"
    [retry] = [m for m in run.sent if m.sender]
    assert retry.recipients == ["broken@local.test"] and retry.name == mail.name
    assert retry.attributes["chainmail.retry_at"] >= started + 29
    [failed, delivered] = sorted((m.content.decode() for m in run.sent if not m.sender),
                                 key=lambda text: "Action: delivered" in text)
    assert "Final-Recipient: rfc822; nobody@local.test" in failed
    assert "Status: 5.1.1" in failed and "User doesn't exist: nobody@local.test" in failed
    assert "Final-Recipient: rfc822; alice@local.test" not in failed
    assert "Final-Recipient: rfc822; alice@local.test" in delivered
    assert "Bob@local.test" not in delivered
    # the retry, once the Maildir is writable, delivers broken@ only
    os.chmod(dovecot.mail / "broken@local.test", 0o700)
    again = harness.service(mailet, retry)
    assert again.sent == [] and len(dovecot.inbox("broken@local.test")) == 1
    assert len(dovecot.inbox("alice@local.test")) == 1


def test_retries_exhausted_bounce_with_the_stores_reply(dovecot, harness):
    dovecot.start()
    mailet = harness.mailet(LMTPDelivery, {"host": f"127.0.0.1:{dovecot.port}", "maxRetries": "0"})
    run = harness.service(mailet, harness.mail(MESSAGE, sender="sender@remote.example",
                                               recipients=["broken@local.test"]))
    [report] = run.sent
    text = report.content.decode()
    assert "Final-Recipient: rfc822; broken@local.test" in text and "Status: 5." in text
    assert "gave up after 0 retries" in text and "Diagnostic-Code: smtp; 451 4." in text


def test_unix_socket_and_bounce_processor(dovecot, harness):
    dovecot.start()
    mailet = harness.mailet(LMTPDelivery, {"host": dovecot.socket, "bounceProcessor": "bounces"})
    run = harness.service(mailet, harness.mail(MESSAGE, sender="sender@remote.example",
                                               recipients=["bob@local.test", "x@local.test"]))
    assert len(dovecot.inbox("bob@local.test")) == 1
    [bounce] = run.sent
    assert bounce.state == "bounces" and bounce.recipients == ["x@local.test"]
    assert bounce.attributes["is-delivery-permanent-error"] is True
    assert bounce.attributes["delivery-error-code"] == 550
    assert "User doesn't exist" in bounce.attributes["chainmail.delivery-errors"]["x@local.test"]


def test_unreachable_store_retries_the_whole_mail(dovecot, harness):
    # two stores: the first refuses connections, the second is stopped too
    mailet = harness.mailet(LMTPDelivery, {"host": f"127.0.0.1:{free_port()}, "
                                                   f"127.0.0.1:{dovecot.port}",
                                           "connectiontimeout": "2s"})
    mail = harness.mail(MESSAGE, recipients=["alice@local.test", "bob@local.test"])
    run = harness.service(mailet, mail)
    [retry] = run.sent
    assert retry.recipients == ["alice@local.test", "bob@local.test"]
    assert retry.attributes["chainmail.local-delivery-retries"] == 1
    assert sum("cannot connect to 127.0.0.1:" in line for line in run.logs) == 3   # each, then why


@pytest.fixture
def not_lmtp():
    """A server on 127.0.0.1 that greets and refuses LHLO, as an SMTP port does."""
    listener = socket.create_server(("127.0.0.1", 0))
    sessions: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"220 smtp.test ESMTP\r\n")
                sessions.append(conn.recv(1000))
                conn.sendall(b"500 5.5.1 Command LHLO unrecognized.\r\n")
                conn.recv(1000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], sessions
    listener.close()
    thread.join(5)


def test_a_store_refusing_lhlo_is_skipped_and_never_bounces(dovecot, harness, not_lmtp):
    port, sessions = not_lmtp
    dovecot.start()
    mailet = harness.mailet(LMTPDelivery, {"host": f"127.0.0.1:{port}, 127.0.0.1:{dovecot.port}"})
    run = harness.service(mailet, harness.mail(MESSAGE, recipients=["alice@local.test"]))
    assert run.sent == [] and len(dovecot.inbox("alice@local.test")) == 1
    # alone, the same refusal (a 5xx) is the store's problem: the mail waits for a retry
    mailet = harness.mailet(LMTPDelivery, {"host": f"127.0.0.1:{port}"})
    run = harness.service(mailet, harness.mail(MESSAGE, recipients=["alice@local.test"]))
    [retry] = run.sent
    assert retry.sender and retry.recipients == ["alice@local.test"]
    assert sessions[0].startswith(b"LHLO ") and len(sessions) == 2
    assert any("LMTP session with 127.0.0.1:" in line and "500 5.5.1" in line for line in run.logs)


def test_binary_mail_is_stored_as_lines(dovecot, harness):
    """Dovecot offers CHUNKING but not BINARYMIME: the binary part goes in base64."""
    dovecot.start()
    payload = bytes(range(256)) + b"\n\r\x00"
    content = (b"From: sender@remote.example\r\nSubject: bin\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary"
               b"\r\n\r\n" + payload)
    mailet = harness.mailet(LMTPDelivery, {"host": f"127.0.0.1:{dovecot.port}"})
    run = harness.service(mailet, harness.mail(content, recipients=["alice@local.test"],
                                               mail_params={"BODY": "BINARYMIME"}))
    assert run.sent == []
    [msg] = dovecot.inbox("alice@local.test")
    assert msg["Content-Transfer-Encoding"] == "base64"
    assert msg.get_content() == payload


@pytest.mark.parametrize("params,problem", [
    ({}, "host.*is required"),
    ({"host": "127.0.0.1:99999"}, "not a port number"),
    ({"host": "127.0.0.1", "timeout": "soon"}, "timeout"),
    ({"host": "127.0.0.1", "bounceProcessor": "nowhere"}, "no processor named 'nowhere'"),
])
def test_configuration_errors(harness, params, problem):
    with pytest.raises(ConfigError, match=problem):
        harness.mailet(LMTPDelivery, params)


# ------------------------------------------------------------------ a real chainmail run

def mailetcontainer(port: int) -> str:
    return f"""<mailetcontainer>
  <context><postmaster>postmaster@local.test</postmaster></context>
  <spooler><threads>2</threads></spooler>
  <processors>
    <processor state="root">
      <mailet match="SenderIsNull" class="ToRepository">
        <repositoryPath>file://var/mail/reports/</repositoryPath>
      </mailet>
      <mailet match="All" class="LMTPDelivery">
        <host>127.0.0.1:{port}</host>
        <lhloName>mx.local.test</lhloName>
        <timeout>10 s</timeout>
        <maxRetries>20</maxRetries>
        <delayTime>1 s</delayTime>
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


def reports(server) -> list[str]:
    repo = RepositoryStore(str(server.var)).get("file://var/mail/reports/")
    return [repo.retrieve(key).content.decode(errors="replace") for key in repo.keys()]


def test_chainmail_delivers_to_dovecot_and_bounces_unknown_users(dovecot, chainmail_factory):
    dovecot.start()
    server = chainmail_factory(files={"mailetcontainer.xml": mailetcontainer(dovecot.port)})
    with server.smtp() as s:
        assert s.sendmail("sender@remote.example",
                          ["alice@local.test", "bob@local.test", "nobody@local.test"],
                          MESSAGE) == {}
    wait_for(lambda: dovecot.inbox("alice@local.test") and dovecot.inbox("bob@local.test"),
             20, "the message in both Maildirs")
    for user in ("alice@local.test", "bob@local.test"):
        [msg] = dovecot.inbox(user)
        assert msg["Subject"] == "to the store"
        assert msg["Return-Path"] == "<sender@remote.example>"
        # Dovecot's trace field names chainmail's LHLO; chainmail's own follows it
        first, second = msg.get_all("Received")
        assert first.startswith("from mx.local.test ([127.0.0.1])") and "with LMTP" in first
        assert "by mx.test (chainmail)" in second
    [report] = wait_for(lambda: reports(server), 20, "the bounce")
    assert "Final-Recipient: rfc822; nobody@local.test" in report
    assert "Status: 5.1.1" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1 <nobody@local.test> User doesn't exist" in report
    assert "Remote-MTA: dns; 127.0.0.1\r\n" in report
    wait_for(lambda: server.queued() == [], 10, "an empty spool")


def test_stopped_dovecot_keeps_the_mail_queued_until_it_is_back(dovecot, chainmail_factory):
    server = chainmail_factory(files={"mailetcontainer.xml": mailetcontainer(dovecot.port)})
    with server.smtp() as s:
        assert s.sendmail("sender@remote.example", ["alice@local.test"], MESSAGE) == {}
    wait_for_log(server, r"temporary failure for <alice@local\.test>; retry 1 of 20", 20)
    [queued] = server.queued()
    assert queued.envelope.recipients == ["alice@local.test"]
    assert dovecot.inbox("alice@local.test") == []
    dovecot.start()
    [msg] = wait_for(lambda: dovecot.inbox("alice@local.test"), 20, "the retried delivery")
    assert msg["Subject"] == "to the store"
    wait_for(lambda: server.queued() == [], 10, "an empty spool")
    assert reports(server) == []
    assert "delivered to <alice@local.test> by LMTP" in server.log
