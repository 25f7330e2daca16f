"""The SubjectTag mailet, alone and in a processor, with the mailet harness."""

from __future__ import annotations

import pytest

from chainmail.testing import ConfigError, MailetHarness

from chainmail_example_plugin.mailets import SubjectTag

FLAGGED = b"From: a@remote.example\r\nSubject: cheap pills\r\nX-Spam-Flag: YES\r\n\r\nbuy\r\n"
CLEAN = b"From: a@remote.example\r\nSubject: lunch\r\n\r\nnoon?\r\n"


def test_mail_with_the_header_is_tagged_once(mailet_harness):
    tagger = mailet_harness.mailet(SubjectTag, {"tag": "[SPAM]", "header": "X-Spam-Flag"})
    run = mailet_harness.service(tagger, mailet_harness.mail(FLAGGED))
    assert run.mail.get_header("Subject") == "[SPAM] cheap pills"
    assert run.mail.attributes["subject_tagged"] is True
    again = mailet_harness.service(tagger, run.mail)
    assert again.mail.get_header("Subject") == "[SPAM] cheap pills"
    assert run.mail.body == b"buy\r\n"


def test_mail_without_the_header_is_left_alone(mailet_harness):
    tagger = mailet_harness.mailet(SubjectTag, {"tag": "[SPAM]", "header": "X-Spam-Flag"})
    run = mailet_harness.service(tagger, mailet_harness.mail(CLEAN))
    assert run.mail.content == CLEAN


def test_the_tag_is_required(mailet_harness):
    with pytest.raises(ConfigError, match="tag"):
        mailet_harness.mailet(SubjectTag, {"header": "X-Spam-Flag"})


def test_in_a_processor_by_its_entry_point_name_before_local_delivery():
    processors = ('<processor state="root">'
                  '<mailet match="HasHeader=X-Spam-Flag" class="com.example.mail.SubjectTag">'
                  '<tag>[SPAM]</tag></mailet>'
                  '<mailet match="RecipientIsLocal" class="LocalDelivery"/></processor>')
    with MailetHarness(users={"bob@local.test": "a long password"}) as harness:
        harness.process(processors, harness.mail(FLAGGED))
        harness.process(processors, harness.mail(CLEAN))
        inbox = harness.mailbox("bob@local.test")
    subjects = sorted(line for m in inbox for line in m.splitlines() if line.startswith(b"Subject:"))
    assert subjects == [b"Subject: [SPAM] cheap pills", b"Subject: lunch"]
