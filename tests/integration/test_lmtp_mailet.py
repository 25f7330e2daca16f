"""LMTP into the mailet container (``MailetContainerCmdHandlerLoader``, ``MailetContainerHandler``
with and without ``splitExecution``): real ``chainmail run`` processes, raw exchanges and
smtplib.LMTP, Maildirs read with Python's ``mailbox`` module."""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from ..conftest import CHAINMAIL, DOMAINLIST, raw_exchange
from .test_lmtp import lmtpserver_xml, maildir, with_users

LOADER = "org.apache.james.lmtpserver.MailetContainerCmdHandlerLoader"
# James's sample: the loader also named as a handler, where it is inert.
ALL_AT_ONCE = f'<handler class="{LOADER}"/>'
SPLIT = ('<handler class="org.apache.james.lmtpserver.MailetContainerHandler">'
         '<splitExecution>true</splitExecution></handler>')


def container_xml(fail_for: str | None = None, on_exception: str = "propagate") -> str:
    """root: FailForRecipient (if asked) then transport; transport: local users into their
    Maildirs, anything else dropped; error: the error repository."""
    fail = ""
    if fail_for:
        fail = (f'<mailet match="All" class="FailForRecipient"><recipient>{fail_for}</recipient>'
                f'<onMailetException>{on_exception}</onMailetException></mailet>')
    return f"""<mailetcontainer>
  <context><postmaster>postmaster@local.test</postmaster></context>
  <spooler><threads>2</threads><errorRepository>file://var/mail/error/</errorRepository></spooler>
  <processors>
    <processor state="root">
      {fail}
      <mailet match="All" class="ToProcessor"><processor>transport</processor></mailet>
    </processor>
    <processor state="transport">
      <mailet match="RecipientIsLocal" class="LocalDelivery"/>
      <mailet match="All" class="Null"/>
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/error/</repositoryPath></mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


@pytest.fixture
def lmtp_mailets(chainmail_factory):
    def start(handlers: str = ALL_AT_ONCE, container: str | None = None, core: str = LOADER):
        files = {"lmtpserver.xml": lmtpserver_xml("", handlers, core),
                 "mailetcontainer.xml": container or container_xml()}
        server = chainmail_factory(files=files)
        server.lmtp_port = server.ports[-1]
        with_users(server, "bob@local.test", "cedric@local.test", "dora@local.test")
        return server
    return start


RCPTS = ("bob@local.test", "cedric@local.test", "dora@local.test")


def exchange(server, subject: str = "via the container") -> list[str]:
    """LHLO, MAIL, three RCPTs, DATA: the lines after ``354``."""
    data = raw_exchange(server.lmtp_port, b"LHLO client.test\r\nMAIL FROM:<a@remote.example>\r\n"
                        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in RCPTS)
                        + f"DATA\r\nSubject: {subject}\r\n\r\nhello\r\n.\r\nQUIT\r\n".encode())
    lines = data.decode().split("\r\n")
    i = lines.index("354 Ok Send data ending with <CRLF>.<CRLF>")
    return lines[i + 1:i + 1 + len(RCPTS)]


def subjects(server, user: str) -> list[str]:
    path = server.var / "mail" / user
    return [m["Subject"] for m in maildir(server, user)] if path.is_dir() else []


def test_all_recipients_at_once_through_the_container(lmtp_mailets):
    server = lmtp_mailets()
    assert exchange(server) == [f"250 2.6.0 Message received <{r}>" for r in RCPTS]
    for user in RCPTS:
        [msg] = list(maildir(server, user))
        assert msg["Subject"] == "via the container"
        assert "with LMTP" in msg["Received"]
    assert server.queued() == []
    # One execution for the three recipients: one log line naming all of them.
    assert "processed for bob@local.test, cedric@local.test, dora@local.test" in server.log
    assert "root -> transport" in server.log


def test_smtplib_lmtp_through_the_container(lmtp_mailets):
    server = lmtp_mailets()
    with smtplib.LMTP("127.0.0.1", server.lmtp_port, local_hostname="client.test") as s:
        assert s.sendmail("a@remote.example", ["dora@local.test"], "Subject: smtplib\r\n\r\nx\r\n") == {}
    assert subjects(server, "dora@local.test") == ["smtplib"]


def test_propagated_failure_fails_every_recipient(lmtp_mailets):
    server = lmtp_mailets(container=container_xml(fail_for="cedric@local.test"))
    assert exchange(server) == [f"451 4.0.0 Temporary error deliver message <{r}>" for r in RCPTS]
    for user in RCPTS:
        assert subjects(server, user) == []
    assert server.queued() == []   # nothing spooled: the client keeps the message and retries


def test_split_execution_fails_only_that_recipient(lmtp_mailets):
    server = lmtp_mailets(handlers=SPLIT, container=container_xml(fail_for="cedric@local.test"))
    assert exchange(server, "split") == [
        "250 2.6.0 Message received <bob@local.test>",
        "451 4.0.0 Temporary error deliver message <cedric@local.test>",
        "250 2.6.0 Message received <dora@local.test>",
    ]
    assert subjects(server, "bob@local.test") == ["split"]
    assert subjects(server, "cedric@local.test") == []
    assert subjects(server, "dora@local.test") == ["split"]
    # One execution per recipient.
    for user in ("bob@local.test", "dora@local.test"):
        assert f"processed for {user} in" in server.log


def test_split_execution_without_failure(lmtp_mailets):
    server = lmtp_mailets(handlers=SPLIT)
    assert exchange(server, "split ok") == [f"250 2.6.0 Message received <{r}>" for r in RCPTS]
    for user in RCPTS:
        assert subjects(server, user) == ["split ok"]


def test_split_execution_named_before_the_default_core_chain(lmtp_mailets):
    """The handler element alone switches delivery, even with the default core package."""
    server = lmtp_mailets(handlers=SPLIT, core="org.apache.james.lmtpserver.CoreCmdHandlerLoader",
                          container=container_xml(fail_for="bob@local.test"))
    replies = exchange(server, "switched")
    assert replies[0] == "451 4.0.0 Temporary error deliver message <bob@local.test>"
    assert replies[1:] == [f"250 2.6.0 Message received <{r}>" for r in RCPTS[1:]]


def test_error_handled_inside_the_container_still_answers_250(lmtp_mailets):
    """Default onMailetException: the mail goes to the error processor; the container took
    responsibility for it, so LMTP answers 250 (as James)."""
    server = lmtp_mailets(container=container_xml(fail_for="cedric@local.test", on_exception="error"))
    assert exchange(server, "handled") == [f"250 2.6.0 Message received <{r}>" for r in RCPTS]
    stored = [p for p in (server.var / "mail" / "error").iterdir() if "-" in p.name]
    assert len(stored) == 1
    assert subjects(server, "bob@local.test") == []


def test_mailet_container_handler_without_mailetcontainer_xml_is_a_config_error(tmp_path):
    conf, var = tmp_path / "conf", tmp_path / "var"
    conf.mkdir()
    (conf / "domainlist.xml").write_text(DOMAINLIST.format(names="<domainname>local.test</domainname>",
                                                           default="local.test"))
    (conf / "smtpserver.xml").write_text("<smtpservers/>")
    (conf / "lmtpserver.xml").write_text(lmtpserver_xml("", SPLIT, LOADER))
    result = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(var)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "configuration error" in result.stderr
    assert f"{conf / 'lmtpserver.xml'}:1" in result.stderr
    assert "MailetContainerHandler" in result.stderr and "mailetcontainer.xml" in result.stderr


def test_shipped_lmtpserver_xml_and_its_commented_example(chainmail_factory):
    """The shipped file, enabled, and the commented example server next to it: direct
    delivery on one, the mailet container per recipient on the other."""
    import re
    from ..conftest import ROOT
    shipped = (ROOT / "conf" / "lmtpserver.xml").read_text()
    [example] = re.findall(r'(<lmtpserver enabled="true">.*?</lmtpserver>)', shipped, re.S)
    text = shipped.replace('<lmtpserver enabled="false">', '<lmtpserver enabled="true">')
    text = text.replace("</lmtpservers>", example + "\n</lmtpservers>")
    text = re.sub(r"<bind>127\.0\.0\.1:24\d\d</bind>", "<bind>127.0.0.1:0</bind>", text)
    text = text.replace('<helloName autodetect="true"/>', '<helloName autodetect="false">lmtp.test</helloName>')
    server = chainmail_factory(files={"lmtpserver.xml": text, "mailetcontainer.xml": container_xml()})
    direct, mailets = server.ports[-2:]
    with_users(server, "bob@local.test")
    for port, subject in ((direct, "direct"), (mailets, "container")):
        with smtplib.LMTP("127.0.0.1", port, local_hostname="client.test") as s:
            assert s.sendmail("a@remote.example", ["bob@local.test"], f"Subject: {subject}\r\n\r\nx\r\n") == {}
    assert sorted(subjects(server, "bob@local.test")) == ["container", "direct"]
    assert server.log.count("processed for bob@local.test in") == 1   # only one went through it
