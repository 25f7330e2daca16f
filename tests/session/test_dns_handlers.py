"""James's DNS fast-fail handlers in a session, every question answered by a FakeDns on
loopback through the server's own resolver (``dnsservice.xml`` beside the configuration):
DNSRBLHandler, ResolvableEhloHeloHandler, ReverseEqualsEhloHeloHandler,
ValidSenderDomainHandler and URIRBLHandler, their replies, exemptions and DNS failures."""

from __future__ import annotations

import base64
import itertools
import quopri

import pytest

from chainmail.config.errors import ConfigError
from chainmail.verdict import HookResult

OUTSIDE = "192.0.2.10"            # not in authorizedAddresses (127.0.0.0/8)
OUTSIDE_RBL = "10.2.0.192"        # its reversed octets
RBL_TEXT = ("554 5.7.1 Rejected: unauthenticated e-mail from /192.0.2.10 is restricted.  "
            "Contact the postmaster for details.")
_dirs = itertools.count()


class AcceptSender:
    """Accepts every MAIL at once (later MAIL hooks skipped), so that RCPT hooks are reached."""

    parameters = ()

    def on_mail(self):
        return HookResult.ok()


@pytest.fixture
def session(chainmail_session, fake_dns, tmp_path):
    """``session(handlers, dns_timeout=2, cache=0, **settings)``: a session whose server asks
    ``fake_dns`` (its conf directory holds the dnsservice.xml)."""
    def open_session(handlers, *, dns_timeout=2, cache=0, **settings):
        base = tmp_path / f"s{next(_dirs)}"
        (base / "conf").mkdir(parents=True)
        (base / "conf" / "dnsservice.xml").write_text(
            f"<dnsservice><servers><server>127.0.0.1:{fake_dns.port}</server></servers>"
            f"<autodiscover>false</autodiscover><timeout>{dns_timeout}</timeout>"
            f"<maxcachesize>{cache}</maxcachesize></dnsservice>")
        settings.setdefault("remote_ip", OUTSIDE)
        return chainmail_session(handlers, var=base / "var", **settings)
    return open_session


def handler(name: str, body: str = "") -> str:
    return f'<handler class="org.apache.james.smtpserver.fastfail.{name}">{body}</handler>'


def rbl(*, black=("bl.test.",), white=(), detail=None) -> str:
    zones = "".join(f"<whitelist>{z}</whitelist>" for z in white)
    zones += "".join(f"<blacklist>{z}</blacklist>" for z in black)
    extra = f"<getDetail>{detail}</getDetail>" if detail is not None else ""
    return handler("DNSRBLHandler", f"<rblservers>{zones}</rblservers>{extra}")


# -- DNSRBLHandler ------------------------------------------------------------------------------
def test_listed_client_is_refused_at_mail(session, fake_dns):
    fake_dns.add(f"{OUTSIDE_RBL}.bl.test", "A", "127.0.0.2")
    s = session(rbl(), helo="client.example")
    assert str(s.mail("a@remote.example")) == RBL_TEXT
    assert s.rcpt("bob@local.test").code == 503   # no sender
    assert fake_dns.asked(f"{OUTSIDE_RBL}.bl.test", "A") == 1


def test_listed_client_is_refused_at_rcpt_too(session, fake_dns):
    fake_dns.add(f"{OUTSIDE_RBL}.bl.test", "A", "127.0.0.2")
    from chainmail_plugins.smtp.dnsrbl import DNSRBLHandler
    s = session([AcceptSender, (DNSRBLHandler, {"rblservers.blacklist": "bl.test"})],
                helo="client.example")
    assert s.mail("a@remote.example").code == 250
    assert str(s.rcpt("postmaster@local.test")) == RBL_TEXT


def test_unlisted_client_passes_and_is_looked_up_once_per_connection(session, fake_dns):
    s = session(rbl(black=("bl.test", "other.test")), helo="client.example")
    for n in range(2):
        assert s.mail("a@remote.example").code == 250
        assert s.rcpt("bob@local.test").code == 250
        assert s.data(f"Subject: {n}\r\n\r\nbody\r\n").code == 250
    assert fake_dns.asked(f"{OUTSIDE_RBL}.bl.test") == 1
    assert fake_dns.asked(f"{OUTSIDE_RBL}.other.test") == 1
    assert len(s.spooled()) == 2


def test_second_blacklist_lists_and_get_detail_gives_the_txt_record(session, fake_dns):
    name = f"{OUTSIDE_RBL}.second.test"
    fake_dns.add(name, "A", "127.0.0.4").add(name, "TXT", "Listed: see https://second.test/q")
    s = session(rbl(black=("first.test", "second.test"), detail="true"), helo="c.example")
    assert str(s.mail("a@remote.example")) == "554 5.7.1 Listed: see https://second.test/q"


def test_get_detail_without_a_txt_record_gives_the_usual_text(session, fake_dns):
    fake_dns.add(f"{OUTSIDE_RBL}.bl.test", "A", "127.0.0.2")
    s = session(rbl(detail="true"), helo="c.example")
    assert str(s.mail("a@remote.example")) == RBL_TEXT


def test_whitelist_hit_is_not_listed_and_the_blacklist_is_not_asked(session, fake_dns):
    fake_dns.add(f"{OUTSIDE_RBL}.bl.test", "A", "127.0.0.2")
    fake_dns.add(f"{OUTSIDE_RBL}.wl.test", "A", "127.0.0.2")
    s = session(rbl(white=("wl.test",)), helo="c.example")
    assert s.mail("a@remote.example").code == 250
    assert fake_dns.asked(f"{OUTSIDE_RBL}.bl.test") == 0


def test_whitelist_miss_goes_on_to_the_blacklist(session, fake_dns):
    fake_dns.add(f"{OUTSIDE_RBL}.bl.test", "A", "127.0.0.2")
    s = session(rbl(white=("wl.test",)), helo="c.example")
    assert str(s.mail("a@remote.example")) == RBL_TEXT
    assert fake_dns.asked(f"{OUTSIDE_RBL}.wl.test") == 1


def test_relaying_and_authenticated_clients_are_never_looked_up(session, fake_dns):
    fake_dns.add(f"{OUTSIDE_RBL}.bl.test", "A", "127.0.0.2")
    fake_dns.add("1.0.0.127.bl.test", "A", "127.0.0.2")
    relaying = session(rbl(), remote_ip="127.0.0.1", helo="c.example")
    assert relaying.mail("a@remote.example").code == 250
    authenticated = session(rbl(), auth_user="bob@local.test", helo="c.example")
    assert authenticated.mail("bob@local.test").code == 250
    assert authenticated.rcpt("bob@local.test").code == 250
    assert fake_dns.queries == []


def test_ipv6_client_is_looked_up_by_reversed_nibbles(session, fake_dns):
    nibbles = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    fake_dns.add(f"{nibbles}.bl.test", "A", "127.0.0.2")
    s = session(rbl(), remote_ip="2001:db8::7", helo="c.example")
    assert str(s.mail("a@remote.example")) == (
        "554 5.7.1 Rejected: unauthenticated e-mail from /2001:db8::7 is restricted.  "
        "Contact the postmaster for details.")


def test_servfail_and_timeout_count_as_not_listed(session, fake_dns):
    fake_dns.servfail(f"{OUTSIDE_RBL}.broken.test").never_answer(f"{OUTSIDE_RBL}.slow.test")
    s = session(rbl(black=("broken.test", "slow.test")), dns_timeout=0.3, helo="c.example")
    assert s.mail("a@remote.example").code == 250
    assert fake_dns.asked(f"{OUTSIDE_RBL}.slow.test") >= 1


def test_rbl_needs_a_zone(session):
    with pytest.raises(ConfigError, match="at least one <rblservers><whitelist> or"):
        session(handler("DNSRBLHandler", "<getDetail>true</getDetail>"))
    with pytest.raises(ConfigError, match="getDetail"):
        session(rbl(detail="maybe"))


# -- ResolvableEhloHeloHandler -------------------------------------------------------------------
RESOLVABLE = handler("ResolvableEhloHeloHandler")


def test_unresolvable_helo_is_refused_at_mail_and_rcpt(session, fake_dns):
    s = session(RESOLVABLE, helo="nowhere.example")
    assert str(s.mail("a@remote.example")) == \
        "501 5.5.4 Provided EHLO/HELO nowhere.example can not resolved."
    from chainmail_plugins.smtp.helo import ResolvableEhloHeloHandler
    s = session([AcceptSender, ResolvableEhloHeloHandler])
    s.helo("nowhere.example")
    assert s.mail("a@remote.example").code == 250
    assert str(s.rcpt("bob@local.test")) == \
        "501 5.5.4 Provided EHLO/HELO nowhere.example can not resolved."


def test_rset_does_not_lift_the_refusal_but_a_resolvable_greeting_does(session, fake_dns):
    fake_dns.add("client.example", "A", "192.0.2.10")
    s = session(RESOLVABLE, helo="nowhere.example")
    assert s.mail("a@remote.example").code == 501
    s.rset()
    assert s.mail("a@remote.example").code == 501
    assert fake_dns.asked("nowhere.example", "A") == 1   # one lookup per greeting
    s.ehlo("client.example")
    assert s.mail("a@remote.example").code == 250
    assert s.rcpt("bob@local.test").code == 250


def test_aaaa_only_names_and_address_literals_resolve(session, fake_dns):
    fake_dns.add("v6only.example", "AAAA", "2001:db8::1")
    assert session(RESOLVABLE, helo="v6only.example").mail("a@remote.example").code == 250
    assert session(RESOLVABLE, helo="[192.0.2.10]").mail("a@remote.example").code == 250
    s = session(RESOLVABLE, helo="[IPv6:2001:db8::5]")
    assert s.mail("a@remote.example").code == 250
    assert ("v6only.example", "AAAA") in fake_dns.queries
    assert not [q for q in fake_dns.queries if "192.0.2.10" in q[0] or "2001" in q[0]]


def test_relaying_and_authenticated_clients_are_exempt_unless_asked(session, fake_dns):
    relaying = dict(remote_ip="127.0.0.1", helo="nowhere.example")
    assert session(RESOLVABLE, **relaying).mail("a@remote.example").code == 250
    checked = handler("ResolvableEhloHeloHandler", "<checkAuthNetworks>true</checkAuthNetworks>")
    assert session(checked, **relaying).mail("a@remote.example").code == 501
    auth = dict(auth_user="bob@local.test", helo="nowhere.example")
    assert session(RESOLVABLE, **auth).mail("bob@local.test").code == 250
    checked = handler("ResolvableEhloHeloHandler", "<checkAuthUsers>true</checkAuthUsers>")
    assert session(checked, **auth).mail("bob@local.test").code == 501


def test_dns_failure_on_the_helo_name_is_temporary(session, fake_dns):
    fake_dns.servfail("broken.example")
    s = session(RESOLVABLE, helo="broken.example")
    assert str(s.mail("a@remote.example")) == \
        "451 4.4.3 Temporarily rejected: Problem on DNS lookup of broken.example"
    fake_dns.never_answer("slow.example")
    s = session(RESOLVABLE, helo="slow.example", dns_timeout=0.3)
    assert s.mail("a@remote.example").code == 451


def test_bad_boolean_is_a_configuration_error(session):
    with pytest.raises(ConfigError, match="checkAuthNetworks"):
        session(handler("ResolvableEhloHeloHandler", "<checkAuthNetworks>yes</checkAuthNetworks>"))


# -- ReverseEqualsEhloHeloHandler ----------------------------------------------------------------
REVERSE = handler("ReverseEqualsEhloHeloHandler")


def test_helo_equal_to_the_confirmed_reverse_name_passes(session, fake_dns):
    fake_dns.add(OUTSIDE, "PTR", "mail.client.example").add("mail.client.example", "A", OUTSIDE)
    assert session(REVERSE, helo="Mail.Client.Example").mail("a@remote.example").code == 250
    s = session(REVERSE, helo="other.example")
    assert str(s.mail("a@remote.example")) == \
        "501 5.5.4 Provided EHLO/HELO other.example can not resolved."


def test_reverse_name_that_does_not_resolve_back_does_not_count(session, fake_dns):
    fake_dns.add(OUTSIDE, "PTR", "forged.example").add("forged.example", "A", "192.0.2.99")
    assert session(REVERSE, helo="forged.example").mail("a@remote.example").code == 501
    # without a confirmed name the client must greet with its address
    assert session(REVERSE, helo=f"[{OUTSIDE}]").mail("a@remote.example").code == 250


def test_client_without_reverse_name(session, fake_dns):
    assert session(REVERSE, helo="client.example").mail("a@remote.example").code == 501
    assert session(REVERSE, helo=OUTSIDE).mail("a@remote.example").code == 250


def test_reverse_lookup_timeout_is_temporary(session, fake_dns):
    fake_dns.never_answer(OUTSIDE)
    s = session(REVERSE, helo="client.example", dns_timeout=0.3)
    assert str(s.mail("a@remote.example")) == \
        "451 4.4.3 Temporarily rejected: Problem on DNS lookup of client.example"


# -- ValidSenderDomainHandler --------------------------------------------------------------------
SENDER_DOMAIN = handler("ValidSenderDomainHandler")


def test_sender_domain_with_mx_or_address_passes(session, fake_dns):
    fake_dns.add("mx.example", "MX", (10, "in.mx.example")).add("a.example", "A", "192.0.2.1")
    s = session(SENDER_DOMAIN, helo="c.example")
    assert s.mail("x@mx.example").code == 250
    s.rset()
    assert s.mail("x@a.example").code == 250
    s.rset()
    assert s.mail("").code == 250                     # the null sender is not checked


def test_sender_domain_without_mx_or_address_is_refused(session, fake_dns):
    fake_dns.add("nullmx.example", "MX", (0, ".")).add("textonly.example", "TXT", "v=spf1 -all")
    s = session(SENDER_DOMAIN, helo="c.example")
    assert str(s.mail("x@nowhere.example")) == \
        "501 5.1.7 sender <x@nowhere.example> contains a domain with no valid MX records"
    assert s.rcpt("bob@local.test").code == 503
    assert s.mail("x@nullmx.example").code == 501
    assert s.mail("x@textonly.example").code == 501


def test_sender_domain_dns_failure_is_temporary(session, fake_dns):
    fake_dns.servfail("broken.example")
    s = session(SENDER_DOMAIN, helo="c.example")
    assert str(s.mail("x@broken.example")) == \
        "451 4.4.3 Temporarily rejected: Problem on DNS lookup of broken.example"


def test_sender_domain_exemptions(session, fake_dns):
    relaying = session(SENDER_DOMAIN, remote_ip="127.0.0.1", helo="c.example")
    assert relaying.mail("x@nowhere.example").code == 250
    checked = handler("ValidSenderDomainHandler", "<checkAuthNetworks>true</checkAuthNetworks>")
    assert session(checked, remote_ip="127.0.0.1", helo="c").mail("x@nowhere.example").code == 501
    assert session(SENDER_DOMAIN, auth_user="bob@local.test", helo="c").mail(
        "x@nowhere.example").code == 250


# -- URIRBLHandler -------------------------------------------------------------------------------
def uri(*zones: str, detail: str | None = None) -> str:
    servers = "".join(f"<server>{z}</server>" for z in zones)
    extra = f"<getDetail>{detail}</getDetail>" if detail is not None else ""
    return handler("URIRBLHandler", f"<uriRblServers>{servers}</uriRblServers>{extra}")


def mime(text: str, html: str) -> str:
    b64 = base64.encodebytes(text.encode()).decode()
    qp = quopri.encodestring(html.encode()).decode()
    return ("From: a@remote.example\r\nSubject: offer\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
            "--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp}\r\n--b1--\r\n")


def send(s, content: str):
    assert s.mail("a@remote.example").code == 250
    assert s.rcpt("bob@local.test").code == 250
    return s.data(content)


def test_listed_domain_in_plain_text_is_refused(session, fake_dns):
    fake_dns.add("spam.example.uri.test", "A", "127.0.0.2")
    s = session(uri("uri.test."), helo="c.example")
    reply = send(s, "Subject: hi\r\n\r\nvisit http://www.shop.spam.example/buy now\r\n")
    assert str(reply) == "554 5.7.0 Rejected: message contains domain spam.example listed by uri.test"
    assert s.spooled() == []


def test_listed_domain_in_a_base64_part_is_found(session, fake_dns):
    fake_dns.add("spam.example.uri.test", "A", "127.0.0.2")
    s = session(uri("uri.test"), helo="c.example")
    reply = send(s, mime("go to https://spam.example/x", "<p>nothing here</p>"))
    assert reply.code == 554 and "spam.example" in reply.text


def test_listed_domain_in_a_quoted_printable_html_part_is_found(session, fake_dns):
    fake_dns.add("spam-shop.co.uk.uri.test", "A", "127.0.0.2")
    s = session(uri("uri.test"), helo="c.example")
    # a long line (soft line breaks) and an entity inside the host name
    html = '<a href="http://click.spam-shop&#46;co.uk/?id=1">click</a>' + " x" * 60 + " end"
    reply = send(s, mime("clean text", html))
    assert str(reply) == \
        "554 5.7.0 Rejected: message contains domain spam-shop.co.uk listed by uri.test"
    assert ("example.co.uk.uri.test", "A") not in fake_dns.queries


def test_get_detail_adds_the_txt_record(session, fake_dns):
    fake_dns.add("spam.example.uri.test", "A", "127.0.0.2")
    fake_dns.add("spam.example.uri.test", "TXT", "Blocked, see http://uri.test/spam.example")
    s = session(uri("other.test", "uri.test", detail="true"), helo="c.example")
    reply = send(s, "Subject: hi\r\n\r\nmail me: sales@spam.example\r\n")
    assert str(reply) == ("554 5.7.0 Rejected: message contains domain spam.example listed by "
                          "uri.test . Details: Blocked, see http://uri.test/spam.example")


def test_clean_message_is_accepted_after_registered_domain_lookups(session, fake_dns):
    s = session(uri("uri.test"), helo="c.example")
    body = ("Subject: hi\r\n\r\nhttp://www.a.example.org/ www2.b.example.net "
            "ftp://files.c.example.com/x http://192.0.2.44/ and user@mail.d.example\r\n")
    assert send(s, body).code == 250
    asked = {n for n, t in fake_dns.queries if t == "A"}
    assert asked == {"example.org.uri.test", "example.net.uri.test", "example.com.uri.test",
                     "44.2.0.192.uri.test", "d.example.uri.test"}
    assert len(s.spooled()) == 1


def test_lookups_are_capped_per_message(session, fake_dns):
    from chainmail_plugins.smtp.urirbl import MAX_DOMAINS
    s = session(uri("uri.test"), helo="c.example")
    links = " ".join(f"http://host.d{i}.example/" for i in range(MAX_DOMAINS + 30))
    assert send(s, f"Subject: many\r\n\r\n{links}\r\n").code == 250
    assert len(fake_dns.queries) == MAX_DOMAINS


def test_failing_lookups_count_as_not_listed(session, fake_dns):
    fake_dns.servfail("broken.example.uri.test").never_answer("slow.example.uri.test")
    s = session(uri("uri.test"), helo="c.example", dns_timeout=0.3)
    assert send(s, "Subject: x\r\n\r\nhttp://broken.example/ http://slow.example/\r\n").code == 250


def test_uri_rbl_needs_a_server(session):
    with pytest.raises(ConfigError, match="at least one <uriRblServers><server>"):
        session(handler("URIRBLHandler", "<getDetail>false</getDetail>"))
    with pytest.raises(ConfigError, match="action"):
        session(handler("URIRBLHandler", "<action>junkScore</action>"
                                         "<uriRblServers><server>u.test</server></uriRblServers>"))


# -- time budget ---------------------------------------------------------------------------------
def test_lookups_answer_within_the_hook_budget(session, fake_dns):
    """A DNS server slower than ``handlerTimeout``: each handler still gives its own answer
    (not listed, or 451 4.4.3) instead of the generic 451 4.3.0 of an overrun hook."""
    fake_dns.never_answer(f"{OUTSIDE_RBL}.bl.test", "slow.example")
    budget = dict(options="<handlerTimeout>1</handlerTimeout>", dns_timeout=5)
    assert session(rbl(), helo="c.example", **budget).mail("a@remote.example").code == 250
    s = session(RESOLVABLE, helo="slow.example", **budget)
    assert str(s.mail("a@remote.example")) == \
        "451 4.4.3 Temporarily rejected: Problem on DNS lookup of slow.example"
    s = session(SENDER_DOMAIN, helo="c.example", **budget)
    assert str(s.mail("a@slow.example")) == \
        "451 4.4.3 Temporarily rejected: Problem on DNS lookup of slow.example"
    s = session(uri("uri.test"), helo="c.example", **budget)
    fake_dns.never_answer("slow.example.uri.test")
    assert send(s, "Subject: x\r\n\r\nhttp://www.slow.example/\r\n").code == 250
