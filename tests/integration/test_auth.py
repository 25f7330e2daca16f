"""SMTP AUTH, relay policy, verifyIdentity and ValidRcptHandler, with real clients."""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess

import pytest

from ..conftest import CHAINMAIL, need, raw_exchange, wait_for, wait_for_recipients
from .test_tls import Material, tls_block

CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
PASSWORD = "correct horse battery staple"


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def cli(server, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAINMAIL, *args, "--conf", str(server.conf), "--var", str(server.var)],
                          input=stdin, capture_output=True, text=True, timeout=60)


def exchange_from(source: str, port: int, data: bytes) -> bytes:
    """Send ``data`` from the loopback address ``source``; everything answered until the
    server closes (``data`` ends with QUIT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        out = b""
        while not out.endswith(b"\r\n"):   # the greeting first: no talking before it
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk
        s.sendall(data)
        while chunk := s.recv(65536):
            out += chunk
        return out


def add_user(server, name: str, password: str = PASSWORD) -> None:
    result = cli(server, "user", "add", name, "--password-stdin", stdin=password + "\n")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def material(tmp_path):
    return Material(tmp_path)


@pytest.fixture
def submission(chainmail_factory, material):
    """STARTTLS submission server: AUTH announced always, requireSSL (default), strict identity."""
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")) +
                               "<auth><announce>always</announce></auth><verifyIdentity>true</verifyIdentity>",
                               core=CORE, authorized="")
    add_user(server, "alice@local.test")
    add_user(server, "bob@local.test")   # AUTH reads the users table itself: no wait
    server.material = material
    return server


def tls_session(server) -> smtplib.SMTP:
    s = server.smtp()
    s.ehlo("client.test")
    s.starttls(context=server.material.client_context())
    s.ehlo("client.test")
    return s


def test_password_mechanisms_need_tls(submission):
    with submission.smtp() as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        plain = b64("\0alice@local.test\0" + PASSWORD)
        assert s.docmd("AUTH", "PLAIN " + plain) == (
            538, b"5.7.11 Encryption required for requested authentication mechanism")


def test_ehlo_lists_auth_after_starttls_and_login_works(submission):
    with tls_session(submission) as s:
        lines = s.ehlo_resp.decode().split("\n")
        assert lines[1:3] == ["AUTH LOGIN PLAIN", "AUTH=LOGIN PLAIN"]   # before PIPELINING, as James
        assert s.login("alice@local.test", PASSWORD)[0] == 235
        # authenticated users may relay
        assert s.sendmail("alice@local.test", ["friend@remote.example"],
                          "From: alice@local.test\r\nSubject: out\r\n\r\nhello\r\n") == {}
    [msg] = submission.queued()
    assert msg.envelope.attributes["auth_user"] == "alice@local.test"
    assert b"with ESMTPSA" in submission.queued_body(msg.id)
    assert PASSWORD not in submission.log


def test_plain_forms_and_errors(submission):
    with tls_session(submission) as s:
        assert s.docmd("AUTH") == (501, b"5.5.4 Usage: AUTH (authentication type) <challenge>")
        assert s.docmd("AUTH", "FOO") == (504, b"5.5.4 Unrecognized Authentication Type")
        assert s.docmd("AUTH", "PLAIN") == (334, b"")
        assert s.docmd("*") == (501, b"5.7.1 Authentication aborted")
        assert s.docmd("AUTH", "PLAIN canNotDecode!") == (501, b"5.5.2 Could not decode parameters for AUTH PLAIN")
        # two fields (authcid, password)
        assert s.docmd("AUTH", "PLAIN " + b64("alice@local.test\0" + PASSWORD))[0] == 235
        assert s.docmd("AUTH", "PLAIN " + b64("\0alice@local.test\0" + PASSWORD)) == (
            503, b"5.5.0 User has previously authenticated.  Further authentication is not required!")
    with tls_session(submission) as s:
        # four fields with a trailing NUL, over a continuation
        assert s.docmd("AUTH", "PLAIN")[0] == 334
        assert s.docmd(b64("\0Alice@Local.Test\0" + PASSWORD + "\0"))[0] == 235
    with tls_session(submission) as s:
        # authzid naming someone else: delegation is not granted
        assert s.docmd("AUTH", "PLAIN " + b64("bob@local.test\0alice@local.test\0" + PASSWORD)) == (
            535, b"5.7.8 Authentication Failed")


def test_login_mechanism(submission):
    with tls_session(submission) as s:
        assert s.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
        assert s.docmd(b64("bob@local.test")) == (334, b"UGFzc3dvcmQ6")
        assert s.docmd(b64(PASSWORD)) == (235, b"2.7.0 Authentication Successful")
    with tls_session(submission) as s:
        assert s.docmd("AUTH", "LOGIN " + b64("bob@local.test")) == (334, b"UGFzc3dvcmQ6")
        assert s.docmd(b64("wrong"))[0] == 535


def test_failures_are_limited_and_logged_without_password(submission):
    with tls_session(submission) as s:
        for _ in range(2):
            assert s.docmd("AUTH", "PLAIN " + b64("\0alice@local.test\0secret-guess-1"))[0] == 535
        code, text = s.docmd("AUTH", "PLAIN " + b64("\0alice@local.test\0secret-guess-1"))
        assert code == 421 and b"4.7.0" in text
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
    assert "AUTH PLAIN failed for 'alice@local.test'" in submission.log
    assert "secret-guess-1" not in submission.log


def test_swaks_auth_plain_and_login(submission):
    swaks = need("swaks")
    for mech in ("PLAIN", "LOGIN"):
        result = subprocess.run([swaks, "--tls", "--server", f"127.0.0.1:{submission.port}", "--helo", "client.test",
                                 "--auth", mech, "--auth-user", "alice@local.test", "--auth-password", PASSWORD,
                                 "--from", "alice@local.test", "--h-From", "alice@local.test",
                                 "--to", "someone@remote.example"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<~  235 2.7.0 Authentication Successful" in result.stdout
        assert "<~  250 2.6.0 Message received" in result.stdout
    assert len(submission.queued()) == 2


def test_relay_refusal_is_530_when_auth_is_announced(submission, chainmail_factory):
    with tls_session(submission) as s:
        s.mail("x@remote.example")
        assert s.rcpt("y@far.example") == (530, b"5.7.1 Authentication Required")
    mta = chainmail_factory(authorized="")
    data = raw_exchange(mta.port, b"EHLO t\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<y@far.example>\r\nQUIT\r\n")
    assert b"550 5.7.1 Requested action not taken: relaying denied" in data


def test_announce_policies(chainmail_factory):
    def auth_line(server, source="127.0.0.1"):
        data = raw_exchange(server.port, b"EHLO t\r\nQUIT\r\n") if source == "127.0.0.1" else None
        if data is None:
            data = exchange_from(source, server.port, b"EHLO t\r\nQUIT\r\n")
        return [l for l in data.decode().split("\r\n") if "AUTH" in l]

    clear = "<auth><requireSSL>false</requireSSL><announce>{}</announce></auth>"
    always = chainmail_factory(clear.format("always"), core=CORE)
    assert auth_line(always) == ["250-AUTH LOGIN PLAIN", "250-AUTH=LOGIN PLAIN"]
    never = chainmail_factory(clear.format("never"), core=CORE)
    assert auth_line(never) == []
    unauthorized = chainmail_factory(clear.format("forUnauthorizedAddresses"), core=CORE,
                                     authorized="127.0.0.1/32")
    assert auth_line(unauthorized) == []                       # inside authorizedAddresses
    assert auth_line(unauthorized, "127.0.0.2") != []          # outside
    deprecated = chainmail_factory("<authRequired>true</authRequired><auth><requireSSL>false</requireSSL></auth>",
                                   core=CORE, authorized="127.0.0.1/32")
    assert auth_line(deprecated) == [] and auth_line(deprecated, "127.0.0.2") != []
    no_plain = chainmail_factory(clear.format("always").replace("</auth>", "<plainAuthEnabled>false</plainAuthEnabled></auth>"),
                                 core=CORE)
    assert auth_line(no_plain) == []
    data = raw_exchange(no_plain.port, b"EHLO t\r\nAUTH PLAIN " + b64("\0a@local.test\0x").encode() + b"\r\nQUIT\r\n")
    assert b"504 5.5.4 Unrecognized Authentication Type" in data


def test_auth_required(chainmail_factory, material):
    server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")) +
                               "<auth><announce>forUnauthorizedAddresses</announce><required>true</required></auth>",
                               core=CORE, authorized="127.0.0.1/32")
    add_user(server, "carol@local.test")   # AUTH reads the users table itself: no wait
    data = exchange_from("127.0.0.2", server.port, b"EHLO t\r\nMAIL FROM:<x@remote.example>\r\nQUIT\r\n")
    assert b"530 5.7.1 Authentication Required" in data
    # from authorizedAddresses: no AUTH needed
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<x@remote.example>\r\nQUIT\r\n")
    assert b"250 2.1.0 Sender <x@remote.example> OK" in data
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10,
                      source_address=("127.0.0.2", 0)) as s:
        s.ehlo()
        s.starttls(context=material.client_context())
        s.ehlo()
        assert s.login("carol@local.test", PASSWORD)[0] == 235
        assert s.mail("carol@local.test")[0] == 250


# -- verifyIdentity (james.md §8 items 58-65) --------------------------------------------
def test_unauthenticated_local_sender_needs_auth(submission):
    with submission.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("alice@local.test") == (530, b"5.7.1 Authentication Required")
        assert s.mail("someone@remote.example")[0] == 250


def test_authenticated_user_cannot_spoof(submission):
    with tls_session(submission) as s:
        s.login("alice@local.test", PASSWORD)
        assert s.mail("bob@local.test") == (503, b"5.7.1 Incorrect Authentication for Specified Email Address")
        assert s.mail("alice@remote.example")[0] == 503       # external domain: not an identity
        assert s.mail("")[0] == 250                           # null sender always passes
        s.rset()
        assert s.mail("Alice+tag@local.test")[0] == 250       # +detail is the same user
        s.rset()
        s.mail("alice@local.test")
        s.rcpt("friend@remote.example")
        assert s.data("From: bob@local.test\r\nSubject: spoof\r\n\r\nx\r\n") == (
            503, b"5.7.1 Incorrect Authentication for Specified Email Address")
        s.mail("alice@local.test")
        s.rcpt("friend@remote.example")
        assert s.data("Subject: no from\r\n\r\nx\r\n") == (503, b"5.5.4 Missing From header")
        s.mail("alice@local.test")
        s.rcpt("friend@remote.example")
        assert s.data("From: team: alice@local.test, bob@local.test;\r\n\r\nx\r\n")[0] == 503
    assert submission.queued() == []


def test_aliases_and_domain_aliases_are_identities_groups_are_not(submission):
    assert cli(submission, "domain", "add", "alias.test").returncode == 0
    assert cli(submission, "alias", "add", "al@local.test", "alice@local.test").returncode == 0
    assert cli(submission, "alias", "add", "--domain", "alias.test", "local.test").returncode == 0
    assert cli(submission, "alias", "add", "--forward", "team@local.test", "alice@local.test").returncode == 0

    def aliases_seen() -> bool:   # the running server reads the tables again within a second
        with tls_session(submission) as s:
            s.login("alice@local.test", PASSWORD)
            return [s.mail(sender)[0] == 250 and s.rset()[0] == 250
                    for sender in ("al@local.test", "alice@alias.test")] == [True, True]
    wait_for(aliases_seen, what="the new aliases as identities of alice@local.test", interval=0.1)
    with tls_session(submission) as s:
        s.login("alice@local.test", PASSWORD)
        for sender in ("al@local.test", "alice@alias.test"):
            assert s.sendmail(sender, ["x@remote.example"], f"From: {sender}\r\n\r\nx\r\n") == {}
        assert s.mail("team@local.test")[0] == 503
    assert len(submission.queued()) == 2


def test_relaxed_identity(chainmail_factory):
    server = chainmail_factory("<verifyIdentity>relaxed</verifyIdentity>", authorized="")
    data = raw_exchange(server.port, b"EHLO mx.sender.example\r\nMAIL FROM:<u@local.test>\r\nQUIT\r\n")
    assert b"250 2.1.0" in data
    for helo in (b"appleclient", b"[127.0.0.1]"):
        data = raw_exchange(server.port, b"EHLO " + helo + b"\r\nMAIL FROM:<u@local.test>\r\nQUIT\r\n")
        assert b"530 5.7.1 Authentication Required" in data


def test_identity_disabled(chainmail_factory):
    server = chainmail_factory("<verifyIdentity>false</verifyIdentity>", authorized="")
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<u@local.test>\r\nQUIT\r\n")
    assert b"250 2.1.0" in data


# -- ValidRcptHandler ------------------------------------------------------------------------
def test_valid_rcpt_handler(chainmail_factory):
    server = chainmail_factory("<ioWorkerCount>1</ioWorkerCount>",   # one users cache to wait for
                               handlers='<handler class="org.apache.james.smtpserver.fastfail.ValidRcptHandler"/>',
                               authorized="")
    add_user(server, "dave@local.test")
    assert cli(server, "alias", "add", "support@local.test", "dave@local.test").returncode == 0
    wait_for_recipients(server, "dave@local.test", "support@local.test")
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<nobody@local.test>\r\n"
                        b"RCPT TO:<dave@local.test>\r\nRCPT TO:<Dave+news@local.test>\r\n"
                        b"RCPT TO:<support@local.test>\r\nRCPT TO:<postmaster@local.test>\r\n"
                        b"RCPT TO:<x@far.example>\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    assert "550 5.1.1 Unknown user: nobody@local.test" in lines
    assert "250 2.1.5 Recipient <dave@local.test> OK" in lines
    assert "250 2.1.5 Recipient <Dave+news@local.test> OK" in lines
    assert "250 2.1.5 Recipient <support@local.test> OK" in lines
    assert "250 2.1.5 Recipient <postmaster@local.test> OK" in lines
    assert "550 5.7.1 Requested action not taken: relaying denied" in lines
