"""James's DNS fast-fail handlers on a real ``chainmail run``, with real clients (smtplib from
several loopback source addresses, swaks, a raw socket) and the test kit's FakeDns answering
A, MX, TXT and PTR questions, NXDOMAIN, SERVFAIL and silence."""

from __future__ import annotations

import base64
import quopri
import smtplib
import socket
import subprocess
import time

import pytest

from ..conftest import need

PASSWORD = "a long enough password"
#: only 127.0.0.1 may relay: the other loopback addresses are outside clients
OPTIONS = ("<authorizedAddresses>127.0.0.1/32</authorizedAddresses>"
           "<ioWorkerCount>1</ioWorkerCount>")
AUTH_OPTIONS = OPTIONS + "<auth><announce>always</announce><requireSSL>false</requireSSL></auth>"
CORE_WITH_AUTH = "org.apache.james.smtpserver.CoreCmdHandlerLoader"


def handler(name: str, body: str = "") -> str:
    return f'<handler class="org.apache.james.smtpserver.fastfail.{name}">{body}</handler>'


def quick_dns(port: int, timeout: float = 0.5) -> dict[str, str]:
    """A dnsservice.xml on the FakeDns with a short timeout, so that silence fails fast."""
    return {"dnsservice.xml": f"<dnsservice><servers><server>127.0.0.1:{port}</server></servers>"
                              f"<autodiscover>false</autodiscover><timeout>{timeout}</timeout>"
                              "<maxcachesize>0</maxcachesize></dnsservice>"}


def client(server, source: str, helo: str = "client.test") -> smtplib.SMTP:
    c = smtplib.SMTP(server.host, server.port, local_hostname=helo, timeout=30,
                     source_address=(source, 0))
    c.ehlo()
    return c


MESSAGE = "From: a@remote.example\r\nSubject: hello\r\n\r\nhello bob\r\n"
RBL = handler("DNSRBLHandler", "<rblservers><whitelist>wl.test.</whitelist>"
                               "<blacklist>bl.test.</blacklist></rblservers>")


# -- DNSRBLHandler ------------------------------------------------------------------------------
def test_rbl_listed_unlisted_whitelisted_and_relaying_clients(chainmail_server, fake_dns):
    fake_dns.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    fake_dns.add("4.0.0.127.bl.test", "A", "127.0.0.2").add("4.0.0.127.wl.test", "A", "127.0.0.2")
    fake_dns.add("1.0.0.127.bl.test", "A", "127.0.0.2")
    server = chainmail_server(handlers=RBL, options=OPTIONS, dns=fake_dns, mailetcontainer=None)

    with client(server, "127.0.0.2") as listed:
        assert listed.mail("a@remote.example") == (
            554, b"5.7.1 Rejected: unauthenticated e-mail from /127.0.0.2 is restricted.  "
                 b"Contact the postmaster for details.")
        assert listed.rcpt("postmaster@local.test")[0] == 503

    with client(server, "127.0.0.3") as unlisted:     # two messages, one lookup
        assert unlisted.sendmail("a@remote.example", ["bob@local.test"], MESSAGE) == {}
        assert unlisted.sendmail("a@remote.example", ["bob@local.test"], MESSAGE) == {}
    assert fake_dns.asked("3.0.0.127.bl.test") == 1
    assert fake_dns.asked("3.0.0.127.wl.test") == 1

    with client(server, "127.0.0.4") as whitelisted:
        assert whitelisted.sendmail("a@remote.example", ["bob@local.test"], MESSAGE) == {}
    assert fake_dns.asked("4.0.0.127.bl.test") == 0

    with client(server, "127.0.0.1") as relaying:
        assert relaying.sendmail("a@remote.example", ["bob@local.test"], MESSAGE) == {}
    assert fake_dns.asked("1.0.0.127.bl.test") == 0 and fake_dns.asked("1.0.0.127.wl.test") == 0
    assert len(server.spooled()) == 4


def test_rbl_detail_and_authenticated_session(chainmail_server, fake_dns):
    fake_dns.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    fake_dns.add("2.0.0.127.bl.test", "TXT", "Blocked - see https://bl.test/127.0.0.2")
    chain = (f'<handlerchain coreHandlersPackage="{CORE_WITH_AUTH}">'
             + handler("DNSRBLHandler", "<rblservers><blacklist>bl.test</blacklist></rblservers>"
                                        "<getDetail>true</getDetail>") + "</handlerchain>")
    server = chainmail_server(handlers=chain, options=AUTH_OPTIONS, dns=fake_dns,
                              users={"bob@local.test": PASSWORD}, mailetcontainer=None)
    with client(server, "127.0.0.2") as c:
        assert c.mail("bob@local.test") == (554, b"5.7.1 Blocked - see https://bl.test/127.0.0.2")
        assert c.login("bob@local.test", PASSWORD)[0] == 235
        assert c.sendmail("bob@local.test", ["alice@remote.example"], MESSAGE) == {}
    [spooled] = server.spooled()
    assert spooled.recipients == ["alice@remote.example"]


def test_a_silent_block_list_delays_only_its_own_session(chainmail_server, fake_dns):
    fake_dns.never_answer("5.0.0.127.bl.test")
    server = chainmail_server(handlers=RBL, options=OPTIONS, dns=fake_dns, mailetcontainer=None,
                              files=quick_dns(fake_dns.port, timeout=2))
    slow = client(server, "127.0.0.5")
    start = time.monotonic()
    slow.putcmd("mail", "FROM:<a@remote.example>")    # waits for the DNS timeout
    with client(server, "127.0.0.3") as fast:
        assert fast.sendmail("a@remote.example", ["bob@local.test"], MESSAGE) == {}
    fast_done = time.monotonic() - start
    assert slow.getreply()[0] == 250                   # a failed lookup is not a listing
    assert time.monotonic() - start >= 1.5
    assert fast_done < 1.5
    slow.quit()
    assert "could not be asked about 127.0.0.5" in server.log


# -- HELO/EHLO checks ----------------------------------------------------------------------------
def test_resolvable_helo_with_swaks(chainmail_server, fake_dns):
    swaks = need("swaks")
    fake_dns.add("good.client.test", "A", "127.0.0.2").servfail("broken.client.test")
    server = chainmail_server(handlers=handler("ResolvableEhloHeloHandler"), options=OPTIONS,
                              dns=fake_dns, mailetcontainer=None)

    def run(helo: str) -> subprocess.CompletedProcess:
        return subprocess.run([swaks, "--server", f"127.0.0.1:{server.port}", "--local-interface",
                               "127.0.0.2", "--helo", helo, "--from", "a@remote.example",
                               "--to", "bob@local.test"], capture_output=True, text=True, timeout=30)

    bad = run("nowhere.client.test")
    assert "<** 501 5.5.4 Provided EHLO/HELO nowhere.client.test can not resolved." in bad.stdout
    failing = run("broken.client.test")
    assert ("<** 451 4.4.3 Temporarily rejected: Problem on DNS lookup of broken.client.test"
            in failing.stdout)
    good = run("good.client.test")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "<-  250 2.6.0 Message received" in good.stdout
    assert len(server.spooled()) == 1


def test_reverse_equals_helo_over_a_raw_socket(chainmail_server, fake_dns):
    fake_dns.add("127.0.0.2", "PTR", "client2.test").add("client2.test", "A", "127.0.0.2")
    server = chainmail_server(handlers=handler("ReverseEqualsEhloHeloHandler"), options=OPTIONS,
                              dns=fake_dns, mailetcontainer=None)

    def dialogue(helo: str) -> list[bytes]:
        with socket.create_connection((server.host, server.port), timeout=10,
                                      source_address=("127.0.0.2", 0)) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"220 ")
            sock.sendall(f"HELO {helo}\r\n".encode())
            assert reader.readline().startswith(b"250 ")
            sock.sendall(b"MAIL FROM:<a@remote.example>\r\nRSET\r\nMAIL FROM:<a@remote.example>\r\n"
                         b"QUIT\r\n")
            return [reader.readline() for _ in range(4)]

    refused = b"501 5.5.4 Provided EHLO/HELO liar.test can not resolved.\r\n"
    assert dialogue("liar.test") == [refused, b"250 2.0.0 OK\r\n", refused,
                                     b"221 2.0.0 mx.test Service closing transmission channel\r\n"]
    replies = dialogue("CLIENT2.test")
    assert replies[0] == b"250 2.1.0 Sender <a@remote.example> OK\r\n"


# -- ValidSenderDomainHandler --------------------------------------------------------------------
def test_sender_domains_with_mx_without_and_unanswered(chainmail_server, fake_dns):
    fake_dns.add("mx.example", "MX", (10, "in.mx.example")).never_answer("slow.example")
    server = chainmail_server(handlers=handler("ValidSenderDomainHandler"), options=OPTIONS,
                              dns=fake_dns, mailetcontainer=None, files=quick_dns(fake_dns.port))
    with client(server, "127.0.0.2") as c:
        assert c.mail("a@nowhere.example") == (
            501, b"5.1.7 sender <a@nowhere.example> contains a domain with no valid MX records")
        assert c.rcpt("bob@local.test")[0] == 503
        assert c.mail("a@slow.example") == (
            451, b"4.4.3 Temporarily rejected: Problem on DNS lookup of slow.example")
        assert c.sendmail("a@mx.example", ["bob@local.test"], MESSAGE) == {}
    with client(server, "127.0.0.1") as relaying:       # checkAuthNetworks is false
        assert relaying.mail("a@nowhere.example")[0] == 250


# -- URIRBLHandler -------------------------------------------------------------------------------
def multipart(plain: str, html: str) -> str:
    b64 = base64.encodebytes(plain.encode()).decode()
    qp = quopri.encodestring(html.encode()).decode()
    return ("From: a@remote.example\r\nSubject: offer\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
            '--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
            "--inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
            "--inner\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp}\r\n--inner--\r\n"
            "--outer--\r\n")


def test_uri_block_list_finds_domains_in_encoded_parts(chainmail_server, fake_dns):
    fake_dns.add("spam.example.uri.test", "A", "127.0.0.2")
    fake_dns.add("spam.example.uri.test", "TXT", "listed since today")
    fake_dns.add("phish.test.uri.test", "A", "127.0.0.2")
    uri = handler("URIRBLHandler", "<getDetail>true</getDetail>"
                                   "<uriRblServers><server>uri.test</server></uriRblServers>")
    server = chainmail_server(handlers=uri, options=OPTIONS, dns=fake_dns, mailetcontainer=None)
    with client(server, "127.0.0.2") as c:
        with pytest.raises(smtplib.SMTPDataError) as b64:
            c.sendmail("a@remote.example", ["bob@local.test"],
                       multipart("Offer at https://www.spam.example/deal", "<p>hello</p>"))
        assert b64.value.smtp_code == 554
        assert b64.value.smtp_error == (b"5.7.0 Rejected: message contains domain spam.example "
                                        b"listed by uri.test . Details: listed since today")
        with pytest.raises(smtplib.SMTPDataError) as qp:
            c.sendmail("a@remote.example", ["bob@local.test"],
                       multipart("nothing", '<a href="http://login.phish.test/' + "x" * 90 + '">'
                                            "your bank</a>"))
        assert b"domain phish.test listed by uri.test" in qp.value.smtp_error
        assert c.sendmail("a@remote.example", ["bob@local.test"],
                          multipart("see https://clean.example/", "<p>fine</p>")) == {}
    assert len(server.spooled()) == 1
    assert ("clean.example.uri.test", "A") in fake_dns.queries
