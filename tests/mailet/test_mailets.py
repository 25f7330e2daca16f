"""Every standard mailet, through an engine built from XML (no sockets)."""

from __future__ import annotations

import email
import email.policy
import logging
import mailbox

import pytest

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import GHOST
from chainmail.protocol.lineends import is_canonical

from .helpers import Record, build, container_xml, mail

ERROR_PROC = '<processor state="error"><mailet match="All" class="Record"/><mailet match="All" class="Null"/></processor>'


async def run(context, mailets: str, m, extra: str = ERROR_PROC):
    xml = container_xml(f'<processor state="root">{mailets}</processor>{extra}')
    return await build(xml, context).service(m)


@pytest.fixture
def users(stores):
    stores.users.add("bob@local.test", "pw")
    stores.users.add("carol@local.test", "pw")
    return stores.users


def inbox(stores, user):
    return mailbox.Maildir(stores.mailboxes.path_for(user), factory=None, create=False)


async def test_local_delivery_into_maildir_with_trace_headers(context, stores, users):
    result = await run(context, '<mailet match="All" class="LocalDelivery"/>',
                       mail(["Bob+news@local.test", "carol@local.test"]))
    assert result.finished[0].state == GHOST and result.outputs == []
    [msg] = list(inbox(stores, "bob@local.test"))
    assert msg["Return-Path"] == "<alice@remote.example>"
    assert msg["Delivered-To"] == "Bob+news@local.test"
    assert msg["Received"] and msg.get_payload() == "body line\n"
    assert len(inbox(stores, "carol@local.test")) == 1


async def test_local_delivery_failures_go_to_the_error_processor(context, stores, users):
    stores.mailboxes.set_quota("carol@local.test", 10)
    result = await run(context, '<mailet match="All" class="LocalDelivery"/>',
                       mail(["bob@local.test", "carol@local.test", "ghost@local.test"]))
    assert len(inbox(stores, "bob@local.test")) == 1
    reasons = sorted((o.recipients[0], o.state, o.error_message.split(":")[0]) for o in result.outputs)
    assert reasons == [("carol@local.test", "error", "552 5.2.2 Over quota"),
                       ("ghost@local.test", "error", "550 5.1.1 Unknown user")]


async def test_recipient_rewrite_table(context, stores, users):
    rrt = stores.rrt
    rrt.add_alias("sales@local.test", "bob@local.test")
    rrt.add_domain_alias("alias.test", "local.test")
    rrt.add_forward("team@local.test", "carol@local.test")
    rrt.add_forward("team@local.test", "out@remote.example")
    rrt.add_forward("loop1@local.test", "loop2@local.test")
    rrt._conn.execute("INSERT INTO rrt_mappings VALUES ('forward', 'loop2@local.test', 'loop1@local.test')")
    rrt._reload_locked()
    result = await run(context, '<mailet match="All" class="RecipientRewriteTable"/>'
                                '<mailet match="All" class="Record"><tag>after</tag></mailet>'
                                '<mailet match="All" class="Null"/>',
                       mail(["sales@local.test", "carol@alias.test", "team@local.test",
                             "plain@remote.example", "loop1@local.test"]))
    assert Record.seen == [("after", ("bob@local.test", "carol@local.test", "plain@remote.example"))]
    by_state = {o.state: o for o in result.outputs}
    assert by_state["root"].recipients == ["out@remote.example"]
    assert by_state["root"].attributes["sent_by_mailet"] is True
    assert by_state["error"].recipients == ["loop1@local.test"]
    assert "554 5.4.6" in by_state["error"].error_message and "loop" in by_state["error"].error_message


async def test_to_processor_with_notice(context):
    result = await run(context, '<mailet match="All" class="ToProcessor"><processor>error</processor>'
                                '<notice>550 no</notice></mailet>', mail())
    assert Record.seen == [("error", ("bob@local.test",))] and result.finished[0].error_message == "550 no"


async def test_to_repository_and_pass_through(context, stores):
    result = await run(context, '<mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/x/'
                                '</repositoryPath><passThrough>true</passThrough></mailet>'
                                '<mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/y/'
                                '</repositoryPath></mailet><mailet match="All" class="Record"/>', mail())
    assert len(stores.repositories.get("file://var/mail/x/")) == 1
    assert len(stores.repositories.get("file://var/mail/y/")) == 1
    assert Record.seen == [] and result.finished[0].state == GHOST


async def test_bounce_is_an_rfc3464_report_to_the_sender(context):
    m = mail(["nobody@local.test"], error_message="550 5.1.1 Unknown user: <nobody@local.test>")
    result = await run(context, '<mailet match="All" class="Bounce"/><mailet match="All" class="Record"/>'
                                '<mailet match="All" class="Null"/>', m)
    assert Record.seen == [("root", ("nobody@local.test",))]   # passThrough defaults to true
    [dsn] = result.outputs
    assert (dsn.sender, dsn.recipients, dsn.state) == ("", ["alice@remote.example"], "root")
    msg = email.message_from_bytes(dsn.content, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].addresses[0].addr_spec == "postmaster@local.test"
    text, status, original = msg.get_payload()
    assert "nobody@local.test" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mx.test"
    assert blocks[1]["Final-Recipient"] == "rfc822; nobody@local.test"
    assert (blocks[1]["Action"], blocks[1]["Status"]) == ("failed", "5.1.1")
    assert original.get_content_type() == "message/rfc822"
    assert original.get_payload()[0]["Message-ID"] == "<m1@remote.example>"


async def test_never_bounce_the_null_sender(context):
    result = await run(context, '<mailet match="All" class="Bounce"><passThrough>false</passThrough></mailet>',
                       mail(sender=""))
    assert result.outputs == [] and result.finished[0].state == GHOST


async def test_bounce_attachment_heading_and_none(context):
    for attachment, ctype in (("heading", "text/rfc822-headers"), ("none", None)):
        result = await run(context, f'<mailet match="All" class="DSNBounce"><attachment>{attachment}'
                                    '</attachment><passThrough>false</passThrough></mailet>', mail())
        msg = email.message_from_bytes(result.outputs[0].content, policy=email.policy.default)
        parts = msg.get_payload()
        assert (parts[2].get_content_type() if len(parts) == 3 else None) == ctype


async def test_notify_postmaster(context):
    result = await run(context, '<mailet match="All" class="NotifyPostmaster"><attachError>true</attachError>'
                                '</mailet><mailet match="All" class="Null"/>', mail(error_message="oops"))
    [note] = result.outputs
    assert note.recipients == ["postmaster@local.test"] and note.sender == ""
    msg = email.message_from_bytes(note.content, policy=email.policy.default)
    assert msg["Subject"] == "[NOTIFY] hello"
    assert "oops" in msg.get_payload()[0].get_content()
    assert msg.get_payload()[1].get_content_type() == "message/rfc822"


HIDING = (b"From: Alice <alice@remote.example>\r\nX-Inject: x\rFrom: <ceo@example.org>\r\n"
          b"Subject: hidden\r\n\r\nouter\r.\rMAIL FROM:<e@evil.test>\r\nnul\x00\r\n")


@pytest.mark.parametrize("mailet", ["DSNBounce", "NotifyPostmaster"])
@pytest.mark.parametrize("attachment", ["message", "heading"])
async def test_reports_quote_the_original_in_canonical_form(context, mailet, attachment):
    """A report quoting a mail that holds a bare CR or a NUL (a mailet wrote it) quotes it
    canonical: the From hidden behind a bare CR stays inside X-Inject for every reader."""
    result = await run(context, f'<mailet match="All" class="{mailet}"><attachment>{attachment}'
                                '</attachment><passThrough>false</passThrough></mailet>',
                       mail(content=HIDING, error_message="550 5.1.1 no"))
    [report] = result.outputs
    assert is_canonical(report.content)
    msg = email.message_from_bytes(report.content, policy=email.policy.default)
    [quoted] = [p for p in msg.walk() if p.get_content_type() in ("message/rfc822", "text/rfc822-headers")]
    inner = quoted.get_payload()[0] if attachment == "message" else \
        email.message_from_bytes(quoted.get_content().encode(), policy=email.policy.default)
    assert inner.get_all("From") == ["Alice <alice@remote.example>"]
    assert inner["X-Inject"] == "x From: <ceo@example.org>"


async def test_headers(context):
    result = await run(context, """
        <mailet match="All" class="AddHeader"><name>X-One</name><value>1</value></mailet>
        <mailet match="All" class="SetMimeHeader"><name>Subject</name><value>new</value></mailet>
        <mailet match="All" class="RemoveMimeHeader"><name>Received, X-Absent</name></mailet>
        <mailet match="All" class="SetMailAttribute"><org.example.flag>yes</org.example.flag></mailet>
        <mailet match="All" class="MailAttributesToMimeHeaders"><simplemapping>org.example.flag; X-Flag</simplemapping></mailet>
        <mailet match="All" class="RemoveMailAttribute"><name>org.example.flag</name></mailet>
        <mailet match="All" class="Null"/>""", mail())
    [m] = result.finished
    assert m.get_header("X-One") == "1" and m.get_headers("Subject") == ["new"]
    assert not m.has_header("Received") and m.get_header("X-Flag") == "yes"
    assert "org.example.flag" not in m.attributes and m.body == b"body line\r\n"


async def test_log_message(context, caplog):
    caplog.set_level(logging.INFO, "chainmail.mailet")
    await run(context, '<mailet match="All" class="LogMessage"><comment>hi there</comment><bodyMax>4</bodyMax>'
                       '</mailet><mailet match="All" class="Null"/>', mail())
    assert "hi there" in caplog.text and "Subject: hello" in caplog.text and "body" in caplog.text
    assert "body line" not in caplog.text


async def test_postmaster_alias(context):
    await run(context, '<mailet match="All" class="PostmasterAlias"/><mailet match="All" class="Record"/>'
                       '<mailet match="All" class="Null"/>',
              mail(["PostMaster@other.test", "postmaster@remote.example", "bob@local.test"]))
    assert Record.seen == [("root", ("postmaster@local.test", "postmaster@remote.example", "bob@local.test"))]


async def test_redirect_and_forward(context):
    result = await run(context, """
        <mailet match="All" class="Redirect"><recipients>postmaster, x@remote.example</recipients>
          <sender>null</sender><prefix>[R]</prefix><passThrough>true</passThrough></mailet>
        <mailet match="All" class="Forward"><forwardTo>y@remote.example</forwardTo></mailet>
        <mailet match="All" class="Record"/>""", mail())
    redirect, forward = result.outputs
    assert redirect.recipients == ["postmaster@local.test", "x@remote.example"] and redirect.sender == ""
    assert redirect.get_header("Subject") == "[R] hello"
    assert forward.recipients == ["y@remote.example"] and forward.sender == "alice@remote.example"
    assert forward.content == mail().content
    assert Record.seen == [] and result.finished[0].state == GHOST


@pytest.mark.parametrize("mailet", [
    '<mailet match="All" class="ToProcessor"/>',
    '<mailet match="All" class="ToRepository"/>',
    '<mailet match="All" class="AddHeader"><value>x</value></mailet>',
    '<mailet match="All" class="Forward"/>',
    '<mailet match="All" class="Bounce"><attachment>all-of-it</attachment></mailet>',
    '<mailet match="All" class="LocalDelivery"><errorProcessor>nope</errorProcessor></mailet>',
    '<mailet match="All" class="MailAttributesToMimeHeaders"><simplemapping>only</simplemapping></mailet>',
])
def test_missing_or_bad_parameters_are_configuration_errors(context, mailet):
    with pytest.raises(ConfigError) as err:
        build(container_xml(f'<processor state="root">{mailet}</processor>'), context)
    assert str(err.value).startswith("mailetcontainer.xml:1: mailet ")


async def test_mail_a_mailet_sends_enters_the_spool_canonical(context, stores):
    """send_mail, reports and `chainmail repository reprocess` all commit through the
    context: what they put in the spool has no bare CR, bare LF or NUL."""
    msg_id = await context.commit(mail(content=HIDING))
    with stores.spool.open_body(msg_id) as fh:
        spooled = fh.read()
    assert is_canonical(spooled)
    assert b"X-Inject: x From: <ceo@example.org>\r\n" in spooled
    assert spooled.endswith(b"\r\nouter\r\n.\r\nMAIL FROM:<e@evil.test>\r\nnul\r\n")


async def test_dsn_requests_follow_aliases(context, stores, users):
    """RFC 3461 §6.2.7: through a 1:1 alias NOTIFY passes as it is; to several addresses
    NOTIFY=SUCCESS is dropped; ORCPT names the address the sender gave."""
    rrt = stores.rrt
    rrt.add_alias("sales@local.test", "bob@local.test")
    rrt.add_forward("team@local.test", "carol@local.test")
    rrt.add_forward("team@local.test", "bob@local.test")
    params = {"sales@local.test": {"NOTIFY": "SUCCESS,FAILURE"},
              "team@local.test": {"NOTIFY": "SUCCESS", "ORCPT": "rfc822;list@local.test"}}
    result = await run(context, '<mailet match="All" class="RecipientRewriteTable"/>'
                                '<mailet match="All" class="Null"/>',
                       mail(["sales@local.test", "team@local.test"], rcpt_params=params))
    [done] = result.finished
    assert done.rcpt_params["bob@local.test"] == {"NOTIFY": "SUCCESS,FAILURE",
                                                  "ORCPT": "rfc822;sales@local.test"}
    assert done.rcpt_params["carol@local.test"] == {"NOTIFY": "NEVER",
                                                    "ORCPT": "rfc822;list@local.test"}
