"""SMTP AUTH, relay policy, verifyIdentity and ValidRcptHandler: the replies of the server's
own session loop, driven without a socket.  TLS is taken as up where the original dialogue
runs STARTTLS first (``tls=True``); the STARTTLS handshake itself and real clients (swaks)
stay in tests/integration/test_auth.py."""

from __future__ import annotations

import base64
import logging

import pytest

from chainmail.testing import SessionClosed

CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
PASSWORD = "correct horse battery staple"
USERS = {"alice@local.test": PASSWORD, "bob@local.test": PASSWORD}


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def wire(reply) -> list[str]:
    """A reply's lines as a client reads them (without CRLF)."""
    return str(reply).split("\r\n")


@pytest.fixture
def submission(chainmail_session):
    """``submission(tls=True)``: a session with the submission server (AUTH announced always,
    requireSSL (default), strict identity, no authorizedAddresses); alice and bob exist.
    With ``tls`` the session is greeted as a client is after STARTTLS."""

    def open_session(tls: bool = True, **settings):
        return chainmail_session(
            options="<auth><announce>always</announce></auth><verifyIdentity>true</verifyIdentity>",
            core=CORE, authorized_addresses=None, users=USERS, tls=tls,
            helo="client.test" if tls else None, **settings)

    return open_session


def test_password_mechanisms_need_tls(submission):
    s = submission(tls=False)
    ehlo = s.ehlo("client.test")
    assert ehlo.code == 250
    assert not any(line.upper().startswith("AUTH") for line in ehlo.lines)
    plain = b64("\0alice@local.test\0" + PASSWORD)
    assert str(s.command("AUTH PLAIN " + plain)) == \
        "538 5.7.11 Encryption required for requested authentication mechanism"


def test_plain_forms_and_errors(submission):
    s = submission()
    assert str(s.command("AUTH")) == "501 5.5.4 Usage: AUTH (authentication type) <challenge>"
    assert str(s.command("AUTH FOO")) == "504 5.5.4 Unrecognized Authentication Type"
    reply = s.command("AUTH PLAIN")
    assert (reply.code, reply.text) == (334, "")
    assert str(s.command("*")) == "501 5.7.1 Authentication aborted"
    assert str(s.command("AUTH PLAIN canNotDecode!")) == "501 5.5.2 Could not decode parameters for AUTH PLAIN"
    # two fields (authcid, password)
    assert s.command("AUTH PLAIN " + b64("alice@local.test\0" + PASSWORD)).code == 235
    assert str(s.command("AUTH PLAIN " + b64("\0alice@local.test\0" + PASSWORD))) == \
        "503 5.5.0 User has previously authenticated.  Further authentication is not required!"
    s = submission()
    # four fields with a trailing NUL, over a continuation
    assert s.command("AUTH PLAIN").code == 334
    assert s.command(b64("\0Alice@Local.Test\0" + PASSWORD + "\0")).code == 235
    s = submission()
    # authzid naming someone else: delegation is not granted
    assert str(s.command("AUTH PLAIN " + b64("bob@local.test\0alice@local.test\0" + PASSWORD))) == \
        "535 5.7.8 Authentication Failed"


def test_login_mechanism(submission):
    s = submission()
    assert str(s.command("AUTH LOGIN")) == "334 VXNlcm5hbWU6"
    assert str(s.command(b64("bob@local.test"))) == "334 UGFzc3dvcmQ6"
    assert str(s.command(b64(PASSWORD))) == "235 2.7.0 Authentication Successful"
    s = submission()
    assert str(s.command("AUTH LOGIN " + b64("bob@local.test"))) == "334 UGFzc3dvcmQ6"
    assert s.command(b64("wrong")).code == 535


def test_failures_are_limited_and_logged_without_password(submission, caplog):
    caplog.set_level(logging.DEBUG)
    s = submission()
    for _ in range(2):
        assert s.command("AUTH PLAIN " + b64("\0alice@local.test\0secret-guess-1")).code == 535
    reply = s.command("AUTH PLAIN " + b64("\0alice@local.test\0secret-guess-1"))
    assert reply.code == 421 and reply.enhanced == "4.7.0"
    with pytest.raises(SessionClosed):
        s.noop()
    assert "AUTH PLAIN failed for 'alice@local.test'" in caplog.text
    assert "secret-guess-1" not in caplog.text


def test_relay_refusal_is_530_when_auth_is_announced(submission, chainmail_session):
    s = submission()
    s.mail("x@remote.example")
    assert str(s.rcpt("y@far.example")) == "530 5.7.1 Authentication Required"
    mta = chainmail_session(authorized_addresses=None, helo="t")
    mta.mail("x@remote.example")
    assert str(mta.rcpt("y@far.example")) == "550 5.7.1 Requested action not taken: relaying denied"


def test_announce_policies(chainmail_session):
    def auth_line(options, source="127.0.0.1", **settings):
        s = chainmail_session(options=options, core=CORE, remote_ip=source, **settings)
        return [line for line in wire(s.ehlo("t")) if "AUTH" in line]

    clear = "<auth><requireSSL>false</requireSSL><announce>{}</announce></auth>"
    assert auth_line(clear.format("always")) == ["250-AUTH LOGIN PLAIN", "250-AUTH=LOGIN PLAIN"]
    assert auth_line(clear.format("never")) == []
    unauthorized = clear.format("forUnauthorizedAddresses")
    assert auth_line(unauthorized, authorized_addresses="127.0.0.1/32") == []   # inside authorizedAddresses
    assert auth_line(unauthorized, "127.0.0.2", authorized_addresses="127.0.0.1/32") != []   # outside
    deprecated = "<authRequired>true</authRequired><auth><requireSSL>false</requireSSL></auth>"
    assert auth_line(deprecated, authorized_addresses="127.0.0.1/32") == []
    assert auth_line(deprecated, "127.0.0.2", authorized_addresses="127.0.0.1/32") != []
    no_plain = clear.format("always").replace("</auth>", "<plainAuthEnabled>false</plainAuthEnabled></auth>")
    assert auth_line(no_plain) == []
    s = chainmail_session(options=no_plain, core=CORE, helo="t")
    assert str(s.command("AUTH PLAIN " + b64("\0a@local.test\0x"))) == \
        "504 5.5.4 Unrecognized Authentication Type"


def test_auth_required(chainmail_session):
    def session(source, **settings):
        return chainmail_session(
            options="<auth><announce>forUnauthorizedAddresses</announce><required>true</required></auth>",
            core=CORE, authorized_addresses="127.0.0.1/32", remote_ip=source,
            users={"carol@local.test": PASSWORD}, helo="t", **settings)

    assert str(session("127.0.0.2").mail("x@remote.example")) == "530 5.7.1 Authentication Required"
    # from authorizedAddresses: no AUTH needed
    assert str(session("127.0.0.1").mail("x@remote.example")) == "250 2.1.0 Sender <x@remote.example> OK"
    s = session("127.0.0.2", tls=True)
    assert s.login("carol@local.test", PASSWORD).code == 235
    assert s.mail("carol@local.test").code == 250


# -- verifyIdentity (james.md §8 items 58-65) --------------------------------------------
def test_unauthenticated_local_sender_needs_auth(submission):
    s = submission(tls=False)
    s.ehlo("client.test")
    assert str(s.mail("alice@local.test")) == "530 5.7.1 Authentication Required"
    assert s.mail("someone@remote.example").code == 250


def test_authenticated_user_cannot_spoof(submission):
    s = submission()
    s.login("alice@local.test", PASSWORD)
    assert str(s.mail("bob@local.test")) == "503 5.7.1 Incorrect Authentication for Specified Email Address"
    assert s.mail("alice@remote.example").code == 503     # external domain: not an identity
    assert s.mail("").code == 250                         # null sender always passes
    s.rset()
    assert s.mail("Alice+tag@local.test").code == 250     # +detail is the same user
    s.rset()
    s.mail("alice@local.test")
    s.rcpt("friend@remote.example")
    assert str(s.data("From: bob@local.test\r\nSubject: spoof\r\n\r\nx\r\n")) == \
        "503 5.7.1 Incorrect Authentication for Specified Email Address"
    s.mail("alice@local.test")
    s.rcpt("friend@remote.example")
    assert str(s.data("Subject: no from\r\n\r\nx\r\n")) == "503 5.5.4 Missing From header"
    s.mail("alice@local.test")
    s.rcpt("friend@remote.example")
    assert s.data("From: team: alice@local.test, bob@local.test;\r\n\r\nx\r\n").code == 503
    assert s.spooled() == []


def test_aliases_and_domain_aliases_are_identities_groups_are_not(submission):
    s = submission()
    s.stores.add_domain("alias.test")
    s.stores.add_alias("al@local.test", "alice@local.test")
    s.stores.rrt.add_domain_alias("alias.test", "local.test")
    s.stores.rrt.add_forward("team@local.test", "alice@local.test")
    assert s.login("alice@local.test", PASSWORD).code == 235
    for sender in ("al@local.test", "alice@alias.test"):
        replies = s.send_message(sender, ["x@remote.example"], f"From: {sender}\r\n\r\nx\r\n")
        assert [r.code for r in replies] == [250, 250, 250], (sender, replies)
    assert s.mail("team@local.test").code == 503
    assert len(s.spooled()) == 2


def test_relaxed_identity(chainmail_session):
    def first_mail(helo):
        s = chainmail_session(options="<verifyIdentity>relaxed</verifyIdentity>",
                              authorized_addresses=None, helo=helo)
        return str(s.mail("u@local.test"))

    assert first_mail("mx.sender.example").startswith("250 2.1.0")
    for helo in ("appleclient", "[127.0.0.1]"):
        assert first_mail(helo) == "530 5.7.1 Authentication Required"


def test_identity_disabled(chainmail_session):
    s = chainmail_session(options="<verifyIdentity>false</verifyIdentity>", authorized_addresses=None,
                          helo="t")
    assert str(s.mail("u@local.test")).startswith("250 2.1.0")


# -- ValidRcptHandler ------------------------------------------------------------------------
def test_valid_rcpt_handler(chainmail_session):
    s = chainmail_session('<handler class="org.apache.james.smtpserver.fastfail.ValidRcptHandler"/>',
                          authorized_addresses=None, users={"dave@local.test": PASSWORD})
    s.stores.add_alias("support@local.test", "dave@local.test")
    replies = s.raw(b"EHLO t\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<nobody@local.test>\r\n"
                    b"RCPT TO:<dave@local.test>\r\nRCPT TO:<Dave+news@local.test>\r\n"
                    b"RCPT TO:<support@local.test>\r\nRCPT TO:<postmaster@local.test>\r\n"
                    b"RCPT TO:<x@far.example>\r\nQUIT\r\n", replies=None)
    lines = [line for reply in replies for line in wire(reply)]
    assert "550 5.1.1 Unknown user: nobody@local.test" in lines
    assert "250 2.1.5 Recipient <dave@local.test> OK" in lines
    assert "250 2.1.5 Recipient <Dave+news@local.test> OK" in lines
    assert "250 2.1.5 Recipient <support@local.test> OK" in lines
    assert "250 2.1.5 Recipient <postmaster@local.test> OK" in lines
    assert "550 5.7.1 Requested action not taken: relaying denied" in lines


def test_users_that_cannot_be_read_get_a_temporary_failure(submission, monkeypatch):
    """The users' database unreachable (PostgreSQL down): 451 4.7.0, not "wrong password"."""
    from chainmail.store.users import UsersRepository, UsersUnavailable

    def unreachable(self, key):
        raise UsersUnavailable("PostgreSQL db:5432: connection refused")
    monkeypatch.setattr(UsersRepository, "_stored_hash", unreachable)
    s = submission()
    reply = s.command("AUTH PLAIN " + b64("\0alice@local.test\0" + PASSWORD))
    assert str(reply) == "451 4.7.0 Temporary authentication failure"
