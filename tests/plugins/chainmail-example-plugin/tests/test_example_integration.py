"""The whole package in a real ``chainmail run``: greylisting, the reputation service and
the tagging mailet on the way to a Maildir."""

from __future__ import annotations

import smtplib

import pytest

from test_example_reputation import Service

CONTAINER = ('<processor state="root">'
             '<mailet match="All" class="SubjectTag"><tag>[EXT]</tag></mailet>'
             '<mailet match="RecipientIsLocal" class="LocalDelivery"/></processor>')


@pytest.fixture
def service():
    s = Service()
    yield s
    s.close()


def test_greylisted_then_checked_then_tagged_and_delivered(chainmail_server, service):
    server = chainmail_server(
        # 127.0.0.1 may not relay here, so the client is greylisted; one process, because
        # Greylist remembers triplets in memory and each worker process has its own
        options=("<authorizedAddresses>192.0.2.0/24</authorizedAddresses>"
                 "<ioWorkerCount>1</ioWorkerCount>"),
        handlers=('<handler class="ReputationCheck">'
                  f'<url>{service.url}</url></handler>'
                  '<handler class="Greylist"><delay>0</delay></handler>'),
        mailetcontainer=CONTAINER, users={"bob@local.test": "a long password"})
    message = "From: a@remote.example\r\nSubject: hello\r\n\r\nhi bob\r\n"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
        server.send("a@remote.example", "bob@local.test", message)
    assert deferred.value.recipients["bob@local.test"][0] == 451
    server.send("a@remote.example", "bob@local.test", message)
    [delivered] = server.wait_for_mailbox("bob@local.test")
    assert b"\nX-Greylist: delayed 0 seconds by mx.test\n" in delivered
    assert b"Subject: [EXT] hello" in delivered
    assert [q["ip"] for q in service.queries] == ["127.0.0.1", "127.0.0.1"]
