"""James's own sample configurations (memory, distributed and JPA apps, copied unchanged
under tests/config/james-apps/) run by a real ``chainmail run``.

The files bind 0.0.0.0:25, 465 and 587 and ask the system's resolver (dnsservice.xml
autodiscovers /etc/resolv.conf).  So that they run as shipped, the server runs in a network
namespace of its own (loopback only), where those ports are free, and where each of the
system's IPv4 name servers and 127.0.0.1 (the fallback) is an address of loopback with a
listener on port 53 that counts what reaches it: mail to local users must not ask DNS at
all.  The test talks to the server from a thread that joined that namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from chainmail.testing.stores import LocalStores, read_maildir

T = TypeVar("T")

SAMPLES = Path(__file__).resolve().parent.parent / "config" / "james-apps"
APPS = ("memory-app", "distributed-app", "jpa-app")
#: the apps whose local delivery runs JMAPFiltering (jpa-app's transport has none)
FILTERING_APPS = ("memory-app", "distributed-app")
CLONE_NEWNET = 0x40000000
PASSWORD = "secret-pass-1"


def _system_nameservers() -> list[str]:
    """The IPv4 name servers of /etc/resolv.conf (what autodiscover adds), and 127.0.0.1."""
    found = ["127.0.0.1"]
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and re.fullmatch(
                    r"\d+\.\d+\.\d+\.\d+", parts[1]) and parts[1] not in found:
                found.append(parts[1])
    return found


class Namespace:
    """A network namespace held by a sleeping process; :meth:`call` runs a function in a
    thread that joined it (sockets it makes stay in the namespace)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "600"])
        own = os.readlink("/proc/self/ns/net")
        self.path = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.readlink(self.path) == own:
            assert time.monotonic() < deadline, "unshare -n did not make a namespace"
            time.sleep(0.01)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *command: str) -> None:
        subprocess.run(["nsenter", f"--net={self.path}", *command], check=True, timeout=10)

    def call(self, fn: Callable[[], T]) -> T:
        box: dict[str, object] = {}

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as exc:   # handed to the caller
                box["error"] = exc

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join(120)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


class DnsWatch:
    """UDP and TCP listeners on port 53 of each name server address: whatever reaches them
    is a DNS question the server asked."""

    def __init__(self, ns: Namespace, addresses: list[str]) -> None:
        for address in addresses:
            if not address.startswith("127."):
                ns.run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        self.sockets: list[socket.socket] = ns.call(lambda: [
            s for address in addresses for s in self._listen(address)])

    @staticmethod
    def _listen(address: str) -> list[socket.socket]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((address, 53))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind((address, 53))
        tcp.listen(16)
        for s in (udp, tcp):
            s.setblocking(False)
        return [udp, tcp]

    def questions(self) -> int:
        count = 0
        for s in self.sockets:
            with contextlib.suppress(BlockingIOError):
                while True:
                    if s.type == socket.SOCK_DGRAM:
                        s.recvfrom(4096)
                    else:
                        s.accept()[0].close()
                    count += 1
        return count

    def close(self) -> None:
        for s in self.sockets:
            s.close()


class SampleServer:
    """``chainmail run`` on James's files of ``app``, in its own network namespace."""

    def __init__(self, base: Path, app: str) -> None:
        self.base, self.app = base, app
        self.conf, self.var = base / "conf", base / "var"
        shutil.copytree(SAMPLES / app, self.conf)
        self.cli("keystore")                      # James's sample points at conf/keystore
        for user in ("bob@localhost", "alice@localhost", "full@localhost", "carol@localhost",
                     "dave@localhost", "erin@localhost"):
            self.cli("user", "add", user, "--password-stdin", input=PASSWORD + "\n")
        self.cli("quota", "set", "full@localhost", "1")
        self.ns = Namespace()
        self.dns = DnsWatch(self.ns, _system_nameservers())
        self.log_path = base / "chainmail.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.ns.path}", sys.executable, "-m", "chainmail", "run",
             "--conf", str(self.conf), "--var", str(self.var)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(base),
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.stores = LocalStores(self.var, default_domain="localhost")
        self.wait_for(lambda: "chainmail ready" in self.log, 30, "chainmail ready")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "chainmail", *args, "--conf", str(self.conf),
                               "--var", str(self.var)], input=input, capture_output=True,
                              text=True, timeout=60, cwd=str(self.base))
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def wait_for(self, condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if getattr(self, "proc", None) is not None and self.proc.poll() is not None:
                raise AssertionError(f"chainmail exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s:\n{self.log}")
            time.sleep(0.05)

    def send(self, sender: str, recipient: str, subject: str, port: int = 25) -> None:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = sender, recipient, subject
        msg["Message-ID"] = f"<{time.monotonic_ns()}@client.test>"
        msg.set_content("hello from the test\n")
        data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))

        def exchange() -> None:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
                assert c.sendmail(sender, [recipient], data) == {}
        self.ns.call(exchange)

    def mailbox(self, user: str, folder: str = "") -> list[bytes]:
        root = self.stores.mailboxes.path_for(user)
        return read_maildir(os.path.join(root, folder) if folder else root)

    def wait_for_mailbox(self, user: str, count: int = 1, folder: str = "") -> list[bytes]:
        return self.wait_for(lambda: (lambda m: m if len(m) >= count else None)(
            self.mailbox(user, folder)), 20, f"{count} message(s) for {user} {folder}")

    def metric_lines(self, name: str) -> list[str]:
        return re.findall(rf"metric {re.escape(name)} is now \d+", self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.stores.close()
        self.dns.close()
        self.ns.close()


@pytest.fixture
def sample(request, tmp_path):
    server = SampleServer(tmp_path, request.param)
    yield server
    server.stop()


@pytest.mark.parametrize("sample", APPS, indirect=True)
def test_james_sample_runs_unchanged(sample):
    for app_file in (SAMPLES / sample.app).iterdir():      # the files are James's, unedited
        assert (sample.conf / app_file.name).read_bytes() == app_file.read_bytes()
    log = sample.log
    for port in (25, 465, 587):
        assert f"listening on 0.0.0.0:{port}" in log

    # a mail to a local user: delivered, one Delivered-To (AddDeliveredToHeader)
    sample.send("alice@localhost", "bob@localhost", "first")
    (delivered,) = sample.wait_for_mailbox("bob@localhost")
    assert delivered.count(b"Delivered-To:") == 1
    assert b"Delivered-To: bob@localhost" in delivered and b"Subject: first" in delivered

    # over quota: LocalDelivery sends it to "error", where MetricsMailet counts it and the
    # not-reprocessed Bounce tells the (local) sender; then it is stored in the repository
    sample.send("alice@localhost", "full@localhost", "too big")
    (bounce,) = sample.wait_for_mailbox("alice@localhost")
    assert b"552 5.2.2" in bounce and b"full@localhost" in bounce
    assert sample.metric_lines("mailetContainerErrors") == ["metric mailetContainerErrors is now 1"]
    sample.wait_for(lambda: "error" in sample.cli("repository", "list"), 10, "the error repository")

    # reprocessed (James's mailRepository-reprocessing): counted again, not bounced again
    sample.cli("repository", "reprocess", "error")
    sample.wait_for(lambda: len(sample.metric_lines("mailetContainerErrors")) == 2, 20,
                    "the second error")
    sample.wait_for(lambda: len(sample.stores.repository("error")) == 1, 20, "stored again")
    sample.wait_for(lambda: not sample.stores.spooled(), 20, "an empty spool")
    assert len(sample.mailbox("alice@localhost")) == 1

    # SMTPS on 465 with the keystore and James's sample password
    def tls_greeting() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", 465), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                return tls.recv(512)
    assert sample.ns.call(tls_greeting).startswith(b"220 ")

    assert sample.dns.questions() == 0          # local mail never asks DNS
    assert "Traceback" not in sample.log


@pytest.mark.parametrize("sample", APPS, indirect=True)
def test_users_rules_sieve_filters_and_vacation(sample):
    """Each of the app's local-delivery mailets, for a user of its own."""
    text = (sample.conf / "mailetcontainer.xml").read_text()
    # Sieve (every app): carol's script files mail about sieve
    script = sample.base / "carol.sieve"
    script.write_text('require "fileinto";\r\n'
                      'if header :contains "subject" "sieve" { fileinto "Sieved"; }\r\n')
    sample.cli("sieve", "put", "carol@localhost", "main", str(script), "--activate")
    sample.send("alice@localhost", "carol@localhost", "a sieve test")
    (filed,) = sample.wait_for_mailbox("carol@localhost", folder=".Sieved")
    assert b"Subject: a sieve test" in filed
    assert filed.count(b"Delivered-To: carol@localhost") == 1
    assert sample.mailbox("carol@localhost") == []

    if sample.app in FILTERING_APPS:
        assert "JMAPFiltering" in text and "VacationMailet" in text
        # JMAPFiltering: dave's rule files the news
        out = sample.cli("filter", "add", "dave@localhost", "--if", "subject", "contains",
                         "[news]", "--folder", "News")
        assert "added rule 1 for dave@localhost" in out
        assert "subject contains" in sample.cli("filter", "list", "dave@localhost")
        sample.send("alice@localhost", "dave@localhost", "[news] weekly")
        sample.send("alice@localhost", "dave@localhost", "not news")
        (news,) = sample.wait_for_mailbox("dave@localhost", folder=".News")
        assert b"Subject: [news] weekly" in news
        assert news.count(b"Delivered-To: dave@localhost") == 1
        (inbox,) = sample.wait_for_mailbox("dave@localhost")
        assert b"Subject: not news" in inbox

        # VacationMailet: erin is away; the (local) sender gets one auto-reply
        sample.cli("vacation", "set", "erin@localhost", "--subject", "Away", "--text",
                   "Back on Monday.")
        sample.send("bob@localhost", "erin@localhost", "are you there")
        (kept,) = sample.wait_for_mailbox("erin@localhost")
        assert b"Subject: are you there" in kept
        (reply,) = sample.wait_for_mailbox("bob@localhost")
        assert b"Auto-Submitted: auto-replied" in reply and b"Back on Monday." in reply
        assert b"Return-Path: <>" in reply
    else:
        assert "JMAPFiltering" not in text and "VacationMailet" not in text
    assert sample.dns.questions() == 0
    assert "Traceback" not in sample.log


def test_filter_command_line(tmp_path):
    conf, var = tmp_path / "conf", tmp_path / "var"
    shutil.copytree(SAMPLES / "memory-app", conf)

    def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chainmail", *args, "--conf", str(conf),
                               "--var", str(var)], input=input, capture_output=True, text=True,
                              timeout=60)

    assert cli("filter", "list", "bob@localhost").returncode == 2        # no state directory
    assert cli("user", "add", "bob@localhost", "--password-stdin",
               input=PASSWORD + "\n").returncode == 0
    missing = cli("filter", "add", "nobody@localhost", "--if", "subject", "any", "", "--reject")
    assert missing.returncode == 1 and "no user nobody@localhost" in missing.stderr
    bad = cli("filter", "add", "bob@localhost", "--if", "body", "contains", "x", "--reject")
    assert bad.returncode == 2 and "not a field" in bad.stderr
    bad = cli("filter", "add", "bob@localhost", "--if", "subject", "contains", "x",
              "--folder", "../../etc")
    assert bad.returncode == 2 and "'..'" in bad.stderr
    assert cli("filter", "add", "bob@localhost", "--if", "from", "contains", "boss",
               "--if", "header:X-Priority", "start-with", "1", "--any",
               "--move-to", "Urgent", "--name", "boss").returncode == 0
    rule = ('{"id": "fw", "name": "fw", "conditionGroup": {"conditionCombiner": "AND", '
            '"conditions": [{"field": "to", "comparator": "contains", "value": "list@"}]}, '
            '"action": {"appendIn": {"mailboxIds": []}, "reject": false, '
            '"forwardTo": {"addresses": ["me@else.example"], "keepACopy": true}}}')
    added = cli("filter", "add", "bob@localhost", "--json", "-", input=rule)
    assert added.returncode == 0, added.stderr
    listed = cli("filter", "list", "bob@localhost").stdout.splitlines()
    assert listed == [
        '1 (boss): if from contains "boss" or header:X-Priority start-with "1": into Urgent',
        'fw: if to contains "list@": forward to me@else.example (keep a copy)']
    as_json = cli("filter", "list", "bob@localhost", "--json").stdout
    assert '"keepACopy": true' in as_json and '"mailboxName": "Urgent"' in as_json
    assert cli("filter", "remove", "bob@localhost", "1").returncode == 0
    assert cli("filter", "remove", "bob@localhost", "1").returncode == 1
    assert "removed 1 rule(s)" in cli("filter", "clear", "bob@localhost").stdout
    assert cli("filter", "list", "bob@localhost").returncode == 1
