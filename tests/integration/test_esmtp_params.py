"""SMTPUTF8 (RFC 6531/6532), MT-PRIORITY (RFC 6710) and REQUIRETLS (RFC 8689) on a real
``chainmail run`` over real sockets: the EHLO keywords, every parameter check and its reply,
what reaches the spool envelope, UTF-8 users end to end over SMTP and LMTP."""

from __future__ import annotations

import mailbox
import smtplib
import subprocess

import pytest

from ..conftest import CHAINMAIL, ROOT, raw_exchange, wait_for
from .test_lmtp import lmtp  # noqa: F401  (fixture)
from .test_tls import Material, tls_block

NOAUTH = "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"
PRIORITY = ("<handler class=\"org.apache.james.smtpserver.priority.SmtpMtPriorityEhloHook\"/>"
            "<handler class=\"org.apache.james.smtpserver.priority.SmtpMtPriorityParameterHook\"/>"
            "<handler class=\"org.apache.james.smtpserver.priority.SmtpMtPriorityMessageHook\"/>")
REQUIRETLS = ("<handler class=\"org.apache.james.smtpserver.tls.SmtpRequireTlsEhloHook\"/>"
              "<handler class=\"org.apache.james.smtpserver.tls.SmtpRequireTlsParameterHook\"/>"
              "<handler class=\"org.apache.james.smtpserver.tls.SmtpRequireTlsMessageHook\"/>")
VALID_RCPT = "<handler class=\"org.apache.james.smtpserver.fastfail.ValidRcptHandler\"/>"
SHIPPED_MAILETS = (ROOT / "conf" / "mailetcontainer.xml").read_text()

COMPOSED = "j\u00fcrgen"      # ü as one code point
DECOMPOSED = "ju\u0308rgen"   # u + combining diaeresis


def lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").split("\r\n")


def ehlo_keywords(port: int, *, hello: bytes = b"EHLO client.test") -> list[str]:
    data = raw_exchange(port, hello + b"\r\nQUIT\r\n")
    return [line[4:] for line in lines(data) if line[:4] in ("250-", "250 ")][1:]


def exchange(port: int, *commands: bytes, hello: bytes = b"EHLO client.test") -> list[str]:
    """The reply lines after the greeting and the EHLO reply."""
    data = raw_exchange(port, hello + b"\r\n" + b"".join(c + b"\r\n" for c in commands)
                        + b"QUIT\r\n")
    out = lines(data)
    after_ehlo = next(i for i, line in enumerate(out) if line.startswith("250 ")) + 1
    return out[after_ehlo:]


def message(headers: bytes) -> bytes:
    return b"DATA\r\n" + headers + b"\r\n\r\nbody\r\n."


# -- SMTPUTF8 -----------------------------------------------------------------------------

def test_smtputf8_is_announced_by_default_on_smtp_and_lmtp(chainmail, lmtp):  # noqa: F811
    keywords = ehlo_keywords(chainmail.port)
    assert keywords.count("SMTPUTF8") == 1
    assert keywords.index("SMTPUTF8") == keywords.index("8BITMIME") + 1
    assert "MT-PRIORITY" not in keywords and "REQUIRETLS" not in keywords
    server = lmtp()
    assert "SMTPUTF8" in ehlo_keywords(server.lmtp_port, hello=b"LHLO client.test")


def test_james_configuration_naming_the_handlers_announces_once(chainmail_factory):
    server = chainmail_factory(handlers=(
        "<handler class=\"org.apache.james.smtpserver.smtputf8.SmtpUtf8MailHook\"/>"
        "<handler class=\"org.apache.james.smtpserver.smtputf8.SmtpUtf8RcptHook\"/>"))
    assert ehlo_keywords(server.port).count("SMTPUTF8") == 1
    replies = exchange(server.port, "MAIL FROM:<jöe@remote.example> SMTPUTF8".encode(),
                       "RCPT TO:<jürgen@local.test> SMTPUTF8".encode(),
                       "RCPT TO:<jürgen@local.test>".encode())
    # RFC 6531 has no RCPT parameter (James's SmtpUtf8RcptHook takes one)
    assert replies[:3] == ["250 2.1.0 Sender <jöe@remote.example> OK",
                           "504 5.5.4 Unrecognized or unsupported option: SMTPUTF8",
                           "250 2.1.5 Recipient <jürgen@local.test> OK"]


def test_smtputf8_takes_no_value(chainmail):
    assert exchange(chainmail.port, b"MAIL FROM:<a@remote.example> SMTPUTF8=yes")[0] == \
        "501 5.5.4 SMTPUTF8 takes no value"


def test_non_ascii_addresses_need_smtputf8(chainmail):
    replies = exchange(
        chainmail.port,
        "MAIL FROM:<jöe@remote.example>".encode(),             # RFC 6531 §3.5: 553 5.6.7
        b"MAIL FROM:<a@remote.example>",
        "RCPT TO:<jürgen@local.test>".encode(),
        "RCPT TO:<u@bücher.local.test>".encode(),
        b"RCPT TO:<u@local.test>",
        "RCPT TO:<not valid ü@local.test>".encode())           # a syntax error stays one
    assert replies[:6] == [
        "553 5.6.7 Non-ASCII addresses not permitted without SMTPUTF8",
        "250 2.1.0 Sender <a@remote.example> OK",
        "553 5.6.7 Non-ASCII addresses not permitted without SMTPUTF8",
        "553 5.6.7 Non-ASCII addresses not permitted without SMTPUTF8",
        "250 2.1.5 Recipient <u@local.test> OK",
        "553 5.1.3 Syntax error in recipient address",
    ]


def test_core_sequence_replies_come_first(chainmail):
    # MAIL before EHLO and RCPT before MAIL keep the core's replies
    data = raw_exchange(chainmail.port, "MAIL FROM:<jöe@remote.example>\r\n"
                        "HELO client.test\r\nRCPT TO:<jürgen@local.test>\r\nQUIT\r\n".encode())
    out = lines(data)
    assert "503 5.5.0 Need HELO or EHLO before MAIL" in out
    assert "503 5.5.0 Need MAIL before RCPT" in out


def test_octets_that_are_not_utf8_are_a_syntax_error(chainmail):
    replies = exchange(chainmail.port,
                       b"MAIL FROM:<j\xf6e@remote.example> SMTPUTF8",
                       b"MAIL FROM:<a@remote.example> SMTPUTF8",
                       b"RCPT TO:<j\xfcrgen@local.test>",
                       b"RCPT TO:<u@local.test> ORCPT=rfc822;\xfc@local.test")
    assert replies[:4] == ["501 5.1.7 Syntax error in sender address",
                           "250 2.1.0 Sender <a@remote.example> OK",
                           "553 5.1.3 Syntax error in recipient address",
                           "501 5.5.4 Syntax error in parameters or arguments"]


def test_utf8_addresses_with_smtputf8_are_queued(chainmail):
    replies = exchange(chainmail.port,
                       "MAIL FROM:<jöe@bücher.example> SMTPUTF8".encode(),
                       "RCPT TO:<用户@local.test>".encode(),
                       message("Subject: Grüße\r\nFrom: jöe@bücher.example".encode()))
    assert replies[2] == "354 Ok Send data ending with <CRLF>.<CRLF>"
    assert replies[3].startswith("250 2.6.0 Message received")
    [msg] = chainmail.queued()
    assert msg.envelope.sender == "jöe@bücher.example"
    assert msg.envelope.recipients == ["用户@local.test"]
    assert "SMTPUTF8" in msg.envelope.mail_params
    assert "Subject: Grüße".encode() in chainmail.queued_body(msg.id)


def test_utf8_header_needs_smtputf8(chainmail):
    replies = exchange(chainmail.port, b"MAIL FROM:<a@remote.example>", b"RCPT TO:<u@local.test>",
                       message("Subject: Grüße".encode()))
    assert replies[3] == "554 5.6.7 Non-ASCII header fields need SMTPUTF8"
    assert chainmail.queued() == []


def test_utf8_header_needs_smtputf8_with_bdat_too(chainmail):
    content = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    bdat = b"BDAT %d LAST\r\n" % len(content) + content
    replies = exchange(chainmail.port, b"MAIL FROM:<a@remote.example>", b"RCPT TO:<u@local.test>",
                       bdat[:-2])
    assert replies[2] == "554 5.6.7 Non-ASCII header fields need SMTPUTF8"
    replies = exchange(chainmail.port, b"MAIL FROM:<a@remote.example> SMTPUTF8",
                       b"RCPT TO:<u@local.test>", bdat[:-2])
    assert replies[2].startswith("250 2.6.0 Message received"), replies
    assert len(chainmail.queued()) == 1


def test_legacy_8bit_header_is_accepted_as_before(chainmail):
    replies = exchange(chainmail.port, b"MAIL FROM:<a@remote.example>", b"RCPT TO:<u@local.test>",
                       message(b"Subject: Gr\xfc\xdfe"))        # Latin-1: not UTF-8
    assert replies[3].startswith("250 2.6.0 Message received")
    # an 8-bit body is 8BITMIME's business, not SMTPUTF8's
    replies = exchange(chainmail.port, b"MAIL FROM:<a@remote.example> BODY=8BITMIME",
                       b"RCPT TO:<u@local.test>",
                       b"DATA\r\nSubject: plain\r\n\r\n" + "Grüße\r\n.".encode())
    assert replies[3].startswith("250 2.6.0 Message received")
    assert len(chainmail.queued()) == 2


# -- UTF-8 users end to end ----------------------------------------------------------------

def add_user(server, name: str) -> None:
    result = subprocess.run([*CHAINMAIL, "user", "add", name, "--password-stdin",
                             "--conf", str(server.conf), "--var", str(server.var)],
                            input="a long password\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"added user {COMPOSED}@local.test\n"


def accepts(port: int, recipient: str, hello: bytes) -> bool:
    data = raw_exchange(port, hello + b"\r\nMAIL FROM:<probe@remote.example> SMTPUTF8\r\n"
                        + f"RCPT TO:<{recipient}>\r\nRSET\r\nQUIT\r\n".encode())
    return b"\r\n250 2.1.5 " in data


def inbox(server, user: str) -> list[bytes]:
    """The messages of a Maildir, as stored."""
    path = server.var / "mail" / user
    if not path.is_dir():
        return []
    box = mailbox.Maildir(str(path), factory=None, create=False)
    return [box.get_bytes(key) for key in box.keys()]


def subject(content: bytes) -> str:
    return content.split(b"Subject: ")[1].split(b"\n")[0].decode()


def test_utf8_user_made_with_the_cli_gets_smtputf8_mail(chainmail_factory):
    # One process: a probe that sees the new user speaks for every later session.
    server = chainmail_factory("<ioWorkerCount>1</ioWorkerCount>", handlers=VALID_RCPT,
                               files={"mailetcontainer.xml": SHIPPED_MAILETS})
    add_user(server, f"{DECOMPOSED}@Local.Test")     # stored in NFC
    wait_for(lambda: accepts(server.port, f"{COMPOSED}@local.test", b"EHLO probe.test"),
             what="the new user accepted at RCPT")
    for local in (COMPOSED, DECOMPOSED):
        replies = exchange(server.port, b"MAIL FROM:<a@remote.example> SMTPUTF8",
                           f"RCPT TO:<{local}@local.test>".encode(),
                           message(f"Subject: an {local}".encode()))
        assert replies[1].startswith("250 2.1.5"), replies
        assert replies[3].startswith("250 2.6.0"), replies
    msgs = wait_for(lambda: len(inbox(server, f"{COMPOSED}@local.test")) == 2
                    and inbox(server, f"{COMPOSED}@local.test"), what="two messages in the Maildir")
    assert sorted(subject(m) for m in msgs) == sorted(f"an {x}" for x in (COMPOSED, DECOMPOSED))
    assert sorted(p.name for p in (server.var / "mail").iterdir() if "@" in p.name) == \
        [f"{COMPOSED}@local.test"]


def test_utf8_user_over_lmtp(lmtp):  # noqa: F811
    server = lmtp()
    add_user(server, f"{DECOMPOSED}@local.test")
    wait_for(lambda: accepts(server.lmtp_port, f"{COMPOSED}@local.test", b"LHLO probe.test"),
             what="the new user accepted at RCPT")
    replies = exchange(server.lmtp_port, b"MAIL FROM:<a@remote.example> SMTPUTF8",
                       f"RCPT TO:<{DECOMPOSED}@local.test>".encode(),
                       f"RCPT TO:<{COMPOSED}@local.test>".encode(),
                       message("Subject: Grüße über LMTP".encode()), hello=b"LHLO client.test")
    assert replies[1:3] == [f"250 2.1.5 Recipient <{DECOMPOSED}@local.test> OK",
                            f"250 2.1.5 Recipient <{COMPOSED}@local.test> OK"]
    assert replies[4:6] == [f"250 2.6.0 Message received <{DECOMPOSED}@local.test>",
                            f"250 2.6.0 Message received <{COMPOSED}@local.test>"]
    # one mailbox: each spelling is a recipient of its own (as Bob@ and bob@ are)
    assert [p.name for p in (server.var / "mail").iterdir() if "@" in p.name] == \
        [f"{COMPOSED}@local.test"]
    msgs = inbox(server, f"{COMPOSED}@local.test")
    assert [subject(m) for m in msgs] == ["Grüße über LMTP"] * 2
    # without SMTPUTF8 the UTF-8 recipient is refused
    replies = exchange(server.lmtp_port, b"MAIL FROM:<a@remote.example>",
                       f"RCPT TO:<{COMPOSED}@local.test>".encode(), hello=b"LHLO client.test")
    assert replies[1] == "553 5.6.7 Non-ASCII addresses not permitted without SMTPUTF8"


# -- MT-PRIORITY ---------------------------------------------------------------------------

def test_mt_priority_is_announced_only_when_configured(chainmail_factory, chainmail):
    assert "MT-PRIORITY" not in ehlo_keywords(chainmail.port)
    server = chainmail_factory(handlers=PRIORITY)
    keywords = ehlo_keywords(server.port)
    assert keywords[0] == "MT-PRIORITY" and keywords.count("MT-PRIORITY") == 1


@pytest.mark.parametrize("value", ["10", "-10", "x", "", "1.5", "+", "--1", "09"])
def test_mt_priority_out_of_range_or_malformed(chainmail_factory, value):
    server = chainmail_factory(handlers=PRIORITY)
    arg = f"MT-PRIORITY={value}" if value else "MT-PRIORITY"
    reply = exchange(server.port, f"MAIL FROM:<a@remote.example> {arg}".encode())[0]
    if value == "":
        assert reply == "501 5.5.4 MT-PRIORITY must be an integer from -9 to 9"
    else:
        assert reply.startswith("501 5.5.4 "), reply


def test_mt_priority_twice_is_refused(chainmail_factory):
    server = chainmail_factory(handlers=PRIORITY)
    assert exchange(server.port, b"MAIL FROM:<a@remote.example> MT-PRIORITY=1 MT-PRIORITY=2")[0] \
        == "501 5.5.4 Syntax error in parameters or arguments"


def send_with_priority(server, value: str) -> None:
    replies = exchange(server.port, f"MAIL FROM:<a@remote.example> MT-PRIORITY={value}".encode(),
                       b"RCPT TO:<u@local.test>", message(f"Subject: {value}".encode()))
    assert replies[0] == "250 2.1.0 Sender <a@remote.example> OK"
    assert replies[3].startswith("250 2.6.0"), replies


def priorities(server) -> dict[str, tuple[str | None, int]]:
    """Subject -> (the envelope's MT-PRIORITY, the outgoing queue's priority of it)."""
    from chainmail.remote.queue import queue_priority
    out = {}
    for msg in server.queued():
        subject = server.queued_body(msg.id).split(b"Subject: ")[1].split(b"\r\n")[0].decode()
        out[subject] = msg.envelope.mail_params.get("MT-PRIORITY"), queue_priority(msg.envelope)
    return out


def test_trusted_client_keeps_its_priority(chainmail_factory):
    server = chainmail_factory(handlers=PRIORITY)        # 127.0.0.0/8 is authorizedAddresses
    for value in ("+7", "-3", "0"):
        send_with_priority(server, value)
    assert priorities(server) == {"+7": ("7", 7), "-3": ("-3", 1), "0": ("0", 1)}


def test_untrusted_client_may_lower_but_not_raise_priority(chainmail_factory):
    server = chainmail_factory(handlers=PRIORITY, authorized="")
    for value in ("9", "-4"):
        send_with_priority(server, value)
    assert priorities(server) == {"9": ("0", 1), "-4": ("-4", 1)}
    assert "MT-PRIORITY 9 of an unauthenticated client lowered to 0" in server.log


def test_mail_priority_handler_sets_the_highest_priority_of_the_recipients(chainmail_factory):
    entries = ("<handler class=\"org.apache.james.smtpserver.fastfail.MailPriorityHandler\">"
               "<priorityEntries>"
               "<priorityEntry><domain>local.test</domain><priority>1</priority></priorityEntry>"
               "<priorityEntry><domain>Urgent.Test</domain><priority>9</priority></priorityEntry>"
               "<priorityEntry><domain>bücher.test</domain><priority>5</priority></priorityEntry>"
               "</priorityEntries></handler>")
    server = chainmail_factory(handlers=entries, domains=("local.test", "urgent.test", "bücher.test"))
    with server.smtp() as s:
        s.sendmail("a@remote.example", ["u@local.test"], "Subject: low\r\n\r\nx\r\n")
        s.sendmail("a@remote.example", ["u@local.test", "v@urgent.test"], "Subject: high\r\n\r\nx\r\n")
        s.sendmail("a@remote.example", ["u@xn--bcher-kva.test"], "Subject: normal\r\n\r\nx\r\n")
        s.sendmail("a@remote.example", ["u@other.example"], "Subject: none\r\n\r\nx\r\n")
    from chainmail.remote.queue import ATTR_PRIORITY, queue_priority
    from chainmail_plugins.smtp.priority import ATTR_PRIORITY as HANDLER_ATTR_PRIORITY
    assert HANDLER_ATTR_PRIORITY == ATTR_PRIORITY      # what the outgoing queue reads
    found = {}
    for msg in server.queued():
        subject = server.queued_body(msg.id).split(b"Subject: ")[1].split(b"\r\n")[0].decode()
        found[subject] = msg.envelope.attributes.get(ATTR_PRIORITY), queue_priority(msg.envelope)
    assert found == {"low": (1, 1), "high": (9, 9), "normal": (5, 5), "none": (None, 5)}


@pytest.mark.parametrize("entry, problem", [
    ("<domain>a.test</domain><priority>12</priority>", "priority '12' for a.test"),
    ("<domain>a.test</domain>", "a priorityEntry needs <domain> and <priority>"),
])
def test_mail_priority_handler_configuration_errors(tmp_path, entry, problem):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(
        "<smtpservers><smtpserver><bind>127.0.0.1:0</bind><handlerchain>"
        "<handler class=\"MailPriorityHandler\"><priorityEntries><priorityEntry>"
        f"{entry}</priorityEntry></priorityEntries></handler>"
        "</handlerchain></smtpserver></smtpservers>")
    result = subprocess.run([*CHAINMAIL, "check-config", "--conf", str(conf),
                             "--var", str(tmp_path / "var")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert problem in result.stdout + result.stderr


# -- REQUIRETLS and EnforceMtaSts ------------------------------------------------------------

@pytest.fixture
def tls_server(chainmail_factory, tmp_path):
    material = Material(tmp_path)

    def start(handlers: str):
        server = chainmail_factory(tls_block(material.keystore("ks.p12", "mx.test")),
                                   handlers=handlers)
        server.client_context = material.client_context()
        return server
    return start


def starttls(server) -> smtplib.SMTP:
    s = server.smtp()
    s.ehlo("client.test")
    assert s.starttls(context=server.client_context)[0] == 220
    s.ehlo("client.test")
    return s


def test_requiretls_only_inside_tls(tls_server):
    server = tls_server(REQUIRETLS)
    with server.smtp() as s:
        s.ehlo("client.test")
        assert not s.has_extn("requiretls")
        assert s.docmd("MAIL FROM:<a@remote.example> REQUIRETLS") == \
            (530, b"5.7.10 REQUIRETLS needs a TLS session")
    with starttls(server) as s:
        assert s.has_extn("requiretls") and s.has_extn("smtputf8")
        assert s.docmd("MAIL FROM:<a@remote.example> REQUIRETLS=YES") == \
            (501, b"5.5.4 REQUIRETLS takes no value")
        assert s.sendmail("a@remote.example", ["u@local.test"],
                          "Subject: secret\r\nTLS-Required: No\r\n\r\nx\r\n",
                          mail_options=["REQUIRETLS"]) == {}
        assert s.sendmail("a@remote.example", ["u@local.test"],
                          "Subject: relaxed\r\nTLS-Required: No\r\n\r\nx\r\n") == {}
    found = {}
    for msg in server.queued():
        subject = server.queued_body(msg.id).split(b"Subject: ")[1].split(b"\r\n")[0].decode()
        found[subject] = msg.envelope
    secret, relaxed = found["secret"], found["relaxed"]
    assert "REQUIRETLS" in secret.mail_params and secret.attributes["REQUIRETLS"] is True
    assert "TLS-Required" not in secret.attributes        # RFC 8689 §4.1: ignored
    assert "REQUIRETLS" not in relaxed.mail_params and "REQUIRETLS" not in relaxed.attributes
    assert relaxed.attributes["TLS-Required"] == "No"


def test_enforce_mta_sts_refuses_mail_in_clear(tls_server):
    server = tls_server("<handler class=\"org.apache.james.smtpserver.tls.EnforceMtaSts\"/>")
    with server.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<a@remote.example>") == \
            (530, b"5.7.0 Must issue a STARTTLS command first")
    with starttls(server) as s:
        assert s.sendmail("a@remote.example", ["u@local.test"], "Subject: tls\r\n\r\nx\r\n") == {}
    assert len(server.queued()) == 1

