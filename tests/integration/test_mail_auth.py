"""Mail authentication on a real ``chainmail run`` over SMTP, with a fake DNS server on
loopback: SPF at MAIL (Received-SPF in the delivered message), DKIM signing in the mailet
container checked with dkimpy, DKIM verification of a real message, DMARC's policies."""

from __future__ import annotations

import re
import smtplib

import dkim
import pytest

from tests.mailauth.authkit import DATA, GMAIL_2012_KEY, AuthDns, Key

BOB = {"bob@local.test": "a long password"}
#: the test client (127.0.0.1) may not relay, so every check applies to it
OUTSIDE = "<authorizedAddresses>192.0.2.0/24</authorizedAddresses>"
SPF = '<handler class="org.apache.james.smtpserver.fastfail.SPFHandler"/>'
DKIM_DMARC = ('<handler class="DKIMHandler"/>'
              '<handler class="DMARCHandler"><quarantineHeader>X-Spam-Flag</quarantineHeader>'
              '</handler>')
MESSAGE = ("From: Alice <alice@sender.example>\r\nTo: bob@local.test\r\n"
           "Subject: greetings\r\n\r\nhello bob\r\n")


def head_of(message: bytes) -> str:
    """The header section, unfolded, whatever the line ends (Maildir files have LF)."""
    text = message.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    return text.split("\n\n", 1)[0].replace("\n\t", " ").replace("\n ", " ")


@pytest.fixture
def dns_server():
    server = AuthDns()
    server.add("sender.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    server.add("forged.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    yield server
    server.close()


@pytest.fixture(scope="module")
def key():
    return Key()


def test_spf_refuses_a_forged_sender_and_stamps_accepted_mail(chainmail_server, dns_server):
    dns_server.servfail("broken.example")
    dns_server.never_answer("silent.example")
    dns_server.add("invalid.example", "TXT", "v=spf1 ip4:127.0.0.300 -all")
    dns_server.add("soft.example", "TXT", "v=spf1 ~all")
    server = chainmail_server(handlers=SPF, options=OUTSIDE, users=BOB, dns=dns_server)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        server.send("a@forged.example", "bob@local.test", MESSAGE)
    assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == (
        554, "5.7.1 Blocked - SPF fail: a@forged.example is not allowed to send from 127.0.0.1")
    with pytest.raises(smtplib.SMTPSenderRefused) as invalid:
        server.send("a@invalid.example", "bob@local.test", MESSAGE)
    assert (invalid.value.smtp_code, invalid.value.smtp_error.decode()) == (
        554, "5.7.1 Block caused by an invalid SPF record")
    for failing in ("a@broken.example", "a@silent.example"):   # SERVFAIL, then no answer
        with pytest.raises(smtplib.SMTPSenderRefused) as deferred:
            server.send(failing, "bob@local.test", MESSAGE)
        assert (deferred.value.smtp_code, deferred.value.smtp_error.decode()) == (
            451, "4.4.3 Temporarily rejected: Problem on SPF lookup")
    server.send("a@soft.example", "bob@local.test", MESSAGE)   # blockSoftFail is false
    server.send("alice@sender.example", "bob@local.test", MESSAGE)
    soft, delivered = sorted(server.wait_for_mailbox("bob@local.test", count=2),
                             key=lambda m: b"Return-Path: <alice@" in m)
    assert "Received-SPF: SoftFail (mx.test: transitioning domain of soft.example" in head_of(soft)
    head = head_of(delivered)
    assert ("Received-SPF: Pass (mx.test: domain of sender.example designates 127.0.0.1 as "
            "permitted sender) client-ip=127.0.0.1; envelope-from=\"alice@sender.example\"; "
            "helo=client.test;") in head


def signing_container(key: Key) -> str:
    return f"""
<processor state="root">
  <mailet match="All" class="org.apache.james.jdkim.mailets.DKIMSign">
    <signatureTemplate>v=1; s=mail; d=local.test; h=from:to:subject; a=rsa-sha256; bh=; b=;</signatureTemplate>
    <privateKey>{key.pem.decode()}</privateKey>
  </mailet>
  <mailet match="All" class="org.apache.james.jdkim.mailets.DKIMVerify"/>
  <mailet match="All" class="MailAttributesToMimeHeaders">
    <simplemapping>jDKIM.AUTHRESULT; X-DKIM-Verify</simplemapping>
  </mailet>
  <mailet match="RecipientIsLocal" class="LocalDelivery"/>
  <mailet match="All" class="Null"/>
</processor>
<processor state="error">
  <mailet match="All" class="ToRepository"><repositoryPath>file://var/mail/error/</repositoryPath></mailet>
</processor>"""


def test_dkim_sign_in_the_container_verifies_with_the_public_key(chainmail_server, dns_server, key):
    dns_server.add("mail._domainkey.local.test", "TXT", key.txt)
    server = chainmail_server(mailetcontainer=signing_container(key), users=BOB, dns=dns_server)
    server.send("bob@local.test", "bob@local.test", MESSAGE)
    [delivered] = server.wait_for_mailbox("bob@local.test")
    assert dkim.verify(delivered, dnsfunc=key.dnsfunc("mail._domainkey.local.test"))
    head = head_of(delivered)
    assert "X-DKIM-Verify: pass (identity @local.test)" in head
    assert "Authentication-Results: mx.test; dkim=pass header.d=local.test" in head


def test_real_world_signature_is_verified_over_smtp(chainmail_server, dns_server):
    dns_server.add_txt("20120113._domainkey.gmail.com", GMAIL_2012_KEY)
    server = chainmail_server(handlers=DKIM_DMARC, options=OUTSIDE, users=BOB, dns=dns_server)
    # the file has LF line ends; on the wire they are CRLF (relaxed canonicalisation)
    content = re.sub(rb"\r?\n", b"\r\n", (DATA / "gmail-2013.eml").read_bytes())
    server.send("kaner.mail@gmail.com", "bob@local.test", content)
    [delivered] = server.wait_for_mailbox("bob@local.test")
    head = head_of(delivered)
    assert "dkim=pass header.d=gmail.com" in head and "header.s=20120113" in head
    assert "dmarc=none header.from=strace.org" in head


def test_dmarc_reject_and_quarantine_over_smtp(chainmail_server, dns_server, key):
    dns_server.add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.quarantined.example", "TXT", "v=DMARC1; p=quarantine")
    dns_server.add("s1._domainkey.sender.example", "TXT", key.txt)
    server = chainmail_server(handlers=SPF + DKIM_DMARC, options=OUTSIDE, users=BOB,
                              dns=dns_server)
    # SPF passes for an unrelated envelope domain: not aligned with the From domain
    dns_server.add("bulk.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        server.send("list@bulk.example", "bob@local.test", MESSAGE)
    assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == (
        550, "5.7.1 Rejected by DMARC policy for sender.example")
    # the same message signed by the author's domain passes
    signed = dkim.sign(MESSAGE.encode(), b"s1", b"sender.example", key.pem) + MESSAGE.encode()
    server.send("list@bulk.example", "bob@local.test", signed)
    quarantined = MESSAGE.replace("sender.example", "quarantined.example")
    server.send("list@bulk.example", "bob@local.test", quarantined)
    first, second = server.wait_for_mailbox("bob@local.test", count=2)
    by_from = {"quarantined.example" in head_of(m): head_of(m) for m in (first, second)}
    passed = by_from[False]
    assert "dkim=pass header.d=sender.example" in passed and "dmarc=pass" in passed
    assert "X-Spam-Flag" not in passed
    assert "\nX-Spam-Flag: yes\n" in by_from[True]
    assert "dmarc=fail (p=quarantine sp=quarantine dis=QUARANTINE)" in by_from[True]
