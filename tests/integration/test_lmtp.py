"""LMTP (RFC 2033): LHLO, one reply per recipient, direct Maildir delivery, with smtplib.LMTP,
Postfix's smtp-source -L and raw exchanges."""

from __future__ import annotations

import mailbox
import smtplib
import subprocess

import pytest

from ..conftest import CHAINMAIL, need, raw_exchange, wait_for_recipients
from ..smuggling import ALL_SEQUENCES, sequence_id, smuggling_message
from .test_auth import add_user, cli

LMTP_CORE = "org.apache.james.lmtpserver.CoreCmdHandlerLoader"


def lmtpserver_xml(body: str = "", handlers: str = "", core: str = LMTP_CORE) -> str:
    return ("<lmtpservers><lmtpserver enabled=\"true\"><jmxName>lmtp</jmxName><bind>127.0.0.1:0</bind>"
            "<helloName autodetect=\"false\">lmtp.test</helloName>" + body +
            f"<handlerchain coreHandlersPackage=\"{core}\">{handlers}</handlerchain></lmtpserver></lmtpservers>")


@pytest.fixture
def lmtp(chainmail_factory):
    def start(body: str = "", handlers: str = "", core: str = LMTP_CORE, files=None):
        files = dict(files or {})
        # One process: a probe session shows when it sees a new user (with_users).
        one = "<ioWorkerCount>1</ioWorkerCount>"
        files["lmtpserver.xml"] = lmtpserver_xml(one + body, handlers, core)
        server = chainmail_factory(one, files=files)
        server.lmtp_port = server.ports[-1]
        return server
    return start


def maildir(server, user: str) -> mailbox.Maildir:
    return mailbox.Maildir(str(server.var / "mail" / user), create=False)


def with_users(server, *names):
    """Add users and wait until the running server accepts them at RCPT on its LMTP port
    (``server.lmtp_port``, else the last port it bound: LMTP blocks come after SMTP's)."""
    for name in names:
        add_user(server, name)
    port = getattr(server, "lmtp_port", None) or server.ports[-1]
    wait_for_recipients(server, *names, port=port, hello=b"LHLO probe.test")


def test_lhlo_and_per_recipient_replies(lmtp):
    server = lmtp()
    with_users(server, "bob@local.test", "cedric@local.test")
    data = raw_exchange(server.lmtp_port, b"LHLO client.test\r\nMAIL FROM:<a@remote.example>\r\n"
                        b"RCPT TO:<bob@local.test>\r\nRCPT TO:<nobody@local.test>\r\n"
                        b"RCPT TO:<x@far.example>\r\nRCPT TO:<cedric@local.test>\r\nDATA\r\n"
                        b"Subject: lmtp\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    assert lines[0] == "220 lmtp.test LMTP chainmail ready"
    assert lines[1] == "250-lmtp.test Hello client.test [127.0.0.1]"
    assert "550 5.1.1 Unknown user: nobody@local.test" in lines
    assert "550 5.7.1 Requested action not taken: relaying denied" in lines
    i = lines.index("354 Ok Send data ending with <CRLF>.<CRLF>")
    assert lines[i + 1:i + 3] == ["250 2.6.0 Message received <bob@local.test>",
                                  "250 2.6.0 Message received <cedric@local.test>"]
    for user in ("bob@local.test", "cedric@local.test"):
        [msg] = list(maildir(server, user))
        assert msg["Subject"] == "lmtp"
        assert msg["Received"].startswith("from client.test (LHLO client.test) ([127.0.0.1])")
        assert "with LMTP" in msg["Received"]
    assert server.queued() == []     # LMTP delivers directly: nothing spooled


def test_helo_and_ehlo_are_not_lmtp(lmtp):
    server = lmtp()
    data = raw_exchange(server.lmtp_port, b"HELO x\r\nEHLO x\r\nQUIT\r\n")
    assert b"500 5.5.1 Command HELO unrecognized." in data
    assert b"500 5.5.1 Command EHLO unrecognized." in data


def test_smtplib_lmtp(lmtp):
    server = lmtp()
    with_users(server, "dora@local.test")
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, local_hostname="client.test") as s:
        code, _ = s.ehlo("client.test")   # smtplib.LMTP sends LHLO; check it was accepted
        assert code == 250
        assert s.sendmail("a@remote.example", ["dora@local.test"], "Subject: via smtplib\r\n\r\nx\r\n") == {}
    assert [m["Subject"] for m in maildir(server, "dora@local.test")] == ["via smtplib"]


def test_over_quota_recipient_gets_552_others_delivered(lmtp):
    server = lmtp()
    with_users(server, "bob@local.test", "cedric@local.test")
    result = cli(server, "quota", "set", "bob@local.test", "10")
    assert result.returncode == 0, result.stdout + result.stderr   # read at each delivery
    data = raw_exchange(server.lmtp_port, b"LHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@local.test>\r\n"
                        b"RCPT TO:<cedric@local.test>\r\nDATA\r\nSubject: big\r\n\r\n" + b"x" * 500 +
                        b"\r\n.\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    i = lines.index("354 Ok Send data ending with <CRLF>.<CRLF>")
    assert lines[i + 1] == "552 5.2.2 Over Quota error when delivering message to <bob@local.test>"
    assert lines[i + 2] == "250 2.6.0 Message received <cedric@local.test>"


def test_oversize_message_is_delivered_to_nobody(lmtp):
    server = lmtp("<maxmessagesize>1K</maxmessagesize>")
    with_users(server, "bob@local.test", "cedric@local.test")
    data = raw_exchange(server.lmtp_port, b"LHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@local.test>\r\n"
                        b"RCPT TO:<cedric@local.test>\r\nDATA\r\n" + (b"y" * 98 + b"\r\n") * 20 +
                        b".\r\nQUIT\r\n")
    assert data.count(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n") == 2
    assert not (server.var / "mail" / "bob@local.test" / "new").exists() or \
        list((server.var / "mail" / "bob@local.test" / "new").iterdir()) == []


def test_scanner_sequences_are_delivered_to_nobody(lmtp):
    """LMTP frames DATA with the same engine: a bare CR, a bare LF or a NUL refuses the
    message for every recipient, closes the session, and delivers nothing."""
    server = lmtp()
    with_users(server, "bob@local.test")
    for sequence in ALL_SEQUENCES:
        data = raw_exchange(server.lmtp_port, b"LHLO c\r\nMAIL FROM:<a@remote.example>\r\n"
                            b"RCPT TO:<bob@local.test>\r\nDATA\r\n"
                            + smuggling_message(sequence, rcpt="bob@local.test") + b".\r\nQUIT\r\n")
        assert data.endswith((b"500 5.0.0 line delimiter must be CRLF\r\n",
                              b"500 5.6.0 NUL character not allowed in message data\r\n")), \
            (sequence_id(sequence), data)
    new = server.var / "mail" / "bob@local.test" / "new"
    assert not new.exists() or list(new.iterdir()) == []


def test_alias_is_delivered_to_its_user(lmtp):
    server = lmtp()
    with_users(server, "erin@local.test")
    assert cli(server, "alias", "add", "help@local.test", "erin@local.test").returncode == 0
    wait_for_recipients(server, "help@local.test", port=server.lmtp_port, hello=b"LHLO probe.test")
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, local_hostname="client.test") as s:
        assert s.sendmail("a@remote.example", ["help@local.test"], "Subject: alias\r\n\r\nx\r\n") == {}
    assert [m["Subject"] for m in maildir(server, "erin@local.test")] == ["alias"]


def test_smtp_source_lmtp(lmtp):
    smtp_source = need("smtp-source")
    server = lmtp()
    with_users(server, "load@local.test")
    result = subprocess.run([smtp_source, "-L", "-s", "5", "-m", "50", "-l", "1024", "-f", "s@remote.example",
                             "-t", "load@local.test", "-M", "client.test", f"127.0.0.1:{server.lmtp_port}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(list(maildir(server, "load@local.test"))) == 50


def test_third_party_deliver_hook_replaces_maildir_delivery(lmtp):
    server = lmtp(handlers='<handler class="RecordingDelivery"><log>deliveries.log</log></handler>')
    with_users(server, "fay@local.test")
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, local_hostname="client.test") as s:
        assert s.sendmail("a@remote.example", ["fay@local.test"], "Subject: elsewhere\r\n\r\nx\r\n") == {}
    assert not (server.var / "mail" / "fay@local.test").exists()
    record = (server.conf / "deliveries.log").read_text()
    assert "fay@local.test" in record and "Subject: elsewhere" in record
