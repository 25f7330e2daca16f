"""SPFHandler in a session: each RFC 7208 result, James's replies, the exemptions and the
Received-SPF field, against a fake DNS server."""

from __future__ import annotations

import pytest

from chainmail_plugins.smtp.spf import SPFHandler

CLIENT = "192.0.2.10"
MESSAGE = "From: a@sender.example\r\nSubject: x\r\n\r\nbody\r\n"


@pytest.fixture
def spf_zone(auth_dns):
    auth_dns.add("pass.example", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    auth_dns.add("fail.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    auth_dns.add("soft.example", "TXT", "v=spf1 ~all")
    auth_dns.add("neutral.example", "TXT", "v=spf1 ?all")
    auth_dns.add("perm.example", "TXT", "v=spf1 ip4:192.0.2.300 -all")
    auth_dns.add("exp.example", "TXT", "v=spf1 -all exp=why.exp.example")
    auth_dns.add("why.exp.example", "TXT", "%{i} may not send for %{d}")
    auth_dns.add("inc.example", "TXT", "v=spf1 include:pass.example mx -all")
    auth_dns.add("mx.example", "TXT", "v=spf1 mx -all")
    auth_dns.add("mx.example", "MX", (10, "out.mx.example"))
    auth_dns.add("out.mx.example", "A", CLIENT)
    auth_dns.add("loop.example", "TXT", "v=spf1 include:loop.example -all")
    auth_dns.add("helo.example", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    auth_dns.servfail("broken.example")
    return auth_dns


@pytest.mark.parametrize("sender, reply", [
    ("a@pass.example", "250 2.1.0 Sender <a@pass.example> OK"),
    ("a@inc.example", "250 2.1.0 Sender <a@inc.example> OK"),
    ("a@mx.example", "250 2.1.0 Sender <a@mx.example> OK"),
    ("a@neutral.example", "250 2.1.0 Sender <a@neutral.example> OK"),
    ("a@none.example", "250 2.1.0 Sender <a@none.example> OK"),
    ("a@soft.example", "250 2.1.0 Sender <a@soft.example> OK"),
    ("a@fail.example",
     f"554 5.7.1 Blocked - SPF fail: a@fail.example is not allowed to send from {CLIENT}"),
    ("a@exp.example", f"554 5.7.1 Blocked - see: {CLIENT} may not send for exp.example"),
    ("a@perm.example", "554 5.7.1 Block caused by an invalid SPF record"),
    ("a@loop.example", "554 5.7.1 Block caused by an invalid SPF record"),
    ("a@broken.example", "451 4.4.3 Temporarily rejected: Problem on SPF lookup"),
])
def test_each_result_gets_james_reply(open_session, spf_zone, sender, reply):
    s = open_session([SPFHandler])
    assert str(s.mail(sender)) == reply


def test_block_soft_fail_and_not_perm_error(open_session, spf_zone):
    s = open_session([(SPFHandler, {"blockSoftFail": "true", "blockPermError": "false"})])
    assert str(s.mail("a@soft.example")).startswith("554 5.7.1 Blocked - SPF softfail: ")
    s.rset()
    assert s.mail("a@perm.example").code == 250


def test_accepted_mail_carries_received_spf_and_attributes(open_session, spf_zone):
    s = open_session([SPFHandler])
    replies = s.send_message("a@pass.example", ["u@local.test"], MESSAGE)
    assert replies[-1].code == 250
    [spooled] = s.spooled()
    first = spooled.content.split(b"\r\n", 1)[0].decode()
    assert first.startswith("Received-SPF: Pass (mx.test: domain of pass.example designates "
                            f"{CLIENT} as permitted sender) client-ip={CLIENT}; ")
    assert "identity=mailfrom" in first
    attributes = spooled.attributes
    assert attributes["org.apache.james.spf.header"] == first.split(": ", 1)[1]
    assert attributes["chainmail.spf.result"] == {"result": "pass", "domain": "pass.example",
                                                  "identity": "mailfrom"}


def test_null_sender_checks_the_helo_domain(open_session, spf_zone):
    s = open_session([SPFHandler], helo="helo.example")
    assert s.mail("").code == 250
    s.rset()
    s2 = open_session([SPFHandler], helo="fail.example")
    reply = s2.mail("")
    assert str(reply) == ("554 5.7.1 Blocked - SPF fail: postmaster@fail.example is not "
                          f"allowed to send from {CLIENT}")


def test_relaying_and_authenticated_clients_are_not_checked(open_session, spf_zone):
    s = open_session([SPFHandler], relaying_allowed=True)
    assert s.mail("a@fail.example").code == 250
    s2 = open_session([SPFHandler], auth_user="bob@local.test")
    assert s2.mail("a@fail.example").code == 250
    assert ("fail.example", "TXT") not in spf_zone.queries


def test_lookup_limit_is_pyspf_s(open_session, auth_dns):
    # eleven include: mechanisms: more than RFC 7208 §4.6.4's ten DNS lookups
    auth_dns.add("many.example", "TXT",
                 "v=spf1 " + " ".join(f"include:i{n}.example" for n in range(11)) + " -all")
    for n in range(11):
        auth_dns.add(f"i{n}.example", "TXT", "v=spf1 ip4:198.51.100.1 ?all")
    s = open_session([SPFHandler])
    assert str(s.mail("a@many.example")) == "554 5.7.1 Block caused by an invalid SPF record"


def test_bad_parameter_value_is_a_configuration_error(open_session, spf_zone):
    with pytest.raises(Exception, match="blockSoftFail"):
        open_session([(SPFHandler, {"blockSoftFail": "maybe"})])
