"""Outgoing mail end to end: a real ``chainmail run`` with the shipped mailetcontainer.xml
(RemoteDelivery in the relay processor, DSNBounce in "bounces") delivers to exchangers found
through a fake DNS: other chainmail instances, Postfix's smtp-sink and scripted peers.

Everything stays on loopback: conf/dnsservice.xml names only the fake DNS (autodiscover
off), every MX and A record points into 127.0.0.0/8, and each exchanger listens on its own
127.0.0.x address on one shared port, which RemoteDelivery reaches through its
``mail.smtp.port`` parameter.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from chainmail.remote.control import outgoing_root
from chainmail.store.spool import DirectorySpool

from ..conftest import CHAINMAIL, DOMAINLIST, ROOT, ChainmailProcess, need, smtpserver_xml
from .remote_env import Exchanger, LoopbackWorld, SmtpSink, free_port, message_ids
from .test_mailets import cli, inbox, ok, repo_keys, wait_for

SHIPPED = (ROOT / "conf" / "mailetcontainer.xml").read_text()
REMOTE_DELIVERY = re.compile(r'<mailet match="All" class="RemoteDelivery">.*?</mailet>', re.S)
CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
AUTH_BLOCK = "<auth><requireSSL>false</requireSSL><announce>always</announce></auth>"
PASSWORD = "outgoing secret"
ALICE = "alice@local.test"


def container(port: int, **params) -> str:
    """The shipped mailetcontainer.xml with RemoteDelivery's parameters set for the tests
    (short delays and timeouts, exchangers on ``port``); ``None`` drops a parameter."""
    settings = {"outgoing": "outgoing", "delayTime": "1s, 1s", "maxRetries": "2",
                "maxDnsProblemRetries": "0", "sendpartial": "true",
                "bounceProcessor": "bounces", "timeout": "1500", "connectiontimeout": "1000",
                "mail.smtp.port": str(port)}
    for key, value in params.items():
        settings[key.replace("__", ".")] = value
    body = "".join(f"\n                <{k}>{v}</{k}>" for k, v in settings.items() if v is not None)
    mailet = f'<mailet match="All" class="RemoteDelivery">{body}\n            </mailet>'
    assert REMOTE_DELIVERY.search(SHIPPED), "the shipped relay processor changed"
    return REMOTE_DELIVERY.sub(lambda _: mailet, SHIPPED, count=1)


class Env:
    """The chainmail processes and smtp-sinks of one test, around its loopback world."""

    def __init__(self, world: LoopbackWorld, tmp_path: Path) -> None:
        self.world = world
        self.dns = world.dns
        self.tmp = tmp_path
        self.procs: list[ChainmailProcess] = []
        self.sinks: list[SmtpSink] = []
        self.port = 0

    def pick_port(self, *hosts: str) -> int:
        self.port = free_port(list(hosts) or ["127.0.0.2"])
        return self.port

    def mx(self, domain: str, *exchangers: tuple[int, str]) -> None:
        """MX records for ``domain``: ``(preference, address)`` each, named mx<pref>.<domain>."""
        for pref, address in exchangers:
            name = f"mx{pref}.{domain}"
            self.dns.add(domain, "MX", (pref, name))
            self.dns.add(name, "A", address)

    def exchanger(self, host: str, **kwargs) -> Exchanger:
        return self.world.exchanger(host, self.port, Exchanger(**kwargs))

    def sink(self, host: str, *extra: str) -> SmtpSink:
        sink = SmtpSink(need("smtp-sink"), host, self.port, self.tmp, *extra)
        self.sinks.append(sink)
        return sink

    def chainmail(self, name: str, *, smtp: str, domains=("local.test",), mailets: str,
                  users=(), files=None) -> ChainmailProcess:
        base = self.tmp / name
        conf, var = base / "conf", base / "var"
        conf.mkdir(parents=True)
        (conf / "smtpserver.xml").write_text(f"<smtpservers>\n{smtp}\n</smtpservers>\n")
        (conf / "domainlist.xml").write_text(DOMAINLIST.format(
            names="".join(f"<domainname>{d}</domainname>" for d in domains), default=domains[0]))
        (conf / "dnsservice.xml").write_text(self.world.dns_xml())
        (conf / "mailetcontainer.xml").write_text(mailets)
        for fname, text in (files or {}).items():
            (conf / fname).write_text(text)
        for user in users:   # before the start: the server sees them at once
            result = subprocess.run([*CHAINMAIL, "user", "add", user, "--password-stdin",
                                     "--conf", str(conf), "--var", str(var)],
                                    input=PASSWORD + "\n", capture_output=True, text=True,
                                    timeout=30)
            assert result.returncode == 0, result.stderr
        return self.start(conf, var)

    def start(self, conf: Path, var: Path) -> ChainmailProcess:
        proc = ChainmailProcess(conf, var)
        self.procs.append(proc)
        return proc

    def sender(self, *, auth: bool = False, **params) -> ChainmailProcess:
        """The sending chainmail: local domain local.test with user alice; with ``auth``
        only authenticated clients may relay, else any loopback client."""
        smtp = (smtpserver_xml(AUTH_BLOCK, core=CORE, authorized="", hello="out.local.test")
                if auth else smtpserver_xml(hello="out.local.test"))
        return self.chainmail("sender", smtp=smtp, mailets=container(self.port, **params),
                              users=[ALICE])

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for sink in self.sinks:
            sink.cleanup()


@pytest.fixture
def world():
    world = LoopbackWorld()
    yield world
    world.close()


@pytest.fixture
def env(world, tmp_path):
    env = Env(world, tmp_path)
    yield env
    env.close()


def make_message(subject: str, sender: str = ALICE, to: str = "someone") -> tuple[str, str]:
    """A test message and its Message-ID; its last line ``end-of-<subject>`` marks it whole."""
    mid = f"<{subject}.{uuid.uuid4().hex[:12]}@local.test>"
    text = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n"
            f"body of {subject}\r\nend-of-{subject}\r\n")
    return text, mid


def submit(server: ChainmailProcess, rcpts: list[str], subject: str, *, sender: str = ALICE,
           login: bool = False) -> str:
    text, mid = make_message(subject, sender)
    with server.smtp() as s:
        if login:
            s.login(sender, PASSWORD)
        assert s.sendmail(sender, rcpts, text) == {}
    return mid


def outgoing(server: ChainmailProcess, name: str = "outgoing") -> list:
    root = Path(outgoing_root(server.var, name))
    return DirectorySpool(str(root)).list() if (root / "queue").is_dir() else []


def queued_ids(server: ChainmailProcess) -> set[str]:
    """Message-IDs of what the (stopped) server holds in its spool and outgoing queue."""
    ids: set[str] = set()
    for root in (server.var / "spool", Path(outgoing_root(server.var, "outgoing"))):
        if not (root / "queue").is_dir():
            continue
        spool = DirectorySpool(str(root))
        for entry in spool.list():
            with spool.open_body(entry.id) as fh:
                ids.update(message_ids(fh.read()))
    return ids


def dsn(server: ChainmailProcess, user: str = ALICE, count: int = 1, timeout: float = 20):
    """The user's Maildir once it holds ``count`` messages; the last one parsed as an RFC 3464
    report: (message, per-message fields, {final recipient: per-recipient fields})."""
    box = wait_for(lambda: len(inbox(server, user)) >= count and inbox(server, user),
                   timeout=timeout, what=f"a bounce for {user}")
    assert len(box) == count
    parsed = email.message_from_bytes(box[-1].as_bytes(), policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["Return-Path"] == "<>"
    parts = parsed.get_payload()
    [status] = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    fields = status.get_payload()
    per_rcpt = {}
    for block in fields[1:]:
        kind, _, address = block["Final-Recipient"].partition(";")
        assert kind.strip().lower() == "rfc822"
        per_rcpt[address.strip()] = block
    assert fields[0]["Reporting-MTA"]
    return parsed, fields[0], per_rcpt


def original_of(report) -> email.message.Message:
    [attached] = [p for p in report.get_payload() if p.get_content_type() == "message/rfc822"]
    return attached.get_payload()[0]


# -------------------------------------------------------------------- 1. authenticated


def test_authenticated_submission_reaches_a_chainmail_mx_and_smtp_sink(env):
    """An authenticated user's message to two remote domains is split by domain and reaches
    each domain's MX found through DNS: another chainmail (its Maildir) and smtp-sink."""
    env.pick_port("127.0.0.3", "127.0.0.4")
    env.mx("remote.test", (10, "127.0.0.3"))
    env.mx("sink.test", (10, "127.0.0.4"))
    remote = env.chainmail("remote", smtp=smtpserver_xml(bind=f"127.0.0.3:{env.port}",
                                                         hello="mx.remote.test", authorized=""),
                           domains=("remote.test",), mailets=container(env.port),
                           users=["bob@remote.test"])
    assert remote.ports == [env.port]
    sink = env.sink("127.0.0.4")
    sender = env.sender(auth=True)

    # without AUTH the sender may not relay
    with sender.smtp() as s:
        s.ehlo("client.test")
        s.mail(ALICE)
        assert s.rcpt("bob@remote.test")[0] == 530
    mid = submit(sender, ["bob@remote.test", "carol@sink.test"], "authenticated", login=True)

    [m] = wait_for(lambda: inbox(remote, "bob@remote.test"), timeout=15, what="bob's message")
    assert m["Message-ID"] == mid and m["Subject"] == "authenticated"
    assert m["Return-Path"] == f"<{ALICE}>"
    received = m.get_all("Received")
    assert received[0].startswith("from local.test (EHLO local.test)")  # heloName: the default domain
    assert "by out.local.test (chainmail) with ESMTPA" in received[1]   # authenticated
    [dump] = wait_for(lambda: sink.messages(b"end-of-authenticated"), timeout=15,
                      what="the smtp-sink dump")
    assert dump["Message-ID"] == mid
    assert dump["X-Mail-Args"].startswith(f"<{ALICE}>")
    assert dump.get_all("X-Rcpt-Args") == ["<carol@sink.test>"]       # its domain's only
    assert ("remote.test", "MX") in env.dns.queries and ("sink.test", "MX") in env.dns.queries
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    assert inbox(sender, ALICE) == []                                  # no bounce
    assert len(inbox(remote, "bob@remote.test")) == 1 and len(sink.messages(mid.encode())) == 1


# -------------------------------------------------------------------- 2. MX failover


def test_preferred_mx_refusing_connections_fails_over_to_the_next(env):
    """The preferred MX refuses connections (nothing listens): the second one gets the mail,
    once, and the sender gets no bounce."""
    env.pick_port("127.0.0.2", "127.0.0.3")
    env.mx("failover.test", (10, "127.0.0.2"), (20, "127.0.0.3"))
    good = env.exchanger("127.0.0.3")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.2", env.port)) != 0       # refused
    sender = env.sender()
    mid = submit(sender, ["bob@failover.test"], "failover")
    wait_for(lambda: good.messages, timeout=15, what="the second MX's copy")
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    log = sender.log
    refused = log.index(f"mx10.failover.test: cannot connect to 127.0.0.2:{env.port}")
    assert refused < log.index("delivered to bob@failover.test at mx20.failover.test")
    time.sleep(1.5)   # longer than a retry delay: nothing comes again
    assert good.message_ids() == [mid]
    assert good.envelopes[0][1] == [b"RCPT TO:<bob@failover.test>"]
    assert inbox(sender, ALICE) == []


# -------------------------------------------------------------------- 3. 421 greeting


def test_421_greeting_is_retried_then_bounced_to_the_local_sender(env):
    """An MX answering 421 at the greeting is tried maxRetries + 1 times on the delayTime
    schedule; then the local sender gets an RFC 3464 report: failed, with the temporary
    status made permanent (4.3.2 -> 5.3.2, as Postfix), the MTA and its reply."""
    env.pick_port("127.0.0.2")
    env.mx("busy.test", (10, "127.0.0.2"))
    busy = env.exchanger("127.0.0.2", greeting=b"421 4.3.2 Service busy, try later\r\n")
    sender = env.sender(delayTime="1s, 1s", maxRetries="2")
    submit(sender, ["bob@busy.test"], "busy")
    report, _, per_rcpt = dsn(sender)
    assert busy.connections == 3                       # the first attempt and two retries
    times = busy.connected_at
    assert all(0.9 <= b - a < 4 for a, b in zip(times, times[1:])), times   # "1s, 1s"
    block = per_rcpt["bob@busy.test"]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.3.2"
    assert "421" in block["Diagnostic-Code"] and "Service busy" in block["Diagnostic-Code"]
    assert block["Remote-MTA"] == "dns; mx10.busy.test"
    assert original_of(report)["Subject"] == "busy"
    assert report["To"].addresses[0].addr_spec == ALICE
    assert not env.world.queried("local.test")          # delivered locally, not sent out
    time.sleep(1.5)
    assert busy.connections == 3 and not outgoing(sender)


def test_bounce_after_retries_reports_when_the_message_arrived(env):
    """RFC 3464 §2.2.5: the Arrival-Date of a bounce given after retries is when the message
    arrived at the reporting MTA, not when it was last queued for a retry."""
    env.pick_port("127.0.0.2")
    env.mx("busy.test", (10, "127.0.0.2"))
    env.exchanger("127.0.0.2", greeting=b"421 4.3.2 Service busy, try later\r\n")
    sender = env.sender(delayTime="2s, 1s", maxRetries="2")
    submit(sender, ["bob@busy.test"], "arrival")
    report, fields, _ = dsn(sender)
    received = original_of(report)["Received"].rpartition(";")[2].strip()
    arrived = email.utils.parsedate_to_datetime(received).timestamp()
    reported = email.utils.parsedate_to_datetime(fields["Arrival-Date"]).timestamp()
    assert arrived <= reported <= arrived + 1, (received, fields["Arrival-Date"])


# -------------------------------------------------------------------- 4. partial refusal


def test_550_to_one_of_two_recipients_delivers_the_other_and_bounces_the_refused(env):
    """sendpartial: the accepted recipient gets the mail once; the refused one bounces with
    a 5.x.x status and the remote reply as Diagnostic-Code."""
    env.pick_port("127.0.0.2")
    env.mx("partial.test", (10, "127.0.0.2"))

    def rcpt(line: bytes) -> bytes:
        if b"nobody@" in line:
            return b"550 5.1.1 <nobody@partial.test>: Recipient address rejected\r\n"
        return b"250 2.1.5 OK\r\n"

    mx = env.exchanger("127.0.0.2", replies={"RCPT": rcpt})
    sender = env.sender(sendpartial="true")
    mid = submit(sender, ["bob@partial.test", "nobody@partial.test"], "partial")
    report, _, per_rcpt = dsn(sender)
    assert set(per_rcpt) == {"nobody@partial.test"}
    block = per_rcpt["nobody@partial.test"]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <nobody@partial.test>: Recipient address rejected")
    assert block["Remote-MTA"] == "dns; mx10.partial.test"
    assert original_of(report)["Message-ID"] == mid
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    time.sleep(1.5)   # past the retry delay: the delivered recipient is not sent again
    assert mx.message_ids() == [mid]
    assert mx.envelopes[0][1] == [b"RCPT TO:<bob@partial.test>"]


# -------------------------------------------------------------------- 5. stalled MX


def test_stalled_mx_times_out_and_is_retried_or_fails_over(env):
    """An MX that accepts TCP and never greets times out (timeout 1.5 s): alone it is tried
    again later; before a good MX, the good one gets the mail."""
    env.pick_port("127.0.0.2", "127.0.0.3", "127.0.0.4")
    env.mx("stall.test", (10, "127.0.0.2"))
    env.mx("stall-failover.test", (10, "127.0.0.4"), (20, "127.0.0.3"))
    stalled = env.exchanger("127.0.0.2", greeting=None)
    stalled_first = env.exchanger("127.0.0.4", greeting=None)
    good = env.exchanger("127.0.0.3")
    sender = env.sender(delayTime="1s, 1s", maxRetries="2", timeout="1500")
    mid = submit(sender, ["bob@stall.test", "carol@stall-failover.test"], "stall")

    wait_for(lambda: good.messages, timeout=15, what="the good MX's copy")
    assert good.message_ids() == [mid]
    assert good.envelopes[0][1] == [b"RCPT TO:<carol@stall-failover.test>"]
    assert stalled_first.connections == 1
    [lasted] = wait_for(lambda: stalled_first.closed_after, timeout=5, what="the hang-up")
    assert 1.3 <= lasted < 3, lasted          # the client gave up after its timeout and closed
    # the lone stalled MX: timed out, re-queued, tried again
    wait_for(lambda: stalled.connections >= 2, timeout=15, what="a second attempt")
    first, second = stalled.connected_at[:2]
    assert second - first >= 1.5 + 1 - 0.2      # timed out after 1.5 s, retried 1 s later
    waiting = wait_for(lambda: [e for e in outgoing(sender)
                                if int(e.envelope.attributes.get("delivery_retry_count") or 0) >= 1],
                       timeout=10, what="the re-queued entry")
    assert waiting[0].envelope.recipients == ["bob@stall.test"]
    assert "did not answer within 1.5 s" in waiting[0].envelope.attributes.get("last_error", "")
    assert inbox(sender, ALICE) == []   # not given up yet


# -------------------------------------------------------------------- 6. null MX


def test_null_mx_bounces_at_once_without_retry(env):
    """A domain publishing a null MX (MX 0 .) accepts no mail: a 5.x.x bounce after one
    lookup, and no retry."""
    env.pick_port("127.0.0.2")
    env.dns.add("nullmx.test", "MX", (0, "."))
    sender = env.sender(delayTime="1 minute", maxRetries="2")
    submit(sender, ["bob@nullmx.test"], "nullmx")
    report, _, per_rcpt = dsn(sender, timeout=10)    # well before the first retry was due
    block = per_rcpt["bob@nullmx.test"]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.10"                  # RFC 7505 §4.2
    assert block["Diagnostic-Code"].startswith("X-chainmail; ")   # no server's reply
    assert "null MX" in block["Diagnostic-Code"]
    assert block["Remote-MTA"] is None                  # no server was asked
    wait_for(lambda: not outgoing(sender), timeout=5,   # nothing re-queued (it would wait
             what="an empty outgoing queue")            # a minute)
    time.sleep(1.5)
    assert env.world.queried("nullmx.test", "MX") == [("nullmx.test", "MX")]
    assert len(inbox(sender, ALICE)) == 1


# -------------------------------------------------------------------- 7. implicit MX


def test_domain_without_mx_is_delivered_to_its_address(env):
    """No MX record but an A record: the domain itself is the exchanger (RFC 5321 §5.1)."""
    env.pick_port("127.0.0.5")
    env.dns.add("a-only.test", "A", "127.0.0.5")
    mx = env.exchanger("127.0.0.5")
    sender = env.sender()
    mid = submit(sender, ["bob@a-only.test"], "implicit")
    wait_for(lambda: mx.messages, timeout=15, what="the implicit MX's copy")
    assert mx.message_ids() == [mid]
    assert env.world.queried("a-only.test", "MX") and env.world.queried("a-only.test", "A")
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    assert inbox(sender, ALICE) == []


# -------------------------------------------------------------------- 8. gateways


GATEWAY_MAILETS = REMOTE_DELIVERY.sub(
    lambda _: ('<mailet match="All" class="ToRepository">'
               "<repositoryPath>file://var/mail/relayed/</repositoryPath></mailet>"),
    SHIPPED, count=1)


def test_gateway_with_auth_gets_the_mail_without_mx_lookup(env):
    """gateway + gatewayUsername: the mail goes to the gateway (a chainmail that relays
    only for authenticated clients), found by its own name; the recipient's domain is never
    looked up as MX."""
    env.pick_port("127.0.0.3")
    env.mx("far.test", (10, "127.0.0.9"))            # must not be used
    env.dns.add("gw.test", "A", "127.0.0.3")
    gateway = env.chainmail(
        "gateway", smtp=smtpserver_xml(AUTH_BLOCK, bind=f"127.0.0.3:{env.port}", core=CORE,
                                       authorized="", hello="gw.test"),
        domains=("gw.test",), mailets=GATEWAY_MAILETS, users=["relay@gw.test"])
    sender = env.sender(gateway=f"gw.test:{env.port}", gatewayUsername="relay@gw.test",
                        gatewayPassword=PASSWORD)
    mid = submit(sender, ["bob@far.test", "carol@elsewhere.test"], "via-gateway")
    [key] = wait_for(lambda: repo_keys(gateway, "relayed"), timeout=15,
                     what="the mail at the gateway")
    shown = ok(cli(gateway, "repository", "show", "relayed", key))
    assert mid in shown
    assert "<bob@far.test>" in shown and "<carol@elsewhere.test>" in shown   # one transaction
    assert "by gw.test (chainmail) with ESMTPA" in shown            # it authenticated
    assert repo_keys(gateway, "relay-denied") == []
    assert not env.world.queried("far.test") and not env.world.queried("elsewhere.test")
    assert env.world.queried("gw.test", "A")
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")


def test_gateway_without_auth_to_smtp_sink(env):
    """gateway without credentials, given as an address with gatewayPort: smtp-sink gets
    the mail; no DNS lookup at all."""
    env.pick_port("127.0.0.4")
    env.mx("far.test", (10, "127.0.0.9"))            # must not be used
    sink = env.sink("127.0.0.4")
    sender = env.sender(gateway="127.0.0.4", gatewayPort=str(env.port))
    mid = submit(sender, ["bob@far.test"], "sink-gateway")
    [dump] = wait_for(lambda: sink.messages(b"end-of-sink-gateway"), timeout=15,
                      what="the smtp-sink dump")
    assert dump["Message-ID"] == mid
    assert dump.get_all("X-Rcpt-Args") == ["<bob@far.test>"]
    assert env.dns.queries == []
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    assert inbox(sender, ALICE) == []


# -------------------------------------------------------------------- 9. kill -9


def test_kill_9_during_delivery_loses_nothing(env):
    """SIGKILL while messages are being delivered to a slow MX; restarted on the same conf
    and var with a good MX in DNS, every message arrives at least once."""
    env.pick_port("127.0.0.2", "127.0.0.3")
    env.mx("slow.test", (10, "127.0.0.2"))
    slow = env.exchanger("127.0.0.2", data_delay=0.4)
    fast = env.exchanger("127.0.0.3")
    sender = env.sender()
    count = 30
    mids = set()
    with sender.smtp() as s:
        for i in range(count):
            text, mid = make_message(f"k{i}")
            assert s.sendmail(ALICE, [f"u{i % 3}@slow.test"], text) == {}
            mids.add(mid)
    wait_for(lambda: len(slow.messages) >= 3, timeout=15, what="the first slow deliveries")
    sender.signal(signal.SIGKILL)
    sender.proc.wait(10)
    before = set(slow.message_ids())
    assert len(before) < count, "everything was delivered before the kill"
    kept = queued_ids(sender)
    assert kept, "nothing left queued at the kill"
    assert before | kept == mids                     # nothing lost at the moment of the kill
    # the good MX replaces the slow one
    env.dns.records["mx10.slow.test"] = [("A", "127.0.0.3")]
    restarted = env.start(sender.conf, sender.var)

    def delivered():
        return set(slow.message_ids()) | set(fast.message_ids())

    wait_for(lambda: delivered() >= mids, timeout=30, what="every message at the MXs")
    assert delivered() == mids
    # duplicates only for the attempts in flight at the kill: at most one per worker
    # (maxConcurrentDeliveriesPerDomain, 4), each worker reusing one pooled connection
    assert len(slow.messages) + len(fast.messages) <= count + 4
    assert fast.messages and fast.connections <= 4 and slow.connections <= 4
    wait_for(lambda: not outgoing(restarted) and not restarted.queued(), timeout=10,
             what="empty queues")
    assert inbox(restarted, ALICE) == []
    assert restarted.stop() == 0


# -------------------------------------------------------------------- 10. queue CLI


def test_queue_list_shows_the_waiting_entry_and_flush_retries_it(env):
    """While a 421 MX makes a mail wait, ``chainmail queue list`` shows its next attempt and
    last error; ``chainmail queue flush`` has it tried again at once."""
    env.pick_port("127.0.0.2")
    env.mx("later.test", (10, "127.0.0.2"))
    mx = env.exchanger("127.0.0.2", greeting=b"421 4.3.2 Service busy, try later\r\n")
    sender = env.sender(delayTime="10 minutes", maxRetries="1")
    mid = submit(sender, ["bob@later.test"], "later")
    # the retry is queued before the first entry is removed: wait for it alone
    wait_for(lambda: [int(e.envelope.attributes.get("delivery_retry_count") or 0)
                      for e in outgoing(sender)] == [1], timeout=15, what="the first failed attempt")
    [entry] = outgoing(sender)
    listing = ok(cli(sender, "queue", "list"))
    # the listing names the mail by its queue id, the one the 250 reply gave
    assert entry.envelope.attributes["chainmail.queue_id"] != entry.id
    [row] = [line for line in listing.splitlines()
             if line.startswith(entry.envelope.attributes["chainmail.queue_id"])]
    assert re.search(r" in (9|10)m +1  <alice@local.test> -> <bob@later.test>  "
                     r"\(.*421 4\.3\.2 Service busy, try later\)$", row), row
    assert "1 message(s) waiting in outgoing queue outgoing" in listing
    assert mx.connections == 1
    mx.greeting = b"220 mx.test ESMTP\r\n"
    flushed = ok(cli(sender, "queue", "flush", "--domain", "later.test"))
    assert "flush requested for 1 message(s)" in flushed
    wait_for(lambda: mx.messages, timeout=5, what="the flushed delivery")   # not in 10 minutes
    assert mx.message_ids() == [mid]
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    assert "0 message(s) waiting in outgoing queue outgoing" in ok(cli(sender, "queue", "list"))
