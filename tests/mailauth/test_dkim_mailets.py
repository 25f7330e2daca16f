"""James's DKIMSign and DKIMVerify mailets and ARCSign on the test kit's mailet harness; the
signatures made are checked by dkimpy in the test with the public key."""

from __future__ import annotations

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from chainmail.config.errors import ConfigError
from chainmail.testing.conf import dnsservice_xml
from chainmail_plugins.mailets.dkim import ARCSign, DKIMSign, DKIMVerify

from .authkit import Key

TEMPLATE = "v=1; s=selector; d=example.com; h=from:to:received:received; a=rsa-sha256; bh=; b=;"
MESSAGE = (b"Received: from a\r\nReceived: from b\r\nFrom: alice@example.com\r\n"
           b"To: bob@local.test\r\nSubject: hi\r\n\r\nhello\r\n")


@pytest.fixture(scope="module")
def key():
    return Key()


def test_sign_with_james_template_verifies_with_dkimpy(mailet_harness, key):
    signer = mailet_harness.mailet(DKIMSign, {"signatureTemplate": TEMPLATE,
                                              "privateKey": key.pem.decode()})
    run = mailet_harness.service(signer, mailet_harness.mail(MESSAGE))
    content = run.mail.content
    assert content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=example.com;")
    assert content.endswith(MESSAGE)
    d = dkim.DKIM(content)
    assert d.verify(dnsfunc=key.dnsfunc("selector._domainkey.example.com"))
    assert d.include_headers == (b"from", b"to", b"received", b"received")
    # a changed signed field breaks it
    changed = content.replace(b"Received: from b", b"Received: from c")
    assert not dkim.verify(changed, dnsfunc=key.dnsfunc("selector._domainkey.example.com"))


def test_sign_with_key_file_password_and_mail_from_domain(mailet_harness, key):
    encrypted = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    path = mailet_harness.conf / "dkim.pem"
    path.write_bytes(encrypted)
    signer = mailet_harness.mailet(DKIMSign, {
        "signatureTemplate": "v=1; s=sel; d=%MAIL_FROM; h=from:subject; c=relaxed/relaxed",
        "privateKeyFilepath": "file://conf/dkim.pem", "privateKeyPassword": "secret",
        "defaultDomain": "fallback.example"})
    mail = mailet_harness.mail(MESSAGE, sender="alice@sender.example")
    content = mailet_harness.service(signer, mail).mail.content
    assert dkim.verify(content, dnsfunc=key.dnsfunc("sel._domainkey.sender.example"))
    bounce = mailet_harness.service(signer, mailet_harness.mail(MESSAGE, sender="")).mail.content
    assert dkim.verify(bounce, dnsfunc=key.dnsfunc("sel._domainkey.fallback.example"))


@pytest.mark.parametrize("params, names", [
    ({"signatureTemplate": TEMPLATE}, "privateKey"),
    ({"signatureTemplate": "v=1; s=x; h=from", "privateKey": "x"}, "signatureTemplate"),
    ({"signatureTemplate": "v=1; s=x; d=%MAIL_FROM; h=from"}, "defaultDomain"),
    ({"signatureTemplate": TEMPLATE, "privateKey": "not a key"}, "privateKey"),
    ({"signatureTemplate": TEMPLATE.replace("from:", ""), "privateKey": "x"}, "signatureTemplate"),
])
def test_configuration_errors_name_the_parameter(mailet_harness, params, names):
    with pytest.raises(ConfigError, match=names):
        mailet_harness.mailet(DKIMSign, params)


def verifier(harness, fake):
    (harness.conf / "dnsservice.xml").write_text(dnsservice_xml(fake.port))
    return harness.mailet(DKIMVerify)


def test_verify_sets_james_attributes(mailet_harness, auth_dns, key):
    auth_dns.add("s1._domainkey.example.com", "TXT", key.txt)
    mailet = verifier(mailet_harness, auth_dns)
    good = dkim.sign(MESSAGE, b"s1", b"example.com", key.pem) + MESSAGE
    mail = mailet_harness.service(mailet, mailet_harness.mail(good)).mail
    assert mail.attributes["jDKIM.AUTHRESULT"] == "pass (identity @example.com)"
    assert mail.attributes["jDKIM.AUTHRESULT.FLAG"] is True
    assert mail.get_header("Authentication-Results").startswith(
        "mx.test; dkim=pass header.d=example.com")

    bad = mailet_harness.service(mailet, mailet_harness.mail(good.replace(b"hello", b"bye"))).mail
    assert bad.attributes["jDKIM.AUTHRESULT"].startswith("fail (identity@example.com:")
    assert bad.attributes["jDKIM.AUTHRESULT.FLAG"] is False

    none = mailet_harness.service(mailet, mailet_harness.mail(MESSAGE)).mail
    assert none.attributes["jDKIM.AUTHRESULT"] == "neutral (no signatures)"
    assert "jDKIM.AUTHRESULT.FLAG" not in none.attributes


def test_arc_sign_seals_what_this_server_found(mailet_harness, key):
    sealer = mailet_harness.mailet(ARCSign, {"selector": "arc", "domain": "mx.example",
                                             "privateKey": key.pem.decode()})
    results = b"Authentication-Results: mx.test; dkim=pass header.d=example.com; arc=none\r\n"
    sealed = mailet_harness.service(sealer, mailet_harness.mail(results + MESSAGE)).mail.content
    assert sealed.startswith(b"ARC-Seal: i=1;")
    cv, _, reason = dkim.arc_verify(sealed, dnsfunc=key.dnsfunc("arc._domainkey.mx.example"))
    assert cv == dkim.CV_Pass, reason
    # without this server's results there is nothing to seal
    plain = mailet_harness.service(sealer, mailet_harness.mail(MESSAGE)).mail.content
    assert plain == MESSAGE
