"""SMTP AUTH over a real STARTTLS handshake, with real clients (smtplib, swaks).  The replies of
AUTH, the relay policy, verifyIdentity and ValidRcptHandler are tested without a socket in
tests/session/test_auth_replies.py."""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from ..conftest import CHAINMAIL, need
from .test_tls import Material, tls_block

CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
PASSWORD = "correct horse battery staple"


def cli(server, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAINMAIL, *args, "--conf", str(server.conf), "--var", str(server.var)],
                          input=stdin, capture_output=True, text=True, timeout=60)


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
