"""What ESMTP parameters leave in the mail: the Received field (RFC 6531's UTF8SMTP, James's
PRIORITY comment) and only the parameters a handler of the chain took."""

from __future__ import annotations

PRIORITY = ('<handler class="SmtpMtPriorityEhloHook"/><handler class="SmtpMtPriorityParameterHook"/>'
            '<handler class="SmtpMtPriorityMessageHook"/>')


def received(spooled) -> str:
    head = spooled.content.split(b"\r\n\r\n", 1)[0].decode()
    return head.split("\r\nSubject:", 1)[0]


def test_utf8smtp_in_received(chainmail_session):
    s = chainmail_session()
    s.ehlo()
    assert s.mail("a@local.test", "SMTPUTF8").code == 250
    assert s.rcpt("u@local.test").code == 250
    assert s.data("Subject: x\n\nbody\n").code == 250
    assert s.mail("a@local.test").code == 250 and s.rcpt("u@local.test").code == 250
    assert s.data("Subject: y\n\nbody\n").code == 250
    first, second = s.spooled()
    assert " with UTF8SMTP ID " in received(first)
    assert " with ESMTP ID " in received(second)


def test_priority_comment_in_received(chainmail_session):
    s = chainmail_session(PRIORITY)
    s.ehlo()
    assert s.mail("a@local.test", "MT-PRIORITY=-3").code == 250
    assert s.rcpt("u@local.test").code == 250
    assert s.data("Subject: x\n\nbody\n").code == 250
    [mail] = s.spooled()
    assert "for <u@local.test> (PRIORITY -3);" in received(mail)
    assert mail.mail_params["MT-PRIORITY"] == "-3"


def test_parameters_no_handler_took_do_not_travel(chainmail_session):
    s = chainmail_session()
    s.ehlo()
    assert s.mail("a@local.test", "MT-PRIORITY=9 X-UNKNOWN=1 BODY=8BITMIME").code == 250
    assert s.rcpt("u@local.test").code == 250
    assert s.data("Subject: x\n\nbody\n").code == 250
    [mail] = s.spooled()
    assert mail.mail_params == {"BODY": "8BITMIME"}
    assert "PRIORITY" not in received(mail)
