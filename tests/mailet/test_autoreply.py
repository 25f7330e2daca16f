"""Automatic replies (RFC 3834): the shared rules, the register of who was answered, and the
``VacationMailet`` on the test kit's mailet harness."""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from chainmail.autoreply import build_reply, reason_not_to_reply, reply_subject
from chainmail.config.errors import ConfigError
from chainmail.mailet.api import Mail
from chainmail.store.vacation import Vacation, VacationStore
from chainmail.testing import MailetHarness

BOB = "bob@local.test"
MESSAGE = (b"From: Alice <alice@remote.example>\r\nTo: Bob <bob@local.test>\r\n"
           b"Subject: Lunch?\r\nMessage-ID: <m1@remote.example>\r\n"
           b"References: <m0@remote.example>\r\n\r\nhello\r\n")


def mail(content: bytes = MESSAGE, sender: str = "alice@remote.example") -> Mail:
    return Mail(None, sender, [BOB], content)


def with_field(field: bytes) -> bytes:
    return field + b"\r\n" + MESSAGE


@pytest.mark.parametrize("sender, content, reason", [
    ("", MESSAGE, "the sender is null"),
    ("MAILER-DAEMON@remote.example", MESSAGE, "is a machine"),
    ("owner-list@remote.example", MESSAGE, "is a machine"),
    ("list-request@remote.example", MESSAGE, "is a machine"),
    ("shop-noreply@remote.example", MESSAGE, "is a machine"),
    ("bob@local.test", MESSAGE, "the sender is the user"),
    ("alice@remote.example", with_field(b"Auto-Submitted: auto-generated"), "Auto-Submitted"),
    ("alice@remote.example", with_field(b"Precedence: bulk"), "Precedence: bulk"),
    ("alice@remote.example", with_field(b"Precedence: list"), "Precedence: list"),
    ("alice@remote.example", with_field(b"Precedence: junk"), "Precedence: junk"),
    ("alice@remote.example", with_field(b"List-Unsubscribe: <mailto:x@y>"), "List-Unsubscribe"),
    ("alice@remote.example", with_field(b"X-Auto-Response-Suppress: OOF"), "Suppress"),
    ("alice@remote.example", MESSAGE.replace(b"To: Bob <bob@local.test>", b"To: x@y.example"),
     "not named"),
])
def test_no_reply_and_why(sender, content, reason):
    found = reason_not_to_reply(sender, mail(content, sender), [BOB])
    assert found is not None and reason in found


def test_a_reply_is_due_to_a_person_naming_the_user():
    assert reason_not_to_reply("alice@remote.example", mail(), [BOB]) is None
    assert reason_not_to_reply("alice@remote.example", mail(with_field(b"Auto-Submitted: no")),
                               [BOB]) is None
    bcc = MESSAGE.replace(b"To: Bob <bob@local.test>", b"To: x@y.example\r\nCc: BOB@local.test")
    assert reason_not_to_reply("alice@remote.example", mail(bcc), [BOB]) is None


def test_the_reply_carries_the_rfc_3834_fields():
    raw = build_reply(mail(), from_addr=BOB, to_addr="alice@remote.example",
                      subject=reply_subject(mail(), "Re:"), text="Away.", html="<p>Away.</p>",
                      hostname="mx.test")
    reply = email.message_from_bytes(raw, policy=email.policy.default)
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<m1@remote.example>"
    assert reply["References"] == "<m0@remote.example> <m1@remote.example>"
    assert reply["Subject"] == "Re: Lunch?" and reply["To"] == "alice@remote.example"
    assert reply.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in reply.iter_parts()] == ["text/plain", "text/html"]
    assert reply_subject(mail(MESSAGE.replace(b"Lunch?", b"RE: Lunch?")), "Re:") == "RE: Lunch?"


def test_a_mime_entity_becomes_the_body():
    raw = build_reply(mail(), from_addr=BOB, to_addr="a@b.example", subject="x", text=None,
                      mime_entity=b"Content-Type: text/html\n\n<b>away</b>\n")
    reply = email.message_from_bytes(raw, policy=email.policy.default)
    assert reply.get_content_type() == "text/html" and "<b>away</b>" in reply.get_content()


def test_the_register_answers_once_per_period_and_forgets_on_a_change(tmp_path):
    with VacationStore(tmp_path / "db.sqlite") as store:
        now = 1_000_000.0
        assert store.claim_notice(BOB, "Alice@remote.example", "", 3600, now)
        assert not store.claim_notice(BOB, "alice@remote.example", "", 3600, now + 10)
        assert store.claim_notice(BOB, "alice@remote.example", "sieve:x", 3600, now + 10)
        assert store.claim_notice(BOB, "alice@remote.example", "", 3600, now + 3601)
        store.set(Vacation(BOB, True, text_body="away"))
        assert store.claim_notice(BOB, "alice@remote.example", "", 3600, now + 3700)


def test_vacation_dates():
    v = Vacation(BOB, True, from_date=100.0, to_date=200.0)
    assert not v.active_at(99) and v.active_at(100) and v.active_at(200) and not v.active_at(201)
    assert not Vacation(BOB, False).active_at(150) and Vacation(BOB, True).active_at(150)


# -------------------------------------------------------------------------- the mailet


@pytest.fixture
def harness():
    with MailetHarness(users={BOB: "a long password"}) as h:
        yield h


def set_vacation(h: MailetHarness, **fields) -> None:
    with VacationStore(h.var / "chainmail.db") as store:
        store.set(Vacation(BOB, **{"enabled": True, "text_body": "I am away.", **fields}))


def test_vacation_mailet_replies_once_from_the_null_sender(harness):
    set_vacation(harness, subject="Out of office")
    mailet = harness.mailet("VacationMailet")
    run = harness.service(mailet, harness.mail(MESSAGE))
    [reply] = run.sent
    assert reply.sender == "" and reply.recipients == ["alice@remote.example"]
    assert reply.get_header("Subject") == "Out of office"
    assert reply.get_header("Auto-Submitted") == "auto-replied"
    assert b"I am away." in reply.content
    assert run.mail.recipients == [BOB] and run.mail.state == "root"   # the mail goes on
    assert harness.service(mailet, harness.mail(MESSAGE)).sent == []
    assert len(harness.service(mailet, harness.mail(MESSAGE, sender="eve@remote.example")).sent) == 1


@pytest.mark.parametrize("sender, content", [
    ("", MESSAGE),
    ("alice@remote.example", with_field(b"Precedence: bulk")),
    ("alice@remote.example", with_field(b"List-Id: <list.remote.example>")),
    ("alice@remote.example", with_field(b"Auto-Submitted: auto-replied")),
])
def test_vacation_mailet_is_silent_to_lists_machines_and_the_null_sender(harness, sender, content):
    set_vacation(harness)
    run = harness.service(harness.mailet("VacationMailet"), harness.mail(content, sender=sender))
    assert run.sent == []


def test_vacation_mailet_honours_dates_and_the_switch(harness):
    mailet = harness.mailet("VacationMailet")
    set_vacation(harness, from_date=time.time() + 3600)
    assert harness.service(mailet, harness.mail(MESSAGE)).sent == []
    set_vacation(harness, to_date=time.time() - 3600)
    assert harness.service(mailet, harness.mail(MESSAGE)).sent == []
    set_vacation(harness, enabled=False)
    assert harness.service(mailet, harness.mail(MESSAGE)).sent == []
    set_vacation(harness, to_date=time.time() + 3600)
    [reply] = harness.service(mailet, harness.mail(MESSAGE)).sent
    assert reply.get_header("Subject") == "Re: Lunch?"


def test_vacation_mailet_parameters(harness):
    set_vacation(harness)
    mailet = harness.mailet("VacationMailet", {"replyMode": "replyToHeader",
                                               "useUserAsMailFrom": "true"})
    content = with_field(b"Reply-To: Team <team@remote.example>")
    [reply] = harness.service(mailet, harness.mail(content)).sent
    assert reply.recipients == ["team@remote.example"] and reply.sender == BOB
    with pytest.raises(ConfigError, match="expected envelope or replyToHeader"):
        harness.mailet("VacationMailet", {"replyMode": "sometimes"})
    with pytest.raises(ConfigError, match="days"):
        harness.mailet("VacationMailet", {"days": "0"})
