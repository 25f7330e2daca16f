"""CHUNKING and BINARYMIME (RFC 3030) against a running server: BDAT chunks pipelined with
commands, sizes counted across chunks, chunk data never read as commands, DATA's line rules
for text bodies, binary bodies byte for byte, and LMTP's per-recipient replies."""

from __future__ import annotations

import socket

import pytest

from ..conftest import wait_for


class Client:
    """A raw SMTP client: send bytes, read whole replies."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return b"".join(lines)
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes, replies: int = 1) -> list[bytes]:
        self.sock.sendall(data)
        return [self.reply() for _ in range(replies)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@local.test>%s\r\nRCPT TO:<u@local.test>\r\n"
MESSAGE = b"Subject: chunked\r\n\r\nfirst line\r\nsecond line\r\n"


def test_ehlo_offers_chunking_and_binarymime(chainmail):
    with chainmail.smtp() as s:
        s.ehlo("c")
        assert s.has_extn("chunking") and s.has_extn("binarymime")


def test_message_in_pipelined_chunks(chainmail):
    with Client(chainmail.port) as c:
        # chunks cut inside a line and between CR and LF
        cuts = [MESSAGE[:7], MESSAGE[7:19], MESSAGE[19:]]
        stream = ENVELOPE % b"" + bdat(cuts[0]) + bdat(cuts[1]) + bdat(cuts[2], last=True)
        replies = c.send(stream, replies=6)
        assert replies[0].startswith(b"250-")
        assert replies[3] == b"250 2.0.0 7 octets received\r\n"
        assert replies[4] == b"250 2.0.0 12 octets received\r\n"
        assert replies[5].startswith(b"250 2.6.0")
        [msg] = chainmail.queued()
        assert chainmail.queued_body(msg.id).endswith(MESSAGE)
        assert c.send(b"QUIT\r\n")[0].startswith(b"221")


def test_chunk_data_is_never_read_as_commands(chainmail):
    """A chunk holding command lines, refused or taken, is data: nothing in it runs."""
    smuggled = b"RCPT TO:<other@local.test>\r\nDATA\r\n"
    with Client(chainmail.port) as c:
        # refused BDAT (no MAIL yet): its chunk is read and dropped, not executed
        [r] = c.send(b"EHLO c\r\n")
        [r] = c.send(bdat(b"MAIL FROM:<x@local.test>\r\n" + smuggled, last=True))
        assert r.startswith(b"503 5.5.0")
        [r] = c.send(b"NOOP\r\n")
        assert r.startswith(b"250")
        body = b"Subject: s\r\n\r\n" + smuggled
        replies = c.send(ENVELOPE.replace(b"EHLO c\r\n", b"") % b"" + bdat(body, last=True),
                         replies=3)
        assert replies[2].startswith(b"250 2.6.0"), replies
    [msg] = chainmail.queued()
    assert msg.envelope.recipients == ["u@local.test"]
    assert chainmail.queued_body(msg.id).endswith(body)


def test_size_limit_counts_all_chunks(chainmail_factory):
    server = chainmail_factory("<maxmessagesize>1</maxmessagesize>")   # 1 KiB
    with Client(server.port) as c:
        part = b"x" * 600 + b"\r\n"
        replies = c.send(ENVELOPE % b"" + bdat(b"Subject: big\r\n\r\n" + part), replies=4)
        assert replies[3].startswith(b"250 2.0.0")
        [r] = c.send(bdat(part))
        assert r.startswith(b"552 5.3.4"), r
        # the transaction is over: the LAST chunk is read and refused, nothing stored
        [r] = c.send(bdat(part, last=True))
        assert r.startswith(b"503"), r
        [r] = c.send(b"NOOP\r\n")
        assert r.startswith(b"250")
    assert server.queued() == []


def test_bare_line_feed_in_text_chunks_refuses_the_message_only(chainmail):
    with Client(chainmail.port) as c:
        body = b"Subject: lf\r\n\r\nline\nMAIL FROM:<evil@x>\r\n"
        replies = c.send(ENVELOPE % b"" + bdat(body, last=True), replies=4)
        assert replies[3].startswith(b"550 5.6.0"), replies
        # the same client can go on with a clean message
        replies = c.send(ENVELOPE.replace(b"EHLO c\r\n", b"") % b"" + bdat(MESSAGE, last=True),
                         replies=3)
        assert replies[2].startswith(b"250 2.6.0")
    [msg] = chainmail.queued()
    assert b"evil" not in chainmail.queued_body(msg.id)


@pytest.mark.parametrize("octet", [b"\r", b"\0"])
def test_bare_cr_or_nul_in_text_chunks_refused(chainmail, octet):
    with Client(chainmail.port) as c:
        body = b"Subject: x\r\n\r\nbad" + octet + b"line\r\n"
        replies = c.send(ENVELOPE % b"" + bdat(body, last=True), replies=4)
        assert replies[3].startswith(b"550 5.6.0")
    assert chainmail.queued() == []


def test_crlf_split_across_chunks_is_a_line_end(chainmail):
    with Client(chainmail.port) as c:
        body = b"Subject: split\r\n\r\nend\r\n"
        cut = body.index(b"\n", 20)   # between the CR and the LF of the last line
        replies = c.send(ENVELOPE % b"" + bdat(body[:cut]) + bdat(body[cut:], last=True),
                         replies=5)
        assert replies[4].startswith(b"250 2.6.0"), replies
    [msg] = chainmail.queued()
    assert chainmail.queued_body(msg.id).endswith(body)


def test_text_message_without_final_line_end_gets_one(chainmail):
    with Client(chainmail.port) as c:
        replies = c.send(ENVELOPE % b"" + bdat(b"Subject: t\r\n\r\nno end", last=True),
                         replies=4)
        assert replies[3].startswith(b"250 2.6.0")
    [msg] = chainmail.queued()
    assert chainmail.queued_body(msg.id).endswith(b"\r\n\r\nno end\r\n")


def test_binarymime_is_stored_byte_for_byte(chainmail):
    binary = bytes(range(256)) * 4 + b"\r\n.\r\n" + b"\n\r\0"
    body = (b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + binary)
    with Client(chainmail.port) as c:
        replies = c.send(ENVELOPE % b" BODY=BINARYMIME" + bdat(body[:100]) + bdat(body[100:], last=True),
                         replies=5)
        assert replies[4].startswith(b"250 2.6.0"), replies
    [msg] = chainmail.queued()
    assert msg.envelope.mail_params.get("BODY") == "BINARYMIME"
    assert chainmail.queued_body(msg.id).endswith(body)


def test_binarymime_needs_bdat(chainmail):
    with Client(chainmail.port) as c:
        replies = c.send(ENVELOPE % b" BODY=BINARYMIME" + b"DATA\r\n", replies=4)
        assert replies[3].startswith(b"503 5.5.1")


def test_data_cannot_follow_bdat(chainmail):
    with Client(chainmail.port) as c:
        replies = c.send(ENVELOPE % b"" + bdat(b"Subject: x\r\n") + b"DATA\r\n", replies=5)
        assert replies[3].startswith(b"250 2.0.0")
        assert replies[4].startswith(b"503 5.5.1")
    assert chainmail.queued() == []


def test_rset_drops_a_chunked_message(chainmail):
    with Client(chainmail.port) as c:
        replies = c.send(ENVELOPE % b"" + bdat(b"Subject: x\r\n") + b"RSET\r\n", replies=5)
        assert replies[4].startswith(b"250")
        [r] = c.send(bdat(b"\r\nbody\r\n", last=True))
        assert r.startswith(b"503 5.5.0")
    assert chainmail.queued() == []


def test_malformed_bdat_closes_the_session(chainmail):
    with Client(chainmail.port) as c:
        replies = c.send(ENVELOPE % b"" + b"BDAT ten LAST\r\nRSET\r\n", replies=5)
        assert replies[3].startswith(b"501 5.5.4")
        assert replies[4] == b""   # closed: what followed is never read as commands


def test_client_gone_mid_chunk_leaves_nothing(chainmail):
    with Client(chainmail.port) as c:
        c.send(ENVELOPE % b"", replies=3)
        c.sock.sendall(b"BDAT 100000 LAST\r\nSubject: cut\r\n\r\n" + b"z" * 5000)
    wait_for(lambda: not [p for p in (chainmail.var / "spool").rglob("*") if p.is_file()],
             what="the partial message removed from the spool")
    assert chainmail.queued() == []


def test_lmtp_chunks_get_one_reply_per_recipient(chainmail_factory):
    from .test_lmtp import lmtpserver_xml, maildir, with_users
    one = "<ioWorkerCount>1</ioWorkerCount>"
    server = chainmail_factory(one, files={"lmtpserver.xml": lmtpserver_xml(one)})
    server.lmtp_port = server.ports[-1]
    with_users(server, "bob@local.test", "cedric@local.test")
    binary = b"\x00\x01\r\x02\n" * 10
    body = (b"Subject: lmtp chunks\r\nContent-Transfer-Encoding: binary\r\n\r\n" + binary)
    with Client(server.lmtp_port) as c:
        replies = c.send(b"LHLO c\r\nMAIL FROM:<a@remote.example> BODY=BINARYMIME\r\n"
                         b"RCPT TO:<bob@local.test>\r\nRCPT TO:<cedric@local.test>\r\n"
                         + bdat(body[:30]) + bdat(body[30:], last=True), replies=7)
        assert b"CHUNKING" in replies[0] and b"BINARYMIME" in replies[0]
        assert replies[4].startswith(b"250 2.0.0 30 octets")
        assert replies[5:] == [b"250 2.6.0 Message received <bob@local.test>\r\n",
                               b"250 2.6.0 Message received <cedric@local.test>\r\n"]
    for user in ("bob@local.test", "cedric@local.test"):
        [msg] = list(maildir(server, user))
        assert msg["Subject"] == "lmtp chunks"
        # Maildir holds lines: the binary part is stored in base64, and decodes to the bytes sent
        assert msg["Content-Transfer-Encoding"] == "base64"
        assert msg.get_payload(decode=True) == binary


def test_binary_8bit_part_reaches_a_maildir_whole(chainmail_factory):
    from .test_lmtp import lmtpserver_xml, maildir, with_users
    one = "<ioWorkerCount>1</ioWorkerCount>"
    server = chainmail_factory(one, files={"lmtpserver.xml": lmtpserver_xml(one)})
    server.lmtp_port = server.ports[-1]
    with_users(server, "bob@local.test")
    png = bytes(range(256)) + b"\r\n\n\r\0"
    body = (b"Subject: picture\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
            b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
            b"Content-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n" + png
            + b"\r\n--b--\r\n")
    with Client(server.lmtp_port) as c:
        replies = c.send(b"LHLO c\r\nMAIL FROM:<a@remote.example> BODY=BINARYMIME\r\n"
                         b"RCPT TO:<bob@local.test>\r\n" + bdat(body, last=True), replies=4)
        assert replies[3].startswith(b"250 2.6.0")
    [msg] = list(maildir(server, "bob@local.test"))
    text, image = msg.get_payload()
    assert text.get_payload() == "see attached"
    assert image["Content-Transfer-Encoding"] == "base64"
    assert image.get_payload(decode=True) == png
