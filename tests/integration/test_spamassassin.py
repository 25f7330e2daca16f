"""SpamAssassinHandler on a real ``chainmail run`` talking to a real spamd on loopback: spam
refused with James's reply, ham delivered with spamd's verdict on top, spamd down or hanging
→ the message accepted unscanned without holding up other sessions."""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from chainmail.testing.server import ChainmailServer

from .spam_env import GTUBE, SPAMWORD, free_port, silent_peer, spamd  # noqa: F401

BOB = "bob@local.test"
USERS = {BOB: "a long password"}
REJECTION = (554, b"5.7.0 This message reach the spam hits treshold. Please contact the "
                  b"Postmaster if the email is not SPAM. Message rejected")


def handler(port: int, *extra: str) -> str:
    return ('<handler class="org.apache.james.spamassassin.SpamAssassinHandler">'
            f"<spamdHost>127.0.0.1</spamdHost><spamdPort>{port}</spamdPort>{''.join(extra)}"
            "</handler>")


def fields(stored: bytes) -> list[tuple[str, str]]:
    """The header fields of a stored message (CRLF or LF line ends)."""
    parsed = email.message_from_bytes(stored, policy=email.policy.compat32)
    return [(name, str(value)) for name, value in parsed.items()]


def message(subject: str, body: str) -> bytes:
    return (f"From: alice@remote.example\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
            "Date: Sat, 05 Dec 2026 17:00:00 +0000\r\nMessage-ID: <m1@remote.example>\r\n"
            f"\r\n{body}\r\n").encode()


@pytest.fixture(scope="module")
def server(spamd, tmp_path_factory):   # noqa: F811 - the module's spamd
    """Refuses at 10 hits: GTUBE (1000) is refused, the spam word (7.5) is only marked."""
    running = ChainmailServer(tmp_path_factory.mktemp("sa"), users=USERS,
                              handlers=handler(spamd.port, "<spamdRejectionHits>10.0</spamdRejectionHits>"))
    yield running
    running.stop()


def send(server, content: bytes):
    with server.smtp() as client:
        client.ehlo("client.example")
        assert client.mail("alice@remote.example")[0] == 250
        assert client.rcpt(BOB)[0] == 250
        return client.data(content)


def test_spam_above_the_rejection_hits_is_refused_with_james_reply(server):
    assert send(server, message("buy now", GTUBE)) == REJECTION
    logged = server.wait_for(lambda: "treshold" in server.log and server.log,
                             what="the rejection logged")
    assert "this message reach the spam hits treshold. Required rejection hits: 10.0" in logged


def test_ham_is_delivered_with_spamd_verdict_on_top(server):
    assert send(server, message("lunch", "Shall we meet at noon?"))[0] == 250
    delivered = server.wait_for(
        lambda: [m for m in server.mailbox(BOB) if b"Subject: lunch" in m], what="the ham delivered")
    names = [name for name, _ in fields(delivered[0])]
    values = dict(fields(delivered[0]))
    # on top of what the server received, below the fields of the delivery
    assert names.index("X-Spam-Flag") + 1 == names.index("X-Spam-Status")
    assert names.index("X-Spam-Status") + 1 == names.index("Received")
    assert values["X-Spam-Flag"] == "NO"
    assert values["X-Spam-Status"].startswith("No, hits=")
    assert values["X-Spam-Status"].endswith(" required=5.0")


def test_spam_below_the_rejection_hits_is_delivered_flagged(server):
    assert send(server, message("offer", f"A {SPAMWORD} for you"))[0] == 250
    delivered = server.wait_for(
        lambda: [m for m in server.mailbox(BOB) if b"Subject: offer" in m], what="the spam delivered")
    values = dict(fields(delivered[0]))
    assert values["X-Spam-Flag"] == "YES"
    status = values["X-Spam-Status"]
    assert status.startswith("Yes, hits=") and status.endswith(" required=5.0")
    assert 5.0 <= float(status.split("hits=")[1].split()[0]) < 10.0   # spammy, not refused


def test_without_rejection_hits_spam_is_only_marked(spamd, chainmail_server):   # noqa: F811
    marking = chainmail_server(users=USERS, mailetcontainer=None, handlers=handler(spamd.port))
    assert send(marking, message("gtube kept", GTUBE))[0] == 250
    [queued] = marking.spooled()
    assert queued.content.startswith(b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, hits=")
    status = queued.attributes["org.apache.james.spamassassin.status"]
    assert queued.attributes["org.apache.james.spamassassin.flag"] == "YES"
    assert status.startswith("Yes, hits=") and float(status.split("=")[1].split()[0]) > 500
    assert f"X-Spam-Status: {status}\r\n".encode() in queued.content


def test_spamd_down_accepts_the_message_unscanned(chainmail_server):
    closed = free_port()
    down = chainmail_server(users=USERS, mailetcontainer=None, handlers=handler(
        closed, "<spamdRejectionHits>1.0</spamdRejectionHits>"))
    assert send(down, message("unscanned", GTUBE))[0] == 250
    [queued] = down.spooled()
    assert b"X-Spam-" not in queued.content
    assert "message accepted without a spam check" in down.log


def test_a_hanging_spamd_delays_only_its_own_message(chainmail_server, silent_peer):   # noqa: F811
    hanging = chainmail_server(users=USERS, mailetcontainer=None, handlers=handler(
        silent_peer.port, "<spamdTimeout>3</spamdTimeout>"))
    slow = hanging.smtp()
    slow.ehlo("slow.example")
    assert slow.mail("alice@remote.example")[0] == 250
    assert slow.rcpt(BOB)[0] == 250
    assert slow.docmd("DATA")[0] == 354
    start = time.monotonic()
    slow.send(message("waits", "on the filter") + b".\r\n")
    with hanging.smtp() as fast:                 # a whole transaction while the other waits
        fast.ehlo("fast.example")
        assert fast.mail("carol@remote.example")[0] == 250
        assert fast.rcpt(BOB)[0] == 250
        assert fast.rset()[0] == 250
    fast_elapsed = time.monotonic() - start
    code, _ = slow.getreply()
    slow_elapsed = time.monotonic() - start
    slow.quit()
    assert code == 250 and slow_elapsed >= 2.9
    assert fast_elapsed < 2.5
    assert "did not answer within 3 s" in hanging.log


def test_bad_parameters_stop_the_server_naming_them(tmp_path):
    with pytest.raises(Exception) as failed:
        ChainmailServer(tmp_path, handlers=handler(783, "<spamdRejectionHits>lots</spamdRejectionHits>"),
                        startup_timeout=15)
    assert "spamdRejectionHits" in str(failed.value) and "not a number" in str(failed.value)


def spam_mailets(port: int) -> str:
    return ('<processor state="root">'
            f'<mailet match="All" class="SpamAssassin"><spamdHost>localhost</spamdHost>'
            f"<spamdPort>{port}</spamdPort></mailet>"
            '<mailet match="IsMarkedAsSpam" class="ToRepository">'
            "<repositoryPath>file://var/mail/spam/</repositoryPath></mailet>"
            '<mailet match="All" class="LocalDelivery"/></processor>')


def test_spamassassin_mailet_and_is_marked_as_spam_file_spam_apart(spamd, chainmail_server):  # noqa: F811
    carol = "carol@local.test"
    container = chainmail_server(users={**USERS, carol: "another long password"},
                                 mailetcontainer=spam_mailets(spamd.port))
    container.send("alice@remote.example", [BOB, carol], message("hello", "Nice to meet you"))
    container.send("alice@remote.example", [BOB], message("junk", GTUBE))
    [ham] = container.wait_for_mailbox(BOB)
    values = dict(fields(ham))
    assert values["org.apache.james.spamassassin.flag"] == "NO"   # James's names, both agree
    assert values["org.apache.james.spamassassin.status"].startswith("No, hits=")
    assert b"Nice to meet you" in container.wait_for_mailbox(carol)[0]
    [spam] = container.wait_for(lambda: container.repository("file://var/mail/spam/"),
                                what="the spam filed in its repository")
    assert spam.recipients == [BOB]
    assert spam.attributes["org.apache.james.spamassassin.status"][BOB].startswith("Yes, hits=")
    assert spam.get_header("org.apache.james.spamassassin.flag") == "YES"
    assert container.mailbox(BOB) == [ham]


def test_spamassassin_mailet_with_spamd_down_sends_the_mail_to_error(chainmail_server):
    container = chainmail_server(users=USERS, mailetcontainer=spam_mailets(free_port()))
    container.send("alice@remote.example", [BOB], message("lost", "no filter"))
    [failed] = container.wait_for(lambda: container.repository("error"),
                                  what="the mail in the error repository")
    assert "SpamAssassin: spamd at localhost:" in (failed.error_message or "")
    assert container.mailbox(BOB) == []


@pytest.mark.parametrize("answer,expected", [
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1004.2 / 5.0\r\n\r\n", ("YES", "Yes, hits=1004.2 required=5.0")),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.1 / 5.0\r\n\r\n", ("NO", "No, hits=-0.1 required=5.0")),
    (b"SPAMD/1.1 0 EX_OK\r\n\r\n", ("NO", "No, hits=? required=?")),   # James's empty result
])
def test_spamd_answers_are_read_as_james_reads_them(answer, expected):
    from chainmail_plugins.smtp.spam_spamd import parse_reply
    result = parse_reply(answer)
    assert (result.flag, result.status) == expected


@pytest.mark.parametrize("answer", [
    b"SPAMD/1.0 76 Bad header line: (EOF)\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"",
    b"SPAMD/1.1 0 EX_OK\r\nSpam: True\r\n\r\n",
])
def test_spamd_errors_and_garbage_are_unavailable_not_ham(answer):
    from chainmail_plugins.smtp.spam_net import FilterUnavailable
    from chainmail_plugins.smtp.spam_spamd import parse_reply
    with pytest.raises(FilterUnavailable):
        parse_reply(answer)
