"""Postfix's LMTP client delivering through chainmail: a private Postfix instance, started by
the test with its own configuration and queue directories, listening on no port at all
(mail is injected with its sendmail command), relaying everything to chainmail with
``default_transport = lmtp:inet:127.0.0.1:PORT``.  No DNS: IP-literal next hop, DNS
lookups disabled."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ..conftest import alive, need
from .test_lmtp import lmtpserver_xml, maildir, with_users
from .test_auth import cli

# Only the services a queue manager and an LMTP client need: no inet listener, no chroot.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def main_cf(base: Path, lmtp_port: int) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.test
mydomain = pf.test
myorigin = pf.test
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
default_transport = lmtp:inet:127.0.0.1:{lmtp_port}
relay_transport = lmtp:inet:127.0.0.1:{lmtp_port}
disable_dns_lookups = yes
smtp_dns_support_level = disabled
lmtp_host_lookup = native
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
bounce_queue_lifetime = 0
smtputf8_enable = no
biff = no
"""


class PrivatePostfix:
    def __init__(self, lmtp_port: int):
        self.postfix = need("postfix")
        self.sendmail = next(p for p in ("/usr/sbin/sendmail", shutil.which("sendmail")) if p and os.path.exists(p))
        # Outside pytest's 0700 tmp tree: the postfix user must reach its queue directory.
        self.base = Path(tempfile.mkdtemp(prefix="chainmail-postfix-", dir="/tmp"))
        self.base.chmod(0o755)
        self.conf = self.base / "etc"
        self.conf.mkdir()
        (self.base / "queue").mkdir(mode=0o755)   # `postfix check` fills it in
        (self.conf / "main.cf").write_text(main_cf(self.base, lmtp_port))
        (self.conf / "master.cf").write_text(MASTER_CF)
        self.maillog = self.base / "maillog"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.postfix, "-c", str(self.conf), *args],
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            # postfix(1) writes its errors to stderr only on a terminal: they are in maillog.
            raise AssertionError(f"postfix {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}{self.log()}")
        return result

    def start(self) -> None:
        self.run("check")     # creates the queue directories with their owners
        self.run("start")

    def inject(self, sender: str, recipients: list[str], message: str) -> None:
        result = subprocess.run([self.sendmail, "-C", str(self.conf), "-f", sender, *recipients],
                                input=message, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if re.search(pattern, text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"Postfix did not log {pattern!r} within {timeout} s:\n{self.log()}")

    def master_pid(self) -> int | None:
        try:
            return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        pid = self.master_pid()
        try:
            self.run("stop", check=False)
        finally:
            if pid is not None:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and alive(pid):
                    time.sleep(0.02)
                if alive(pid):   # leftovers: the master takes its children with it
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.base, ignore_errors=True)




@pytest.fixture
def postfix_to_chainmail(chainmail_factory):
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root (postfix -c DIR start)")
    instances = []

    def start():
        server = chainmail_factory(files={"lmtpserver.xml": lmtpserver_xml()})
        server.lmtp_port = server.ports[-1]
        postfix = PrivatePostfix(server.lmtp_port)
        instances.append(postfix)
        postfix.start()
        return server, postfix

    yield start
    for postfix in instances:
        postfix.stop()


def message(subject: str) -> str:
    return (f"From: sender@remote.example\nTo: bob@local.test, cedric@local.test\n"
            f"Subject: {subject}\nMessage-ID: <{subject.replace(' ', '-')}@remote.example>\n\n"
            f"body of {subject}\n")


def wait_for_mail(server, user: str, count: int = 1, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (server.var / "mail" / user).is_dir():
            found = list(maildir(server, user))
            if len(found) >= count:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no mail for {user} within {timeout} s")


def test_postfix_delivers_through_chainmail_lmtp(postfix_to_chainmail):
    server, postfix = postfix_to_chainmail()
    with_users(server, "bob@local.test", "cedric@local.test")
    postfix.inject("sender@remote.example", ["bob@local.test", "cedric@local.test"],
                   message("through postfix"))
    for user in ("bob@local.test", "cedric@local.test"):
        [msg] = wait_for_mail(server, user)
        assert msg["Subject"] == "through postfix"
        assert "(LHLO pf.test)" in msg["Received"] and "with LMTP" in msg["Received"]
    log = postfix.wait_log(r"to=<cedric@local\.test>.*status=sent")
    assert re.search(r"to=<bob@local\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*"
                     r"status=sent \(250 2\.6\.0 Message received <bob@local\.test>\)", log)


def test_postfix_bounces_only_the_over_quota_recipient(postfix_to_chainmail):
    server, postfix = postfix_to_chainmail()
    with_users(server, "bob@local.test", "cedric@local.test")
    assert cli(server, "quota", "set", "bob@local.test", "10").returncode == 0   # read at each delivery
    postfix.inject("sender@remote.example", ["bob@local.test", "cedric@local.test"],
                   message("over quota") + "x" * 500 + "\n")
    [msg] = wait_for_mail(server, "cedric@local.test")
    assert msg["Subject"] == "over quota"
    log = postfix.wait_log(r"to=<bob@local\.test>.*status=(bounced|deferred)")
    assert re.search(r"to=<cedric@local\.test>.*status=sent \(250 2\.6\.0 Message received", log)
    assert re.search(r"to=<bob@local\.test>.*status=bounced .*552 5\.2\.2 Over Quota", log)
    assert not re.search(r"to=<cedric@local\.test>.*status=(bounced|deferred)", log)
    assert not (server.var / "mail" / "bob@local.test" / "new").exists() or \
        list((server.var / "mail" / "bob@local.test" / "new").iterdir()) == []


def test_postfix_unknown_recipient_is_refused_at_rcpt(postfix_to_chainmail):
    server, postfix = postfix_to_chainmail()
    with_users(server, "bob@local.test")
    postfix.inject("sender@remote.example", ["bob@local.test", "nobody@local.test"], message("unknown"))
    wait_for_mail(server, "bob@local.test")
    log = postfix.wait_log(r"to=<nobody@local\.test>.*status=bounced")
    assert re.search(r"to=<nobody@local\.test>.*550 5\.1\.1", log)
