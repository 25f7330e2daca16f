"""The chainmail_server fixture: a real ``chainmail run``, its stores, and its fake DNS."""

from __future__ import annotations

import smtplib

import pytest

USERS = {"bob@local.test": "a long password"}


def test_mail_to_a_local_user_lands_in_the_maildir(chainmail_server):
    server = chainmail_server(users=USERS)
    server.send("alice@remote.example", "bob@local.test", "Subject: kit\r\n\r\nhello\r\n")
    [message] = server.wait_for_mailbox("bob@local.test")
    assert b"Subject: kit" in message and b"hello" in message
    assert "listening on 127.0.0.1:" in server.log


def test_handlers_given_as_xml_run_in_the_server(chainmail_server):
    server = chainmail_server(handlers='<handler class="RecipientBlocker"><blocked>bob@local.test</blocked>'
                                       '<code>551</code><enhanced>5.7.1</enhanced></handler>',
                              users=USERS, mailetcontainer=None)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        server.send("alice@remote.example", "bob@local.test", "Subject: x\r\n\r\nx\r\n")
    assert refused.value.recipients["bob@local.test"][0] == 551
    server.send("alice@remote.example", "carol@local.test", "Subject: y\r\n\r\ny\r\n")
    [queued] = server.spooled()   # no container: accepted mail waits in the spool
    assert queued.recipients == ["carol@local.test"]


def test_relayed_mail_follows_the_fake_dns_to_another_server(chainmail_server, fake_dns):
    """Server A relays example.org mail to the MX the fake DNS names: server B on loopback."""
    b = chainmail_server(local_domains=["example.org"], users={"dave@example.org": "a long password"})
    fake_dns.add("example.org", "MX", (10, "mx.example.org")).add("mx.example.org", "A", "127.0.0.1")
    relay = ('<processor state="root"><mailet match="All" class="RemoteDelivery">'
             '<outgoing>outgoing</outgoing><delayTime>1s</delayTime><maxRetries>1</maxRetries>'
             f'<mail.smtp.port>{b.port}</mail.smtp.port></mailet></processor>')
    a = chainmail_server(mailetcontainer=relay, dns=fake_dns)
    a.send("alice@local.test", "dave@example.org", "Subject: via mx\r\n\r\nrelayed\r\n")
    [message] = b.wait_for_mailbox("dave@example.org")
    assert b"Subject: via mx" in message
    assert ("example.org", "MX") in fake_dns.queries
