"""The mailet harness: mailets, matchers and whole processors on a Mail, with real stores."""

from __future__ import annotations

import pytest
import trio

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import GenericMailet, GenericMatcher
from chainmail.testing import MailetHarness


class Tag(GenericMailet):
    """Adds X-Tag: <value>; sends a copy to <copyTo> if set."""

    def configure(self, config):
        self.value = config.require("value")
        self.copy_to = config.get("copyTo")

    async def service(self, mail):
        await trio.sleep(0)
        mail.set_header("X-Tag", self.value)
        if self.copy_to:
            copy = mail.duplicate([self.copy_to])
            await self.context.send_mail(copy, "transport")
        self.context.log.info("%s: tagged", mail.name)


class LocalOnly(GenericMatcher):
    def match(self, mail):
        return [r for r in mail.recipients if self.context.is_local_email(r)]


def test_a_mailet_class_with_parameters_changes_the_mail_and_its_sent_mail_is_kept(mailet_harness):
    tag = mailet_harness.mailet(Tag, {"value": "seen", "copyTo": "archive@local.test"})
    run = mailet_harness.service(tag, mailet_harness.mail())
    assert run.mail.get_header("X-Tag") == "seen"
    [copy] = run.sent
    assert copy.recipients == ["archive@local.test"] and copy.state == "transport"
    assert any("tagged" in line for line in run.logs)
    assert mailet_harness.spooled() == []   # sent mail is handed back, not spooled


def test_a_missing_required_parameter_is_a_configuration_error(mailet_harness):
    with pytest.raises(ConfigError, match="value"):
        mailet_harness.mailet(Tag, {})


def test_matchers_by_class_and_by_installed_name():
    with MailetHarness(users={"bob@local.test": "a long password"}) as h:
        mail = h.mail(recipients=["bob@local.test", "nobody@local.test", "x@remote.example"])
        assert h.match(h.matcher(LocalOnly), mail) == ["bob@local.test"]
        assert h.match(h.matcher("HostIs", "remote.example"), mail) == ["x@remote.example"]
        assert h.match(h.matcher("SMTPIsAuthNetwork"), mail) == mail.recipients   # 127.0.0.1
        assert h.match(h.matcher("SMTPIsAuthNetwork"), h.mail(remote_addr="192.0.2.1")) == []


def test_a_processor_delivers_into_maildirs_and_sends_failures_to_the_error_repository():
    processors = ('<processor state="root"><mailet match="RecipientIsLocal" class="LocalDelivery"/>'
                  '<mailet match="All" class="ToProcessor"><processor>error</processor></mailet>'
                  '</processor>')
    with MailetHarness(users={"bob@local.test": "a long password"}) as h:
        done = h.process(processors, h.mail(recipients=["bob@local.test", "x@remote.example"]))
        [delivered] = h.mailbox("bob@local.test")
        [failed] = h.repository("error")
    assert b"Subject: hello" in delivered
    assert failed.recipients == ["x@remote.example"]
    assert {m.state for m in done.finished} == {"ghost"}
    assert any("delivered to <bob@local.test>" in line for line in done.logs)
