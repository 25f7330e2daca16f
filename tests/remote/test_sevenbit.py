"""7-bit conversion for servers without 8BITMIME, header downgrade and non-ASCII addresses."""

from __future__ import annotations

import email
import email.policy

import pytest

from chainmail.remote.client import SmtpClient, SmtpReplyError
from chainmail.remote.delivery import PERMANENT, SUCCESS, deliver
from chainmail.sevenbit import ConversionError, downgrade_headers, to_seven_bit

from .fakedns import fake_dns
from .peers import Peer, ehlo, start_peer
from .test_delivery import mx_records
from .test_delivery import setup as configure

TEXT = "Grüße aus Köln, à bientôt\r\n.dot line\r\n"
MULTIPART = (
    b"From: a@l.test\r\nSubject: mixed\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
    b"This is a multi-part message.\r\n"
    b"--=_b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + TEXT.encode() +
    b"--=_b\r\nContent-Type: text/plain\r\n\r\nplain ascii part\r\n"
    b"--=_b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    b"\x00\xff\xfe\x80binary\r\n"
    b"--=_b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"<p>caf=C3=A9 and a stray \xe9</p>\r\n"
    b"--=_b--\r\nepilogue\r\n")


def text(value) -> str:
    """Decoded content with LF line ends (the CRLF before a boundary is the boundary's)."""
    if isinstance(value, bytes):
        value = value.decode()
    return value.replace("\r\n", "\n").rstrip("\n")


def parts(data: bytes):
    return list(email.message_from_bytes(data, policy=email.policy.default).walk())


def test_each_8bit_leaf_is_reencoded_and_the_rest_kept():
    out = to_seven_bit(MULTIPART, by="out.test")
    assert out.isascii()
    # untouched: top headers, preamble, the ASCII part, boundaries, epilogue
    assert out.startswith(MULTIPART[:MULTIPART.index(b"--=_b")])
    assert b"--=_b\r\nContent-Type: text/plain\r\n\r\nplain ascii part\r\n--=_b\r\n" in out
    assert out.endswith(b"--=_b--\r\nepilogue\r\n")
    _, utf8, ascii_part, binary, html = parts(out)
    assert utf8["Content-Transfer-Encoding"] == "quoted-printable"
    assert utf8["X-MIME-Autoconverted"] == "from 8bit to quoted-printable by out.test"
    assert text(utf8.get_content()) == text(TEXT)
    assert binary["Content-Transfer-Encoding"] == "base64"
    assert binary.get_content() == b"\x00\xff\xfe\x80binary"
    assert text(ascii_part.get_content()) == "plain ascii part"
    # already quoted-printable: the stray byte is escaped, not encoded twice
    assert html["Content-Transfer-Encoding"] == "quoted-printable" and "X-MIME-Autoconverted" not in html
    assert html.get_payload(decode=True).rstrip() == b"<p>caf\xc3\xa9 and a stray \xe9</p>"


def test_quoted_printable_keeps_lines_and_wraps_long_ones():
    body = ("é" * 60 + "\r\nshort\r\n").encode()
    out = to_seven_bit(b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body)
    assert all(len(line) <= 76 for line in out.split(b"\r\n"))
    [msg] = parts(out)
    assert text(msg.get_content()) == "é" * 60 + "\nshort"


def test_ascii_content_is_unchanged():
    assert to_seven_bit(b"Subject: x\r\n\r\nhello\r\n") == b"Subject: x\r\n\r\nhello\r\n"


def test_message_without_mime_gets_mime_headers():
    out = to_seven_bit("Subject: x\r\n\r\ncafé\r\n".encode(), by="o.test")
    [msg] = parts(out)
    assert msg["MIME-Version"] == "1.0" and msg.get_content_charset() == "utf-8"
    assert text(msg.get_content()) == "café"
    latin1 = to_seven_bit(b"Subject: x\r\n\r\ncaf\xe9\r\n")
    assert b"charset=unknown-8bit" in latin1


def test_attached_message_is_walked_into_not_encoded():
    inner = "Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nçà\r\n".encode()
    msg = (b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
           b"--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + inner + b"--b--\r\n")
    out = to_seven_bit(msg)
    assert out.isascii()
    assert b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\n" in out
    inner_text = parts(out)[2]
    assert inner_text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text(inner_text.get_content()) == "çà"


def test_headers_downgraded_where_rfc2047_allows():
    header = "Subject: Re: Grüße aus  Köln ok\r\nX-Note: é\r\nTo: b@r.test\r\n".encode()
    out = downgrade_headers(header)
    assert out.isascii() and out.endswith(b"To: b@r.test\r\n")
    msg = email.message_from_bytes(out + b"\r\n", policy=email.policy.default)
    assert msg["Subject"] == "Re: Grüße aus  Köln ok" and msg["X-Note"] == "é"
    with pytest.raises(ConversionError):
        downgrade_headers("From: Jürgen <j@l.test>\r\n".encode())


# ------------------------------------------------------------------ through the client

async def test_client_converts_for_a_server_without_8bitmime(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "SIZE 100000")}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5, helo_name="out.test")
    result = await client.send("a@l.test", ["b@r.test"], MULTIPART)
    await client.quit()
    assert result.delivered == ["b@r.test"]
    [data] = [r[5:] for r in peer.received if r.startswith(b"DATA:")]
    assert data.isascii() and data == to_seven_bit(MULTIPART, by="out.test")
    [mail] = [r for r in peer.received if r.startswith(b"MAIL")]
    assert b"BODY=" not in mail and f"SIZE={len(data)}".encode() in mail


async def test_client_sends_8bit_as_is_with_8bitmime(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("8BITMIME")}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    eight_bit = MULTIPART.replace(b"\x00", b"")
    await client.send("a@l.test", ["b@r.test"], eight_bit)
    await client.quit()
    assert b"MAIL FROM:<a@l.test> BODY=8BITMIME" in peer.received
    assert b"DATA:" + eight_bit in peer.received


async def test_binary_part_with_a_nul_is_base64_even_with_8bitmime(nursery):
    """A NUL may not cross SMTP (RFC 5321 §4.1.1.4; 8BITMIME does not allow it either):
    the 8-bit parts are re-encoded, so the binary part arrives whole, in base64."""
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("8BITMIME")}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5, helo_name="out.test")
    await client.send("a@l.test", ["b@r.test"], MULTIPART)
    await client.quit()
    [data] = [r[5:] for r in peer.received if r.startswith(b"DATA:")]
    assert b"\x00" not in data and data == to_seven_bit(MULTIPART, by="out.test")
    binary = [p for p in parts(data) if p.get_content_type() == "application/octet-stream"]
    assert binary[0].get_content() == b"\x00\xff\xfe\x80binary"


async def test_8bit_subject_downgraded_without_smtputf8(nursery):
    message = "Subject: Grüße\r\nFrom: a@local.test\r\n\r\nbody é\r\n".encode()
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "8BITMIME")}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=10)
    assert (await client.send("a@local.test", ["u@local.test"], message)).delivered
    await client.quit()
    [body] = [r[5:] for r in peer.received if r.startswith(b"DATA:")]
    assert "Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n" in body.decode()
    assert body.endswith("body é\r\n".encode())        # 8BITMIME: the body stays as it was


async def test_smtputf8_server_gets_the_message_unchanged(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("8BITMIME", "SMTPUTF8")}))
    message = "Subject: Grüße\r\nFrom: Jürgen <j@l.test>\r\n\r\nbody\r\n".encode()
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    assert (await client.send("a@l.test", ["b@r.test"], message)).delivered
    await client.quit()
    assert b"MAIL FROM:<a@l.test> BODY=8BITMIME SMTPUTF8" in peer.received
    assert b"DATA:" + message in peer.received


async def test_structured_8bit_header_without_smtputf8_is_permanent(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("8BITMIME")}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    with pytest.raises(SmtpReplyError) as err:
        await client.send("a@l.test", ["b@r.test"], "From: Jürgen <j@l.test>\r\n\r\nx\r\n".encode())
    assert err.value.permanent and err.value.reply.enhanced == "5.6.9"
    await client.quit()
    assert not any(r.startswith(b"MAIL") for r in peer.received)


async def test_non_ascii_addresses_without_smtputf8(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}))
    client = await SmtpClient.connect("127.0.0.1", peer.port, timeout=5)
    result = await client.send("a@l.test", ["b@bücher.test", "jürgen@r.test"], b"x\r\n",
                               send_partial=True)
    assert result.delivered == ["b@bücher.test"]
    [refused] = result.refused
    assert refused.address == "jürgen@r.test" and refused.reply.code == 553
    assert refused.reply.enhanced == "5.6.7"
    assert b"RCPT TO:<b@xn--bcher-kva.test>" in peer.received
    assert not any("jürgen".encode() in r for r in peer.received)
    with pytest.raises(SmtpReplyError) as err:     # a sender that cannot be downgraded
        await client.send("jürgen@l.test", ["b@r.test"], b"x\r\n")
    assert err.value.reply.enhanced == "5.6.7"
    await client.quit()


async def test_non_ascii_recipient_fails_permanently_through_deliver(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = configure(dns, peer.port)
        out = await deliver("a@l.test", ["jürgen@example.test"], b"x\r\n", config=config, dns=svc)
        assert out.kind == PERMANENT and "5.6.7" in out.failed["jürgen@example.test"]
        config, svc = configure(dns, peer.port, sendpartial="true")
        out = await deliver("a@l.test", ["ok@example.test", "jürgen@example.test"], b"x\r\n",
                            config=config, dns=svc)
    assert out.delivered == ["ok@example.test"] and list(out.failed) == ["jürgen@example.test"]
    assert out.kind == PERMANENT


async def test_deliver_converts_for_a_helo_only_server(nursery):
    peer = await start_peer(nursery, Peer())
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = configure(dns, peer.port)
        out = await deliver("a@l.test", ["x@example.test"], MULTIPART, config=config, dns=svc)
    assert out.kind == SUCCESS
    [data] = [r[5:] for r in peer.received if r.startswith(b"DATA:")]
    assert data == to_seven_bit(MULTIPART, by="out.test")


def test_domains_become_a_labels_by_idna_2008():
    from chainmail.remote.client import ascii_address
    assert ascii_address("b@bücher.test") == "b@xn--bcher-kva.test"
    # IDNA 2008 keeps "ß" (IDNA 2003, the stdlib codec, maps it to "ss")
    assert ascii_address("x@straße.de") == "x@xn--strae-oqa.de"
    assert ascii_address("x@EXAMPLE.test") == "x@EXAMPLE.test"          # ASCII: unchanged
    assert ascii_address("jürgen@example.test") is None                  # local part: no form


def test_to_lines_encodes_binary_leaves_byte_for_byte():
    import email
    import email.policy

    from chainmail.sevenbit import for_line_store, to_lines
    plain = b"Subject: x\r\n\r\nonly lines\r\n"
    assert to_lines(plain) == plain
    blob = b"\x00\r\r\n\n\xff" * 3
    message = b"Subject: x\r\nContent-Transfer-Encoding: binary\r\n\r\n" + blob
    lines = to_lines(message)
    assert lines.isascii() and b"\0" not in lines
    parsed = email.message_from_bytes(lines, policy=email.policy.default)
    assert parsed.get_payload(decode=True) == blob
    assert for_line_store(message, {"BODY": "8BITMIME"}) == message
    assert for_line_store(message, {"BODY": "binarymime"}) == lines
