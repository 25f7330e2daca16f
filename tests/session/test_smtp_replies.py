"""The SMTP dialogue of the default chain, read from the server's own session loop through
the test kit's driver: every reply a client would get, and what the session spooled.

What needs a real socket (a message read across many TCP reads, a client hanging up in the
middle of DATA) stays in tests/integration/test_smtp_session.py."""

from __future__ import annotations


def wire(replies) -> list[str]:
    """The replies' lines as a client reads them (without CRLF)."""
    return [line for reply in replies for line in str(reply).split("\r\n")]


def codes(replies) -> list[int]:
    return [reply.code for reply in replies]


def test_greeting_and_ehlo_keywords(chainmail_session):
    s = chainmail_session()
    ehlo = s.ehlo("client.example")
    assert ehlo.code == 250
    assert list(ehlo.lines) == ["mx.test Hello client.example [127.0.0.1]",
                                "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8",
                                "CHUNKING", "BINARYMIME"]
    helo = s.helo("client.example")
    assert (helo.code, helo.text) == (250, "mx.test Hello client.example [127.0.0.1]")


def test_greeting_text(chainmail_session):
    default = chainmail_session()
    assert str(default.greeting) == "220 mx.test ESMTP chainmail ready"
    assert wire(default.raw(b"QUIT\r\n", replies=None)) == [
        "221 2.0.0 mx.test Service closing transmission channel"]
    custom = chainmail_session(options="<smtpGreeting>mail.example.org at your service</smtpGreeting>")
    assert str(custom.greeting) == "220 mail.example.org at your service"


def test_message_is_queued_with_received_header_and_exact_body(chainmail_session):
    body = "Subject: hello\r\n\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
    s = chainmail_session(helo="client.example")
    replies = s.send_message("sender@remote.example", ["user@local.test"], body)
    assert codes(replies) == [250, 250, 250]
    [msg] = s.spooled()
    assert msg.sender == "sender@remote.example"
    assert msg.recipients == ["user@local.test"]
    assert msg.attributes["remote_addr"] == "127.0.0.1"
    assert msg.attributes["helo"] == "client.example"
    data = msg.content
    head, _, rest = data.partition(b"Subject: hello\r\n")
    assert head.startswith(b"Received: from client.example (EHLO client.example) ([127.0.0.1])\r\n")
    assert b"by mx.test (chainmail) with ESMTP ID " in head
    assert b"for <user@local.test>;" in head
    assert rest == b"\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
    [queued] = s.stores.spool.list()
    assert queued.size == len(data)


def test_pipelined_transaction_in_one_write(chainmail_session):
    s = chainmail_session()
    replies = s.raw(b"HELO TEST\r\nMAIL FROM:<test@localhost>\r\n"
                    b"RCPT TO:<test2@local.test>\r\nDATA\r\nSubject: test\r\n\r\ncontent\r\n"
                    b".\r\nQUIT\r\n", replies=None)
    assert [s.greeting.code, *codes(replies)] == [220, 250, 250, 250, 354, 250, 221]
    assert len(s.spooled()) == 1


def test_pipelined_relay_refusal(chainmail_session):
    s = chainmail_session(authorized_addresses=None)
    replies = s.raw(b"HELO TEST\r\nMAIL FROM:<a@remote.example>\r\n"
                    b"RCPT TO:<b@remote.example>\r\nRCPT TO:<c@other.example>\r\nDATA\r\nQUIT\r\n",
                    replies=None)
    assert [s.greeting.code, *codes(replies)] == [220, 250, 250, 550, 550, 503, 221]
    assert "550 5.7.1 Requested action not taken: relaying denied" in wire(replies)
    assert s.spooled() == []


def test_pipelined_mixed_local_and_remote(chainmail_session):
    s = chainmail_session(authorized_addresses="10.0.0.0/8")
    replies = s.raw(b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                    b"RCPT TO:<b@remote.example>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n"
                    b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n", replies=None)
    assert [s.greeting.code, *codes(replies)] == [220, 250, 250, 550, 250, 354, 250, 221]
    [msg] = s.spooled()
    assert msg.recipients == ["u@local.test"]


def test_authorized_network_may_relay(chainmail_session):
    s = chainmail_session()
    replies = s.send_message("a@local.test", ["someone@remote.example"], "Subject: r\r\n\r\nx\r\n")
    assert codes(replies) == [250, 250, 250, 250]
    assert s.spooled()[0].recipients == ["someone@remote.example"]


def test_postmaster_and_abuse_always_accepted(chainmail_session):
    s = chainmail_session(authorized_addresses=None)
    replies = s.raw(b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                    b"RCPT TO:<postmaster>\r\nRCPT TO:<Abuse@local.test>\r\nQUIT\r\n", replies=None)
    assert "250 2.1.5 Recipient <postmaster@local.test> OK" in wire(replies)
    assert "250 2.1.5 Recipient <Abuse@local.test> OK" in wire(replies)


def test_sequence_errors(chainmail_session):
    s = chainmail_session()
    lines = wire(s.raw(b"MAIL FROM:<a@b.example>\r\nEHLO t\r\nRCPT TO:<x@local.test>\r\n"
                       b"DATA\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nDATA now\r\n"
                       b"MAIL FROM:<c@d.example>\r\nMAIL FROM:<c@d.example>\r\nQUIT\r\n", replies=None))
    assert "503 5.5.0 Need HELO or EHLO before MAIL" in lines
    assert "503 5.5.0 Need MAIL before RCPT" in lines
    assert "503 5.5.0 No sender specified" in lines
    assert "503 5.5.0 No recipients specified" in lines
    assert "500 5.5.4 Unexpected argument provided with DATA command" in lines
    assert "503 5.5.0 Sender already specified" in lines


def test_helo_enforcement_can_be_disabled(chainmail_session):
    s = chainmail_session(options="<heloEhloEnforcement>false</heloEhloEnforcement>")
    lines = wire(s.raw(b"MAIL FROM:<a@b.example>\r\nQUIT\r\n", replies=None))
    assert "250 2.1.0 Sender <a@b.example> OK" in lines


def test_address_brackets_enforcement(chainmail_session):
    strict = chainmail_session()
    lines = wire(strict.raw(b"EHLO t\r\nmail from: test@local.test\r\n"
                            b"MAIL FROM:<test@local.test>\r\nrcpt to: u@local.test\r\nQUIT\r\n",
                            replies=None))
    assert "501 5.1.7 Syntax error in MAIL command" in lines
    assert "250 2.1.0 Sender <test@local.test> OK" in lines
    assert "501 5.5.2 Syntax error in parameters or arguments" in lines
    lax = chainmail_session(options="<addressBracketsEnforcement>false</addressBracketsEnforcement>")
    lines = wire(lax.raw(b"EHLO t\r\nmail from: test@local.test\r\nrcpt to: u@local.test\r\nQUIT\r\n",
                         replies=None))
    assert "250 2.1.0 Sender <test@local.test> OK" in lines
    assert "250 2.1.5 Recipient <u@local.test> OK" in lines


def test_address_syntax_errors(chainmail_session):
    s = chainmail_session()
    lines = wire(s.raw(b"EHLO t\r\nMAIL FROM:<a..b@x.example>\r\nMAIL FROM:<>\r\n"
                       b"RCPT TO:<to..user@remote.example>\r\nRCPT TO:<u@local.test> FOO=bar\r\n"
                       b"MAIL TO:<x@y.example>\r\nQUIT\r\n", replies=None))
    assert "501 5.1.7 Syntax error in sender address" in lines
    assert "250 2.1.0 Sender <> OK" in lines
    assert "553 5.1.3 Syntax error in recipient address" in lines
    assert "504 5.5.4 Unrecognized or unsupported option: FOO" in lines


def test_helo_argument_validation(chainmail_session):
    s = chainmail_session()
    lines = wire(s.raw(b"HELO\r\nHELO bad value\r\nEHLO localhost)\r\n"
                       b"HELO [127.0.0.1]\r\nEHLO [IPv6:::1]\r\nQUIT\r\n", replies=None))
    assert "501 5.5.4 Domain address required: HELO" in lines
    assert lines.count("501 5.5.2 Invalid domain name or ip supplied as HELO argument") == 2
    assert "250 mx.test Hello [127.0.0.1] [127.0.0.1]" in lines
    assert any(l.startswith("250-mx.test Hello [IPv6:::1]") for l in lines)


def test_simple_commands(chainmail_session):
    s = chainmail_session()
    replies = s.raw(b"NOOP\r\nNOOP anything\r\nRSET\r\nRSET x\r\nVRFY u\r\n"
                    b"EXPN list\r\nHELP\r\nFOO bar\r\nAUTH PLAIN\r\nQUIT now\r\n", replies=None)
    assert wire(replies) == [
        "250 2.0.0 OK", "250 2.0.0 OK", "250 2.0.0 OK",
        "500 5.5.4 Unexpected argument provided with RSET command",
        "502 5.3.3 VRFY is not supported", "502 5.3.3 EXPN is not supported",
        "502 5.3.3 HELP is not supported", "500 5.5.1 Command FOO unrecognized.",
        "500 5.5.1 Command AUTH unrecognized.",
        "500 5.5.4 Unexpected argument provided with QUIT command",
    ]


def test_line_too_long_then_session_goes_on(chainmail_session):
    s = chainmail_session()
    lines = wire(s.raw(b"EHLO " + b"a" * 9000 + b"\r\nEHLO test\r\nQUIT\r\n", replies=None))
    assert "500 5.5.2 Line length exceeded. See RFC 2821 #4.5.3.1." in lines
    assert "250-mx.test Hello test [127.0.0.1]" in lines


def test_bare_lf_in_command_closes(chainmail_session):
    s = chainmail_session()
    replies = s.raw(b"EHLO t\nNOOP\r\n", replies=None)
    assert wire(replies)[-1] == "500 5.5.2 line delimiter must be CRLF"


def test_bare_lf_in_data_is_refused_and_nothing_queued(chainmail_session):
    s = chainmail_session()
    replies = s.raw(b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n"
                    b"DATA\r\nSubject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<evil@x.example>\r\n",
                    replies=None)
    lines = wire(replies)
    assert lines[-1] == "500 5.0.0 line delimiter must be CRLF"
    assert not any("evil" in line for line in lines)
    assert s.spooled() == []


def test_bare_cr_or_nul_in_data_refuses_the_message_and_closes(chainmail_session):
    """`\\r.\\r` is no end of data, and a bare CR or a NUL is refused like a bare LF: the
    message is not kept and nothing after it is read as a command."""
    for body, reply in ((b"line\r.\rMAIL FROM:<e@x.example>", "500 5.0.0 line delimiter must be CRLF"),
                        (b"nul\x00byte", "500 5.6.0 NUL character not allowed in message data")):
        s = chainmail_session()
        replies = s.raw(b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n"
                        b"DATA\r\nSubject: x\r\n\r\n" + body + b"\r\n.\r\nQUIT\r\n", replies=None)
        assert [s.greeting.code, *codes(replies)] == [220, 250, 250, 250, 354, 500]
        assert wire(replies)[-1] == reply
        assert s.spooled() == []


def test_normalize_keeps_bare_cr_as_content_in_canonical_form(chainmail_session):
    s = chainmail_session(options="<forbidBareNewline>normalize</forbidBareNewline>")
    replies = s.raw(b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n"
                    b"DATA\r\nSubject: x\rBcc: y\r\n\r\nline\r.\rMAIL FROM:<e@x.example>\n"
                    b"nul\x00\r\n.\r\nQUIT\r\n", replies=None)
    assert [s.greeting.code, *codes(replies)] == [220, 250, 250, 250, 354, 250, 221]
    [msg] = s.spooled()
    # a line made of a dot is unstuffed like any other: the fake end of data is an empty line
    assert msg.content.endswith(b"Subject: x Bcc: y\r\n\r\nline\r\n\r\nMAIL FROM:<e@x.example>\r\nnul\r\n")


def test_size_limit(chainmail_session):
    s = chainmail_session(options="<maxmessagesize>1</maxmessagesize>")
    assert "SIZE 1024" in s.ehlo("t").lines
    assert str(s.mail("a@local.test", "SIZE=1025")) == \
        "552 5.3.4 Message size exceeds fixed maximum message size"
    assert s.rcpt("u@local.test").code == 503
    assert s.mail("a@local.test", "SIZE=x").code == 501
    s.rset()
    # 1024 octets counted as sent, CRLFs included: accepted; one more: refused.
    line = b"x" * 1022 + b"\r\n"
    assert s.mail("a@local.test", f"SIZE={len(line)}").code == 250
    assert s.rcpt("u@local.test").code == 250
    assert s.data(line).code == 250
    # Without a SIZE declaration the limit is enforced on the received body.
    assert s.mail("a@local.test").code == 250
    assert s.rcpt("u@local.test").code == 250
    assert str(s.data(line + b"y\r\n")) == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert len(s.spooled()) == 1


def test_many_messages_per_connection_and_rset(chainmail_session):
    s = chainmail_session(helo="client.test")
    for i in range(20):
        replies = s.send_message("a@local.test", [f"u{i}@local.test"], f"Subject: {i}\r\n\r\nx\r\n")
        assert codes(replies) == [250, 250, 250]
    s.mail("a@local.test")
    s.rset()
    assert s.mail("a@local.test").code == 250
    assert len(s.spooled()) == 20


def test_null_sender_and_multiple_recipients(chainmail_session):
    s = chainmail_session(helo="client.test")
    replies = s.send_message("", ["a@local.test", "b@local.test"], "Subject: bounce\r\n\r\nx\r\n")
    assert codes(replies) == [250, 250, 250, 250]
    [msg] = s.spooled()
    assert msg.sender == ""
    assert msg.recipients == ["a@local.test", "b@local.test"]
    assert b"for <" not in msg.content.split(b"\r\n\r\n")[0]


def test_bdat_through_the_session_driver(chainmail_session):
    s = chainmail_session()
    s.ehlo()
    assert s.mail("a@local.test").code == 250 and s.rcpt("u@local.test").code == 250
    assert s.bdat("Subject: x\n\nsplit into chunks\n", chunk_size=5).code == 250
    assert s.mail("a@local.test").code == 250 and s.rcpt("u@local.test").code == 250
    reply = s.bdat("Subject: x\n\nbare\rCR\n")
    assert (reply.code, reply.enhanced) == (550, "5.6.0")
