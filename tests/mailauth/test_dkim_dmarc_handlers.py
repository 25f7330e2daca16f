"""DKIMHandler and DMARCHandler in a session: messages signed here with dkimpy, a tampered
one, a real message of 2013 (gmail.com), and DMARC's policies, alignment, pct and sp."""

from __future__ import annotations

import random

import dkim
import pytest

from chainmail_plugins.smtp.dkim import DKIMHandler
from chainmail_plugins.smtp.dmarc import DMARCHandler
from chainmail_plugins.smtp.spf import SPFHandler

from .authkit import DATA, GMAIL_2012_KEY, RFC8463_ED25519_KEY, RFC8463_RSA_KEY, Key

CLIENT = "192.0.2.10"


def message(author: str = "alice@news.sender.example", body: str = "hello\r\n") -> bytes:
    return (f"From: Alice <{author}>\r\nTo: bob@local.test\r\nSubject: greetings\r\n"
            f"Message-ID: <1@sender.example>\r\n\r\n{body}").encode()


def signed(key: Key, content: bytes, domain: str = "sender.example", selector: str = "s1") -> bytes:
    return dkim.sign(content, selector.encode(), domain.encode(), key.pem,
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + content


@pytest.fixture(scope="module")
def key():
    return Key()


@pytest.fixture
def zone(auth_dns, key):
    auth_dns.add("s1._domainkey.sender.example", "TXT", key.txt)
    auth_dns.add("s1._domainkey.news.sender.example", "TXT", key.txt)
    auth_dns.add("s1._domainkey.other.example", "TXT", key.txt)
    auth_dns.add("sender.example", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    auth_dns.add("bounce.sender.example", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    auth_dns.add("other.example", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    return auth_dns


def results_field(content: bytes) -> str:
    head = content.split(b"\r\n\r\n", 1)[0].decode()
    fields = [f for f in head.replace("\r\n\t", " ").split("\r\n")
              if f.startswith("Authentication-Results:")]
    return " | ".join(fields)


def deliver(s, sender: str, content: bytes):
    replies = s.send_message(sender, ["bob@local.test"], content)
    return replies[-1]


# -- DKIM ------------------------------------------------------------------------------------

def test_signed_message_passes(open_session, zone, key):
    s = open_session([DKIMHandler])
    assert deliver(s, "a@sender.example", signed(key, message())).code == 250
    [spooled] = s.spooled()
    field = results_field(spooled.content)
    assert field.startswith("Authentication-Results: mx.test; dkim=pass header.d=sender.example")
    assert "header.s=s1" in field and "arc=none" in field
    assert spooled.attributes["chainmail.dkim.results"] == [
        {"result": "pass", "domain": "sender.example", "selector": "s1"}]


def test_tampered_body_fails_and_is_still_accepted(open_session, zone, key):
    tampered = signed(key, message()).replace(b"hello", b"HELLO")
    s = open_session([DKIMHandler])
    assert deliver(s, "a@sender.example", tampered).code == 250
    field = results_field(s.spooled()[0].content)
    assert "dkim=fail" in field and "header.d=sender.example" in field


def test_reject_on_fail(open_session, zone, key):
    tampered = signed(key, message()).replace(b"hello", b"HELLO")
    s = open_session([(DKIMHandler, {"rejectOnFail": "true"})])
    assert str(deliver(s, "a@sender.example", tampered)) == \
        "550 5.7.20 DKIM check failed: no valid signature"


def test_missing_key_is_permerror_and_broken_dns_temperror(open_session, auth_dns, key):
    s = open_session([DKIMHandler])
    assert deliver(s, "a@sender.example", signed(key, message(), selector="gone")).code == 250
    assert "dkim=permerror" in results_field(s.spooled()[0].content)
    auth_dns.servfail("s1._domainkey.sender.example")
    s2 = open_session([(DKIMHandler, {"rejectOnFail": "true"})])
    assert str(deliver(s2, "a@sender.example", signed(key, message()))) == \
        "451 4.7.5 Temporarily rejected: Problem on DKIM key lookup"


def test_unsigned_message_is_dkim_none(open_session, zone):
    s = open_session([DKIMHandler])
    assert deliver(s, "a@sender.example", message()).code == 250
    assert "dkim=none" in results_field(s.spooled()[0].content)


def test_real_gmail_message_of_2013_verifies(open_session, auth_dns):
    auth_dns.add_txt("20120113._domainkey.gmail.com", GMAIL_2012_KEY)
    content = (DATA / "gmail-2013.eml").read_bytes()
    s = open_session([DKIMHandler])
    assert deliver(s, "kaner.mail@gmail.com", content).code == 250
    field = results_field(s.spooled()[0].content)
    assert "dkim=pass header.d=gmail.com" in field and "header.s=20120113" in field


def test_rfc8463_example_rsa_passes_and_ed25519_is_a_permerror_without_pynacl(open_session,
                                                                              auth_dns):
    auth_dns.add("brisbane._domainkey.football.example.com", "TXT", RFC8463_ED25519_KEY)
    auth_dns.add("test._domainkey.football.example.com", "TXT", RFC8463_RSA_KEY)
    auth_dns.add("_dmarc.football.example.com", "TXT", "v=DMARC1; p=reject; adkim=s")
    content = (DATA / "rfc8463-signed.eml").read_bytes()
    s = open_session([DKIMHandler, DMARCHandler])
    assert deliver(s, "joe@elsewhere.example", content).code == 250
    field = results_field(s.spooled()[0].content)
    assert "dkim=permerror" in field and "header.s=brisbane" in field
    assert ("dkim=pass header.d=football.example.com header.i=@football.example.com "
            "header.a=rsa-sha256 header.s=test") in field
    assert "dmarc=pass" in field


def test_arc_chain_sealed_here_passes(open_session, zone, key):
    content = signed(key, message())
    content = b"Authentication-Results: relay.sender.example; dkim=pass header.d=sender.example\r\n" + content
    arc = dkim.arc_sign(content, b"s1", b"other.example", key.pem, b"relay.sender.example")
    s = open_session([DKIMHandler])
    assert deliver(s, "a@sender.example", b"".join(arc) + content).code == 250
    assert "arc=pass" in results_field(s.spooled()[0].content)


# -- DMARC -----------------------------------------------------------------------------------

def dmarc(auth_dns, record: str, name: str = "sender.example"):
    auth_dns.add(f"_dmarc.{name}", "TXT", record)


@pytest.mark.parametrize("policy, reply", [
    ("reject", "550 5.7.1 Rejected by DMARC policy for news.sender.example"),
    ("quarantine", "250"),
    ("none", "250"),
])
def test_unauthenticated_author_gets_the_policy(open_session, zone, policy, reply):
    dmarc(zone, f"v=DMARC1; p={policy}")
    s = open_session([SPFHandler, DKIMHandler, DMARCHandler])
    # SPF passes for another organisation's domain: not aligned with the author's
    result = deliver(s, "a@other.example", message())
    assert str(result).startswith(reply)
    if policy != "reject":
        [spooled] = s.spooled()
        field = results_field(spooled.content)
        assert f"dmarc=fail (p={policy} sp={policy} dis={policy.upper()}) " \
               "header.from=news.sender.example" in field
        assert spooled.attributes["chainmail.dmarc.result"]["disposition"] == policy
        quarantined = spooled.content.startswith(b"X-DMARC-Quarantine: yes\r\n")
        assert quarantined == (policy == "quarantine")
        assert ("chainmail.dmarc.quarantine" in spooled.attributes) == (policy == "quarantine")


def test_relaxed_alignment_passes_on_spf_of_a_subdomain(open_session, zone):
    dmarc(zone, "v=DMARC1; p=reject")
    s = open_session([SPFHandler, DMARCHandler])
    assert deliver(s, "a@bounce.sender.example", message()).code == 250
    assert "dmarc=pass" in results_field(s.spooled()[0].content)


def test_strict_spf_alignment_refuses_a_subdomain(open_session, zone):
    dmarc(zone, "v=DMARC1; p=reject; aspf=s")
    s = open_session([SPFHandler, DMARCHandler])
    assert str(deliver(s, "a@bounce.sender.example", message())) == \
        "550 5.7.1 Rejected by DMARC policy for news.sender.example"


def test_dkim_alignment_relaxed_and_strict(open_session, zone, key):
    dmarc(zone, "v=DMARC1; p=reject")
    s = open_session([DKIMHandler, DMARCHandler])
    assert deliver(s, "a@other.example", signed(key, message())).code == 250
    dmarc(zone, "v=DMARC1; p=reject; adkim=s", name="news.sender.example")
    s2 = open_session([DKIMHandler, DMARCHandler])
    assert str(deliver(s2, "a@other.example", signed(key, message()))).startswith("550 5.7.1")
    s3 = open_session([DKIMHandler, DMARCHandler])
    strict_ok = signed(key, message(), domain="news.sender.example")
    assert deliver(s3, "a@other.example", strict_ok).code == 250


def test_dmarc_checks_spf_and_dkim_itself_when_their_handlers_did_not_run(open_session, zone, key):
    dmarc(zone, "v=DMARC1; p=reject")
    s = open_session([DMARCHandler])
    assert deliver(s, "a@sender.example", message()).code == 250
    field = results_field(s.spooled()[0].content)
    assert "spf=pass smtp.mailfrom=a@sender.example" in field and "dmarc=pass" in field
    s2 = open_session([DMARCHandler])
    assert deliver(s2, "a@other.example", signed(key, message())).code == 250
    assert "dkim=pass header.d=sender.example" in results_field(s2.spooled()[0].content)
    s3 = open_session([DMARCHandler])
    assert deliver(s3, "a@other.example", message()).code == 550


def test_sp_applies_to_subdomains_of_the_organisational_record(open_session, zone):
    dmarc(zone, "v=DMARC1; p=reject; sp=none")
    s = open_session([SPFHandler, DMARCHandler])
    assert deliver(s, "a@other.example", message()).code == 250   # news.sender.example: sp
    s2 = open_session([SPFHandler, DMARCHandler])
    assert deliver(s2, "a@other.example", message("alice@sender.example")).code == 550


def test_pct_zero_applies_the_next_milder_policy(open_session, zone):
    dmarc(zone, "v=DMARC1; p=reject; pct=0")
    s = open_session([SPFHandler, DMARCHandler])
    assert deliver(s, "a@other.example", message()).code == 250
    [spooled] = s.spooled()
    assert spooled.attributes["chainmail.dmarc.result"]["disposition"] == "quarantine"
    assert spooled.content.startswith(b"X-DMARC-Quarantine: yes\r\n")


def test_pct_samples_with_the_handler_random_generator(open_session, zone):
    dmarc(zone, "v=DMARC1; p=reject; pct=50")
    handler = DMARCHandler()
    from chainmail.chain import HandlerConfig
    handler.configure(HandlerConfig("DMARCHandler", {}, None, None, "x.xml", None))
    handler.rng = random.Random(1)
    expected = ["550" if random.Random(1).random() * 100 < 50 else "250"]
    s = open_session([SPFHandler, handler])
    assert str(deliver(s, "a@other.example", message()))[:3] == expected[0]


def test_operator_actions(open_session, zone):
    dmarc(zone, "v=DMARC1; p=reject")
    s = open_session([SPFHandler, (DMARCHandler, {"rejectAction": "quarantine",
                                                  "quarantineHeader": "X-Spam-Flag"})])
    assert deliver(s, "a@other.example", message()).code == 250
    assert s.spooled()[0].content.startswith(b"X-Spam-Flag: yes\r\n")
    s2 = open_session([SPFHandler, (DMARCHandler, {"rejectAction": "none"})])
    assert deliver(s2, "a@other.example", message()).code == 250
    assert not s2.spooled()[0].content.startswith(b"X-")


def test_temporary_dns_error_defers_or_accepts(open_session, zone):
    zone.servfail("_dmarc.news.sender.example")
    s = open_session([DMARCHandler])
    assert str(deliver(s, "a@other.example", message())) == \
        "451 4.7.1 Temporarily rejected: Problem on DMARC lookup for news.sender.example"
    s2 = open_session([(DMARCHandler, {"tempErrorAction": "accept"})])
    assert deliver(s2, "a@other.example", message()).code == 250
    assert "dmarc=temperror" in results_field(s2.spooled()[0].content)


def test_no_record_is_dmarc_none(open_session, zone):
    s = open_session([DMARCHandler])
    assert deliver(s, "a@other.example", message("x@nopolicy.example")).code == 250
    assert "dmarc=none header.from=nopolicy.example" in results_field(s.spooled()[0].content)


def test_two_from_fields_are_refused(open_session, zone):
    two = b"From: a@sender.example\r\n" + message()
    s = open_session([DMARCHandler])
    assert str(deliver(s, "a@sender.example", two)) == \
        "550 5.7.1 Rejected: a single From field with one author domain is required"
    s2 = open_session([(DMARCHandler, {"malformedFromAction": "accept"})])
    assert deliver(s2, "a@sender.example", two).code == 250
    assert "dmarc=permerror" in results_field(s2.spooled()[0].content)


def test_bad_action_is_a_configuration_error(open_session, zone):
    with pytest.raises(Exception, match="rejectAction"):
        open_session([(DMARCHandler, {"rejectAction": "bounce"})])
