"""RFC 3464 reports built from RFC 3461 parameters: Original-Envelope-Id and
Original-Recipient decoded from xtext, ``delivered`` reports for NOTIFY=SUCCESS from
LocalDelivery, and NOTIFY=NEVER/RET=HDRS honoured by the context's bounce."""

from __future__ import annotations

import email
import email.policy

import pytest

from chainmail.mailet.api import Mail
from chainmail.mailet.dsn import (build_dsn, original_envelope_id, original_recipient,
                                  wanted_notifications)
from chainmail.testing import MailetHarness

QID = "0190a1b2c3d4-0000a1b2c3d4e5f6a7b8"
CONTENT = b"From: alice@remote.example\r\nSubject: hi\r\n\r\nbody\r\n"


def dsn_mail(rcpt_params=None, mail_params=None, recipients=("bob@local.test",), sender="alice@remote.example"):
    return Mail(QID, sender, list(recipients), CONTENT, queued_at=1.0,
                mail_params=mail_params or {}, rcpt_params=rcpt_params or {})


def parse(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    return msg, msg.get_payload()[1].get_payload()


def test_envelope_id_and_original_recipient_are_decoded():
    mail = dsn_mail({"bob@local.test": {"NOTIFY": "FAILURE", "ORCPT": "rfc822;b+2Bx@old.example"}},
                    {"ENVID": "QQ+20314159", "RET": "HDRS"})
    raw = build_dsn(mail, reason="550 5.1.1 Unknown user", reporting_mta="mx.test",
                    postmaster="postmaster@local.test")
    _, status = parse(raw)
    assert status[0]["Original-Envelope-Id"] == "QQ 314159"
    assert status[1]["Original-Recipient"] == "rfc822;b+x@old.example"
    assert status[1]["Final-Recipient"] == "rfc822; bob@local.test"
    assert raw.isascii()


def test_a_utf8_original_recipient_stays_7bit():
    mail = dsn_mail({"bob@local.test": {"ORCPT": "utf-8;caf\\x{E9}@old.example"}})
    raw = build_dsn(mail, reason="550 5.1.1 x", reporting_mta="mx.test", postmaster="postmaster@local.test")
    _, status = parse(raw)
    assert status[1]["Original-Recipient"] == "utf-8;caf\\x{E9}@old.example"
    assert original_recipient("rfc822;caf+C3+A9@x") == "rfc822;caf+C3+A9@x"


def test_values_that_would_forge_a_field_are_never_written():
    # set by a mailet or an older spool entry, never accepted from a client: a value that
    # decodes to a line break is quoted still encoded, a raw line break not at all
    assert original_envelope_id("a+0D+0AX-Forged:+20yes") == "a+0D+0AX-Forged:+20yes"
    assert original_envelope_id("a\r\nX-Forged: yes") is None
    assert original_recipient("rfc822;a+0D+0AX-Forged:+20yes") == "rfc822;a+0D+0AX-Forged:+20yes"
    assert original_recipient("rfc822;a\r\nX-Forged: yes") is None
    mail = dsn_mail({"bob@local.test": {"ORCPT": "rfc822;a+0D+0AX-Forged:+20yes"}},
                    {"ENVID": "a\r\nX-Forged: yes"})
    raw = build_dsn(mail, reason="550 5.1.1 x", reporting_mta="mx.test", postmaster="postmaster@local.test")
    assert b"\nX-Forged" not in raw and b"Original-Envelope-Id" not in raw
    _, status = parse(raw)
    assert status[1]["Original-Recipient"] == "rfc822;a+0D+0AX-Forged:+20yes"


def test_a_value_that_is_not_xtext_is_quoted_when_harmless():
    assert original_envelope_id("plain-id") == "plain-id"
    assert original_recipient("nosemicolon@x") == "nosemicolon@x"
    assert original_envelope_id(None) is None and original_recipient("") is None


def test_delivered_report():
    mail = dsn_mail({"bob@local.test": {"NOTIFY": "SUCCESS", "ORCPT": "rfc822;bob@local.test"}},
                    {"ENVID": "ID1"})
    raw = build_dsn(mail, reason="delivered to the mailbox", reporting_mta="mx.test",
                    postmaster="postmaster@local.test", status="2.0.0", action="delivered",
                    attachment="heading")
    msg, status = parse(raw)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert (status[1]["Action"], status[1]["Status"]) == ("delivered", "2.0.0")
    assert status[1]["Diagnostic-Code"] is None
    assert status[0]["Original-Envelope-Id"] == "ID1"
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert "Your message was delivered" in msg.get_payload()[0].get_content()


@pytest.mark.parametrize("notify, action, wanted", [
    (None, "failed", True), (None, "delivered", False), (None, "delayed", False),
    ("NEVER", "failed", False), ("NEVER", "delivered", False),
    ("SUCCESS", "delivered", True), ("SUCCESS", "relayed", True), ("SUCCESS", "failed", False),
    ("success,delay", "delayed", True), ("FAILURE,DELAY", "failed", True),
])
def test_wanted_notifications(notify, action, wanted):
    params = {"bob@local.test": {"NOTIFY": notify}} if notify else {}
    assert wanted_notifications(dsn_mail(params), ["bob@local.test"], action) == \
        (["bob@local.test"] if wanted else [])


@pytest.fixture
def harness():
    with MailetHarness(users={"bob@local.test": "pw", "carol@local.test": "pw"}) as h:
        yield h


def reports(run) -> list:
    return [m for m in run.sent if m.sender == ""]


def test_local_delivery_reports_delivered_to_those_who_asked(harness):
    mail = harness.mail(recipients=["bob@local.test", "carol@local.test", "nobody@local.test"],
                        name=QID, mail_params={"ENVID": "QQ314159", "RET": "FULL"},
                        rcpt_params={"bob@local.test": {"NOTIFY": "SUCCESS,FAILURE",
                                                        "ORCPT": "rfc822;bob@old.example"},
                                     "carol@local.test": {"NOTIFY": "FAILURE"},
                                     "nobody@local.test": {"NOTIFY": "SUCCESS"}})
    run = harness.service(harness.mailet("LocalDelivery"), mail)
    assert len(harness.mailbox("bob@local.test")) == 1
    assert len(harness.mailbox("carol@local.test")) == 1
    [report] = reports(run)
    assert (report.sender, report.recipients) == ("", ["alice@remote.example"])
    assert report.attributes["bounce_of"] == QID
    msg, status = parse(report.content)
    assert [b["Final-Recipient"] for b in status[1:]] == ["rfc822; bob@local.test"]
    assert (status[1]["Action"], status[1]["Status"]) == ("delivered", "2.0.0")
    assert status[1]["Original-Recipient"] == "rfc822;bob@old.example"
    assert status[0]["Original-Envelope-Id"] == "QQ314159"
    # RET=FULL is for failures: a success report carries the header section only
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"
    # the unknown user goes to the error processor, not into a delivered report
    assert [m.recipients for m in run.sent if m.sender] == [["nobody@local.test"]]


def test_local_delivery_without_notify_success_sends_nothing(harness):
    for params in ({}, {"bob@local.test": {"NOTIFY": "NEVER"}},
                   {"bob@local.test": {"NOTIFY": "FAILURE,DELAY"}}):
        run = harness.service(harness.mailet("LocalDelivery"), harness.mail(rcpt_params=params))
        assert reports(run) == []
    assert len(harness.mailbox("bob@local.test")) == 3


def test_no_delivered_report_for_the_null_sender(harness):
    run = harness.service(harness.mailet("LocalDelivery"), harness.mail(
        sender="", rcpt_params={"bob@local.test": {"NOTIFY": "SUCCESS"}}))
    assert run.sent == []
    assert len(harness.mailbox("bob@local.test")) == 1


def test_context_bounce_honours_never_and_hdrs(harness):
    never = harness.mail(recipients=["x@local.test"], rcpt_params={"x@local.test": {"NOTIFY": "NEVER"}})
    run = harness.service(harness.mailet("Bounce"), never)
    assert run.sent == []
    hdrs = harness.mail(recipients=["x@local.test"], mail_params={"RET": "HDRS"})
    [report] = harness.service(harness.mailet("Bounce"), hdrs).sent
    msg, status = parse(report.content)
    assert status[1]["Action"] == "failed"
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert b"body line" not in report.content
