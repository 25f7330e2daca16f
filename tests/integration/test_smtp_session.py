"""The SMTP dialogue of the default chain, spoken by real clients over real sockets."""

from __future__ import annotations

import smtplib
import socket

import pytest

from ..conftest import raw_exchange, wait_for


def reply_codes(data: bytes) -> list[int]:
    return [int(line[:3]) for line in data.split(b"\r\n") if line[3:4] == b" "]


def test_greeting_and_ehlo_keywords(chainmail):
    with chainmail.smtp() as s:
        code, text = s.ehlo("client.example")
        assert code == 250
        lines = text.decode().split("\n")
        assert lines[0] == "mx.test Hello client.example [127.0.0.1]"
        assert lines[1:] == ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"]
        code, text = s.helo("client.example")
        assert (code, text) == (250, b"mx.test Hello client.example [127.0.0.1]")


def test_greeting_text(chainmail_factory):
    default = chainmail_factory()
    data = raw_exchange(default.port, b"QUIT\r\n")
    assert data.startswith(b"220 mx.test ESMTP chainmail ready\r\n")
    assert data.endswith(b"221 2.0.0 mx.test Service closing transmission channel\r\n")
    custom = chainmail_factory("<smtpGreeting>mail.example.org at your service</smtpGreeting>")
    assert raw_exchange(custom.port, b"QUIT\r\n").startswith(b"220 mail.example.org at your service\r\n")


def test_message_is_queued_with_received_header_and_exact_body(chainmail):
    body = "Subject: hello\r\n\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
    with chainmail.smtp() as s:
        s.ehlo("client.example")
        refused = s.sendmail("sender@remote.example", ["user@local.test"], body)
        assert refused == {}
    [msg] = chainmail.queued()
    assert msg.envelope.sender == "sender@remote.example"
    assert msg.envelope.recipients == ["user@local.test"]
    assert msg.envelope.attributes["remote_addr"] == "127.0.0.1"
    assert msg.envelope.attributes["helo"] == "client.example"
    data = chainmail.queued_body(msg.id)
    head, _, rest = data.partition(b"Subject: hello\r\n")
    assert head.startswith(b"Received: from client.example (EHLO client.example) ([127.0.0.1])\r\n")
    assert b"by mx.test (chainmail) with ESMTP ID " in head
    assert b"for <user@local.test>;" in head
    assert rest == b"\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
    assert msg.size == len(data)


def test_pipelined_transaction_in_one_write(chainmail):
    data = raw_exchange(chainmail.port, b"HELO TEST\r\nMAIL FROM:<test@localhost>\r\n"
                        b"RCPT TO:<test2@local.test>\r\nDATA\r\nSubject: test\r\n\r\ncontent\r\n"
                        b".\r\nQUIT\r\n")
    assert reply_codes(data) == [220, 250, 250, 250, 354, 250, 221]
    assert len(chainmail.queued()) == 1


def test_pipelined_relay_refusal(chainmail_factory):
    server = chainmail_factory(authorized="")
    data = raw_exchange(server.port, b"HELO TEST\r\nMAIL FROM:<a@remote.example>\r\n"
                        b"RCPT TO:<b@remote.example>\r\nRCPT TO:<c@other.example>\r\nDATA\r\nQUIT\r\n")
    assert reply_codes(data) == [220, 250, 250, 550, 550, 503, 221]
    assert b"550 5.7.1 Requested action not taken: relaying denied\r\n" in data
    assert server.queued() == []


def test_pipelined_mixed_local_and_remote(chainmail_factory):
    server = chainmail_factory(authorized="10.0.0.0/8")
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                        b"RCPT TO:<b@remote.example>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n"
                        b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert reply_codes(data) == [220, 250, 250, 550, 250, 354, 250, 221]
    [msg] = server.queued()
    assert msg.envelope.recipients == ["u@local.test"]


def test_authorized_network_may_relay(chainmail):
    with chainmail.smtp() as s:
        assert s.sendmail("a@local.test", ["someone@remote.example"], "Subject: r\r\n\r\nx\r\n") == {}
    assert chainmail.queued()[0].envelope.recipients == ["someone@remote.example"]


def test_postmaster_and_abuse_always_accepted(chainmail_factory):
    server = chainmail_factory(authorized="")
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                        b"RCPT TO:<postmaster>\r\nRCPT TO:<Abuse@local.test>\r\nQUIT\r\n")
    assert b"250 2.1.5 Recipient <postmaster@local.test> OK" in data
    assert b"250 2.1.5 Recipient <Abuse@local.test> OK" in data


def test_sequence_errors(chainmail):
    data = raw_exchange(chainmail.port, b"MAIL FROM:<a@b.example>\r\nEHLO t\r\nRCPT TO:<x@local.test>\r\n"
                        b"DATA\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nDATA now\r\n"
                        b"MAIL FROM:<c@d.example>\r\nMAIL FROM:<c@d.example>\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    assert "503 5.5.0 Need HELO or EHLO before MAIL" in lines
    assert "503 5.5.0 Need MAIL before RCPT" in lines
    assert "503 5.5.0 No sender specified" in lines
    assert "503 5.5.0 No recipients specified" in lines
    assert "500 5.5.4 Unexpected argument provided with DATA command" in lines
    assert "503 5.5.0 Sender already specified" in lines


def test_helo_enforcement_can_be_disabled(chainmail_factory):
    server = chainmail_factory("<heloEhloEnforcement>false</heloEhloEnforcement>")
    data = raw_exchange(server.port, b"MAIL FROM:<a@b.example>\r\nQUIT\r\n")
    assert b"250 2.1.0 Sender <a@b.example> OK" in data


def test_address_brackets_enforcement(chainmail_factory):
    strict = chainmail_factory()
    data = raw_exchange(strict.port, b"EHLO t\r\nmail from: test@local.test\r\n"
                        b"MAIL FROM:<test@local.test>\r\nrcpt to: u@local.test\r\nQUIT\r\n")
    assert b"501 5.1.7 Syntax error in MAIL command" in data
    assert b"250 2.1.0 Sender <test@local.test> OK" in data
    assert b"501 5.5.2 Syntax error in parameters or arguments" in data
    lax = chainmail_factory("<addressBracketsEnforcement>false</addressBracketsEnforcement>")
    data = raw_exchange(lax.port, b"EHLO t\r\nmail from: test@local.test\r\nrcpt to: u@local.test\r\nQUIT\r\n")
    assert b"250 2.1.0 Sender <test@local.test> OK" in data
    assert b"250 2.1.5 Recipient <u@local.test> OK" in data


def test_address_syntax_errors(chainmail):
    data = raw_exchange(chainmail.port, b"EHLO t\r\nMAIL FROM:<a..b@x.example>\r\nMAIL FROM:<>\r\n"
                        b"RCPT TO:<to..user@remote.example>\r\nRCPT TO:<u@local.test> FOO=bar\r\n"
                        b"MAIL TO:<x@y.example>\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    assert "501 5.1.7 Syntax error in sender address" in lines
    assert "250 2.1.0 Sender <> OK" in lines
    assert "553 5.1.3 Syntax error in recipient address" in lines
    assert "504 5.5.4 Unrecognized or unsupported option: FOO" in lines


def test_helo_argument_validation(chainmail):
    data = raw_exchange(chainmail.port, b"HELO\r\nHELO bad value\r\nEHLO localhost)\r\n"
                        b"HELO [127.0.0.1]\r\nEHLO [IPv6:::1]\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    assert "501 5.5.4 Domain address required: HELO" in lines
    assert lines.count("501 5.5.2 Invalid domain name or ip supplied as HELO argument") == 2
    assert "250 mx.test Hello [127.0.0.1] [127.0.0.1]" in lines
    assert any(l.startswith("250-mx.test Hello [IPv6:::1]") for l in lines)


def test_simple_commands(chainmail):
    data = raw_exchange(chainmail.port, b"NOOP\r\nNOOP anything\r\nRSET\r\nRSET x\r\nVRFY u\r\n"
                        b"EXPN list\r\nHELP\r\nFOO bar\r\nAUTH PLAIN\r\nQUIT now\r\n")
    assert data.decode().split("\r\n")[1:-1] == [
        "250 2.0.0 OK", "250 2.0.0 OK", "250 2.0.0 OK",
        "500 5.5.4 Unexpected argument provided with RSET command",
        "502 5.3.3 VRFY is not supported", "502 5.3.3 EXPN is not supported",
        "502 5.3.3 HELP is not supported", "500 5.5.1 Command FOO unrecognized.",
        "500 5.5.1 Command AUTH unrecognized.",
        "500 5.5.4 Unexpected argument provided with QUIT command",
    ]


def test_line_too_long_then_session_goes_on(chainmail):
    data = raw_exchange(chainmail.port, b"EHLO " + b"a" * 9000 + b"\r\nEHLO test\r\nQUIT\r\n")
    assert b"500 5.5.2 Line length exceeded. See RFC 2821 #4.5.3.1.\r\n" in data
    assert b"250-mx.test Hello test [127.0.0.1]" in data


def test_bare_lf_in_command_closes(chainmail):
    data = raw_exchange(chainmail.port, b"EHLO t\nNOOP\r\n")
    assert data.endswith(b"500 5.5.2 line delimiter must be CRLF\r\n")


def test_bare_lf_in_data_is_refused_and_nothing_queued(chainmail):
    data = raw_exchange(chainmail.port, b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n"
                        b"DATA\r\nSubject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<evil@x.example>\r\n")
    assert data.endswith(b"500 5.0.0 line delimiter must be CRLF\r\n")
    assert b"evil" not in data
    assert chainmail.queued() == []


def test_bare_cr_or_nul_in_data_refuses_the_message_and_closes(chainmail):
    """`\\r.\\r` is no end of data, and a bare CR or a NUL is refused like a bare LF: the
    message is not kept and nothing after it is read as a command."""
    for body, reply in ((b"line\r.\rMAIL FROM:<e@x.example>", b"500 5.0.0 line delimiter must be CRLF"),
                        (b"nul\x00byte", b"500 5.6.0 NUL character not allowed in message data")):
        data = raw_exchange(chainmail.port, b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n"
                            b"DATA\r\nSubject: x\r\n\r\n" + body + b"\r\n.\r\nQUIT\r\n")
        assert reply_codes(data) == [220, 250, 250, 250, 354, 500]
        assert data.endswith(reply + b"\r\n")
    assert chainmail.queued() == []


def test_normalize_keeps_bare_cr_as_content_in_canonical_form(chainmail_factory):
    server = chainmail_factory("<forbidBareNewline>normalize</forbidBareNewline>")
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\n"
                        b"DATA\r\nSubject: x\rBcc: y\r\n\r\nline\r.\rMAIL FROM:<e@x.example>\n"
                        b"nul\x00\r\n.\r\nQUIT\r\n")
    assert reply_codes(data) == [220, 250, 250, 250, 354, 250, 221]
    [msg] = server.queued()
    body = server.queued_body(msg.id)
    # a line made of a dot is unstuffed like any other: the fake end of data is an empty line
    assert body.endswith(b"Subject: x Bcc: y\r\n\r\nline\r\n\r\nMAIL FROM:<e@x.example>\r\nnul\r\n")


def test_size_limit(chainmail_factory):
    server = chainmail_factory("<maxmessagesize>1</maxmessagesize>")
    with server.smtp() as s:
        s.ehlo("t")
        assert s.esmtp_features["size"] == "1024"
        assert s.docmd("MAIL FROM:<a@local.test> SIZE=1025") == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        assert s.docmd("RCPT TO:<u@local.test>")[0] == 503
        assert s.docmd("MAIL FROM:<a@local.test> SIZE=x")[0] == 501
        s.rset()
        # 1024 octets counted as sent, CRLFs included: accepted; one more: refused.
        line = b"x" * 1022 + b"\r\n"
        assert s.sendmail("a@local.test", ["u@local.test"], line) == {}
        # Without a SIZE declaration the limit is enforced on the received body.
        assert s.mail("a@local.test")[0] == 250
        assert s.rcpt("u@local.test")[0] == 250
        assert s.data(line + b"y\r\n") == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert len(server.queued()) == 1


def test_large_message_streams_to_spool(chainmail):
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 5000   # ~5 MB
    with chainmail.smtp() as s:
        assert s.sendmail("a@local.test", ["u@local.test"], body) == {}
    [msg] = chainmail.queued()
    assert chainmail.queued_body(msg.id).endswith(body)


def test_cut_off_data_leaves_nothing(chainmail):
    spool = chainmail.var / "spool"

    def leftovers() -> list:
        return [p for p in spool.rglob("*") if p.is_file()]

    with socket.create_connection(("127.0.0.1", chainmail.port)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n")
        while not (line := f.readline()).startswith(b"354"):
            assert line, "closed before DATA's reply"
        # more than the writer keeps in memory: the partial body goes to a file in the spool
        s.sendall(b"Subject: partial\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)
        wait_for(leftovers, what="the partial message streaming to the spool")
        f.close()
    wait_for(lambda: not leftovers(), what="the partial message removed from the spool")
    assert chainmail.queued() == []


def test_many_messages_per_connection_and_rset(chainmail):
    with chainmail.smtp() as s:
        for i in range(20):
            assert s.sendmail("a@local.test", [f"u{i}@local.test"], f"Subject: {i}\r\n\r\nx\r\n") == {}
        s.docmd("MAIL FROM:<a@local.test>")
        s.rset()
        assert s.docmd("MAIL FROM:<a@local.test>")[0] == 250
    assert len(chainmail.queued()) == 20


def test_null_sender_and_multiple_recipients(chainmail):
    with chainmail.smtp() as s:
        assert s.sendmail("", ["a@local.test", "b@local.test"], "Subject: bounce\r\n\r\nx\r\n") == {}
    [msg] = chainmail.queued()
    assert msg.envelope.sender == ""
    assert msg.envelope.recipients == ["a@local.test", "b@local.test"]
    assert b"for <" not in chainmail.queued_body(msg.id).split(b"\r\n\r\n")[0]
