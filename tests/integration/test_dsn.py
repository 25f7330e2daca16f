"""RFC 3461 DSN on the receiving side, end to end: a real ``chainmail run`` with James's DSN
hooks in its SMTP and LMTP handler chains, smtplib and raw exchanges; reports read from the
sender's Maildir with the ``email`` package."""

from __future__ import annotations

import email
import email.policy

import pytest

from chainmail.testing import ChainmailServer
from chainmail.testing.conf import server_xml

from ..conftest import raw_exchange

DSN = "".join(f'<handler class="org.apache.james.smtpserver.dsn.{name}"/>'
              for name in ("DSNEhloHook", "DSNMailParameterHook", "DSNRcptParameterHook",
                           "DSNMessageHook"))
VALID_RCPT = '<handler class="org.apache.james.smtpserver.fastfail.ValidRcptHandler"/>'
LMTP_CORE = "org.apache.james.lmtpserver.CoreCmdHandlerLoader"
LMTP_MAILETS = "org.apache.james.lmtpserver.MailetContainerCmdHandlerLoader"
USERS = {"bob@local.test": "bob password", "carol@local.test": "carol password"}

#: local users into their Maildirs; unknown local addresses bounced with the message
#: attached (so RET=HDRS shows); anything else kept in a repository
CONTAINER = """<mailetcontainer>
  <context><postmaster>postmaster@local.test</postmaster></context>
  <spooler><threads>2</threads><errorRepository>file://var/mail/error/</errorRepository></spooler>
  <processors>
    <processor state="root">
      <mailet match="All" class="ToProcessor"><processor>transport</processor></mailet>
    </processor>
    <processor state="transport">
      <mailet match="RecipientIsLocal" class="LocalDelivery"/>
      <mailet match="HostIsLocal" class="ToProcessor"><processor>local-address-error</processor>
        <notice>550 5.1.1 Requested action not taken: no such user here</notice></mailet>
      <mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/other/</repositoryPath></mailet>
    </processor>
    <processor state="local-address-error">
      <mailet match="All" class="Bounce"><passThrough>false</passThrough></mailet>
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/error/</repositoryPath></mailet>
    </processor>
  </processors>
</mailetcontainer>
"""

#: every mail kept as the container received it
KEEP = """<processor state="root">
  <mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/kept/</repositoryPath></mailet>
</processor>"""


@pytest.fixture
def servers(tmp_path):
    started: list[ChainmailServer] = []

    def start(handlers: str = DSN, *, lmtp_core: str | None = None, lmtp_handlers: str = DSN,
              mailetcontainer: str | None = CONTAINER) -> ChainmailServer:
        lmtp = None
        if lmtp_core is not None:
            lmtp = server_xml(lmtp_handlers, kind="lmtp", core=lmtp_core, hello_name="lmtp.test")
        server = ChainmailServer(tmp_path / f"node{len(started)}", handlers=handlers,
                                 lmtpserver=lmtp, mailetcontainer=mailetcontainer, users=USERS)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def lmtp_port(server: ChainmailServer) -> int:
    return server.ports[-1]


def session(port: int, commands: list[str], hello: str = "EHLO client.test") -> list[str]:
    """Each command's reply lines (the greeting and hello left out), one command at a time."""
    data = "".join(f"{c}\r\n" for c in [hello, *commands, "QUIT"]).encode()
    lines = raw_exchange(port, data).decode().split("\r\n")
    return [line for line in lines if line and line[3:4] == " "][2:-1]


def parse(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", raw[:500]
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert parts[1].get_content_type() == "message/delivery-status"
    return msg, parts, parts[1].get_payload()


def message(subject: str, sender: str = "carol@local.test") -> str:
    return (f"From: {sender}\r\nTo: someone\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@test>\r\n\r\nbody of {subject}\r\n")


# -- announcement ---------------------------------------------------------------------------

def test_ehlo_and_lhlo_announce_dsn(servers):
    server = servers(lmtp_core=LMTP_CORE)
    with server.smtp() as client:
        client.ehlo()
        assert client.has_extn("dsn")
    data = raw_exchange(lmtp_port(server), b"LHLO client.test\r\nQUIT\r\n")
    assert b"\r\n250-DSN\r\n" in data or b"\r\n250 DSN\r\n" in data


def test_without_the_dsn_handlers_nothing_is_announced_and_notify_is_refused(servers):
    """James's default chains have no DSN: RCPT parameters nobody handles are refused with
    504, MAIL parameters nobody handles are ignored."""
    server = servers(handlers="", lmtp_core=LMTP_CORE, lmtp_handlers="", mailetcontainer=None)
    with server.smtp() as client:
        client.ehlo()
        assert not client.has_extn("dsn")
    replies = session(server.port, ["MAIL FROM:<carol@local.test> RET=HDRS ENVID=X",
                                    "RCPT TO:<bob@local.test> NOTIFY=SUCCESS",
                                    "RCPT TO:<bob@local.test> ORCPT=rfc822;bob@local.test"])
    assert replies[0].startswith("250 2.1.0")
    assert replies[1] == "504 5.5.4 Unrecognized or unsupported option: NOTIFY"
    assert replies[2] == "504 5.5.4 Unrecognized or unsupported option: ORCPT"
    data = raw_exchange(lmtp_port(server), b"LHLO client.test\r\nMAIL FROM:<carol@local.test>\r\n"
                        b"RCPT TO:<bob@local.test> NOTIFY=NEVER\r\nQUIT\r\n")
    assert b"DSN" not in data
    assert b"504 5.5.4 Unrecognized or unsupported option: NOTIFY\r\n" in data


# -- parameters -----------------------------------------------------------------------------

BAD_MAIL = [
    ("RET=FOO", "501 5.5.4 Invalid RET parameter: must be FULL or HDRS"),
    ("RET", "501 5.5.4 Invalid RET parameter: must be FULL or HDRS"),
    ("ENVID", "501 5.5.4 Invalid ENVID parameter: a value is required"),
    ("ENVID=a+b", "501 5.5.4 Invalid ENVID parameter: not xtext (RFC 3461 section 4)"),
    ("ENVID=a+2b", "501 5.5.4 Invalid ENVID parameter: not xtext (RFC 3461 section 4)"),
    ("ENVID=a+0D+0AX:+20y", "501 5.5.4 Invalid ENVID parameter: encodes a control character"),
    ("ENVID=" + "x" * 101, "501 5.5.4 Invalid ENVID parameter: longer than 100 characters"),
    ("ENVID=caf+C3+A9", "501 5.5.4 Invalid ENVID parameter: must be US-ASCII"),
    ("RET=FULL RET=HDRS", "501 5.5.4 Syntax error in parameters or arguments"),
]


def test_bad_mail_parameters_are_refused(servers):
    server = servers(mailetcontainer=None)
    for params, reply in BAD_MAIL:
        replies = session(server.port, [f"MAIL FROM:<carol@local.test> {params}",
                                        "MAIL FROM:<carol@local.test> RET=hdrs ENVID=" + "x" * 100])
        assert replies == [reply, "250 2.1.0 Sender <carol@local.test> OK"], params


BAD_RCPT = [
    ("NOTIFY=NEVER,SUCCESS", "Invalid NOTIFY parameter: NEVER cannot be combined with other values"),
    ("NOTIFY=SUCCESS,NEVER", "Invalid NOTIFY parameter: NEVER cannot be combined with other values"),
    ("NOTIFY=SUCCESS,SUCCESS", "Invalid NOTIFY parameter: a value is listed twice"),
    ("NOTIFY=FAILURE,delay,failure", "Invalid NOTIFY parameter: a value is listed twice"),
    ("NOTIFY=SOMETIMES", "Invalid NOTIFY parameter: must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
    ("NOTIFY=SUCCESS,", "Invalid NOTIFY parameter: must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
    ("NOTIFY", "Invalid NOTIFY parameter: a value is required"),
    ("ORCPT", "Invalid ORCPT parameter: a value is required"),
    ("ORCPT=bob@local.test", "Invalid ORCPT parameter: must be an address type, a semicolon and an address"),
    ("ORCPT=rfc822;", "Invalid ORCPT parameter: has no address after the address type"),
    ("ORCPT=rfc822;a+b@x", "Invalid ORCPT parameter: not xtext (RFC 3461 section 4)"),
    ("ORCPT=rfc822;a+0D+0A@x", "Invalid ORCPT parameter: encodes a control character"),
    ("ORCPT=rfc822;" + "a" * 490 + "@local.test", "Invalid ORCPT parameter: longer than 500 characters"),
    ("ORCPT=utf-8;caf\\x{D800}@x", "Invalid ORCPT parameter: an escape that is no Unicode character"),
]


def test_bad_rcpt_parameters_are_refused(servers):
    server = servers(mailetcontainer=None)
    for params, reply in BAD_RCPT:
        replies = session(server.port, ["MAIL FROM:<carol@local.test>",
                                        f"RCPT TO:<bob@local.test> {params}",
                                        "RCPT TO:<bob@local.test> NOTIFY=never ORCPT=rfc822;b+2Bx@old.example"])
        assert replies == ["250 2.1.0 Sender <carol@local.test> OK", f"501 5.5.4 {reply}",
                           "250 2.1.5 Recipient <bob@local.test> OK"], params


def test_a_valid_notify_leaves_the_decision_to_the_other_rcpt_hooks(servers):
    server = servers(DSN + VALID_RCPT, mailetcontainer=None)
    replies = session(server.port, ["MAIL FROM:<carol@local.test>",
                                    "RCPT TO:<nobody@local.test> NOTIFY=SUCCESS",
                                    "RCPT TO:<bob@local.test> NOTIFY=SUCCESS"])
    assert replies[1] == "550 5.1.1 Unknown user: nobody@local.test"
    assert replies[2] == "250 2.1.5 Recipient <bob@local.test> OK"


def test_lmtp_checks_the_parameters_too(servers):
    server = servers(lmtp_core=LMTP_CORE)
    replies = session(lmtp_port(server), ["MAIL FROM:<carol@local.test> RET=NONE",
                                          "MAIL FROM:<carol@local.test> RET=FULL",
                                          "RCPT TO:<bob@local.test> NOTIFY=NEVER,FAILURE",
                                          "RCPT TO:<bob@local.test> ORCPT=rfc822"],
                      hello="LHLO client.test")
    assert [r[:9] for r in replies] == ["501 5.5.4", "250 2.1.0", "501 5.5.4", "501 5.5.4"]


def test_parameters_are_kept_with_the_queued_mail(servers):
    """James's DSNTest: each recipient keeps its own parameters; any may be left out."""
    server = servers(mailetcontainer=None)
    with server.smtp() as client:
        client.ehlo()
        client.mail("carol@local.test", ["RET=HDRS", "ENVID=QQ314159"])
        assert client.rcpt("bob@local.test", ["NOTIFY=SUCCESS,FAILURE,DELAY",
                                              "ORCPT=rfc822;orcpt@localhost"])[0] == 250
        assert client.rcpt("carol@local.test", ["NOTIFY=NEVER"])[0] == 250
        assert client.rcpt("postmaster@local.test")[0] == 250
        assert client.data(message("kept"))[0] == 250
    [queued] = server.wait_for(server.spooled, what="the spooled mail")
    assert queued.mail_params == {"RET": "HDRS", "ENVID": "QQ314159"}
    assert queued.recipients == ["bob@local.test", "carol@local.test", "postmaster@local.test"]
    assert queued.rcpt_params == [{"NOTIFY": "SUCCESS,FAILURE,DELAY", "ORCPT": "rfc822;orcpt@localhost"},
                                  {"NOTIFY": "NEVER"}, {}]


def test_lmtp_parameters_reach_the_mailet_container(servers):
    server = servers(lmtp_core=LMTP_MAILETS, mailetcontainer=KEEP)
    replies = session(lmtp_port(server), [
        "MAIL FROM:<carol@local.test> RET=FULL ENVID=E+2B1", "RCPT TO:<bob@local.test> NOTIFY=DELAY",
        "RCPT TO:<carol@local.test> ORCPT=utf-8;caf\\x{E9}@old.example", "DATA",
        "Subject: lmtp\r\n\r\nx\r\n."], hello="LHLO client.test")
    assert replies[-2:] == ["250 2.6.0 Message received <bob@local.test>",
                            "250 2.6.0 Message received <carol@local.test>"]
    [mail] = server.repository("file://var/mail/kept/")
    assert mail.mail_params == {"RET": "FULL", "ENVID": "E+2B1"}
    assert mail.rcpt_params == {"bob@local.test": {"NOTIFY": "DELAY"},
                                "carol@local.test": {"ORCPT": "utf-8;caf\\x{E9}@old.example"}}


# -- reports --------------------------------------------------------------------------------

def check_delivered(raw: bytes, subject: str, in_mailbox: bool = True) -> None:
    msg, parts, status = parse(raw)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert msg["Return-Path"] == ("<>" if in_mailbox else None)
    assert status[0]["Original-Envelope-Id"] == "QQ 314159"
    assert [b["Final-Recipient"] for b in status[1:]] == ["rfc822; bob@local.test"]
    assert (status[1]["Action"], status[1]["Status"]) == ("delivered", "2.0.0")
    assert status[1]["Original-Recipient"] == "rfc822;b+old@old.example"
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert f"Subject: {subject}" in parts[2].get_content()


def test_notify_success_gives_a_delivered_report_smtp(servers):
    server = servers()
    with server.smtp() as client:
        client.ehlo()
        client.mail("carol@local.test", ["ENVID=QQ+20314159"])
        assert client.rcpt("bob@local.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;b+2Bold@old.example"])[0] == 250
        assert client.rcpt("carol@local.test", ["NOTIFY=FAILURE"])[0] == 250
        assert client.data(message("smtp success"))[0] == 250
    assert len(server.wait_for_mailbox("bob@local.test")) == 1
    inbox = server.wait_for_mailbox("carol@local.test", 2)
    reports = [m for m in inbox if b"multipart/report" in m]
    assert len(reports) == 1     # carol asked for failures only: no report about her copy
    check_delivered(reports[0], "smtp success")


@pytest.mark.parametrize("core", [LMTP_CORE, LMTP_MAILETS])
def test_notify_success_gives_a_delivered_report_lmtp(servers, core):
    """Straight into the Maildirs, and through the mailet container's LocalDelivery."""
    server = servers(lmtp_core=core)
    replies = session(lmtp_port(server), [
        "MAIL FROM:<carol@local.test> ENVID=QQ+20314159",
        "RCPT TO:<bob@local.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bold@old.example",
        "RCPT TO:<carol@local.test>", "DATA", message("lmtp success") + "."], hello="LHLO client.test")
    assert replies[-2:] == ["250 2.6.0 Message received <bob@local.test>",
                            "250 2.6.0 Message received <carol@local.test>"]
    assert len(server.wait_for_mailbox("bob@local.test")) == 1
    inbox = server.wait_for_mailbox("carol@local.test", 2)
    reports = [m for m in inbox if b"multipart/report" in m]
    assert len(reports) == 1
    check_delivered(reports[0], "lmtp success")


def test_without_a_container_the_lmtp_report_waits_in_the_spool(servers):
    server = servers(lmtp_core=LMTP_CORE, mailetcontainer=None)
    replies = session(lmtp_port(server), [
        "MAIL FROM:<carol@local.test> ENVID=QQ+20314159",
        "RCPT TO:<bob@local.test> NOTIFY=SUCCESS ORCPT=rfc822;b+2Bold@old.example", "DATA",
        message("spooled report") + "."], hello="LHLO client.test")
    assert replies[-1] == "250 2.6.0 Message received <bob@local.test>"
    [report] = server.wait_for(server.spooled, what="the spooled report")
    assert (report.sender, report.recipients) == ("", ["carol@local.test"])
    check_delivered(report.content, "spooled report", in_mailbox=False)


def test_no_delivered_report_for_the_null_sender(servers):
    server = servers(lmtp_core=LMTP_CORE)
    replies = session(lmtp_port(server), ["MAIL FROM:<>", "RCPT TO:<bob@local.test> NOTIFY=SUCCESS",
                                          "DATA", "Subject: from nobody\r\n\r\nx\r\n."],
                      hello="LHLO client.test")
    assert replies[-1] == "250 2.6.0 Message received <bob@local.test>"
    with server.smtp() as client:
        client.sendmail("", ["bob@local.test"], message("null smtp", ""),
                        rcpt_options=["NOTIFY=SUCCESS"])
    server.wait_for_mailbox("bob@local.test", 2)
    server.wait_for(lambda: not server.spooled(), what="an empty spool")
    assert "delivered notification" not in server.log


def test_notify_never_gives_no_bounce(servers):
    server = servers()
    with server.smtp() as client:
        client.sendmail("carol@local.test", ["nobody@local.test"], message("never"),
                        rcpt_options=["NOTIFY=NEVER"])
        client.sendmail("carol@local.test", ["nobody2@local.test"], message("control"))
    server.wait_for(lambda: "no failed notification requested (NOTIFY)" in server.log,
                    what="the NOTIFY=NEVER mail refused a bounce")
    [bounce] = server.wait_for_mailbox("carol@local.test")
    _, _, status = parse(bounce)
    assert status[1]["Final-Recipient"] == "rfc822; nobody2@local.test"
    server.wait_for(lambda: not server.spooled(), what="an empty spool")
    assert len(server.mailbox("carol@local.test")) == 1


@pytest.mark.parametrize("ret, attached", [("HDRS", "text/rfc822-headers"), ("FULL", "message/rfc822")])
def test_ret_chooses_what_a_bounce_carries(servers, ret, attached):
    server = servers()
    with server.smtp() as client:
        client.sendmail("carol@local.test", ["nobody@local.test"], message("ret"),
                        mail_options=[f"RET={ret}"], rcpt_options=["NOTIFY=FAILURE"])
    [bounce] = server.wait_for_mailbox("carol@local.test")
    _, parts, status = parse(bounce)
    assert (status[1]["Action"], status[1]["Status"]) == ("failed", "5.1.1")
    assert parts[2].get_content_type() == attached
    assert (b"body of ret" in bounce) == (ret == "FULL")
