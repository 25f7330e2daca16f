"""RspamdHandler on a real ``chainmail run`` talking to a real rspamd on loopback: each of
rspamd's actions answered as documented (GTUBE rejected; the others forced by the test's Lua
rule), verdict fields in the delivered Maildir message, rspamd down or hanging → accepted
unscanned (or deferred when told to fail closed) without holding up other sessions."""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from chainmail.testing.server import ChainmailServer

from .spam_env import GTUBE, free_port, rspamd, silent_peer  # noqa: F401

BOB = "bob@local.test"
USERS = {BOB: "a long password"}


def handler(url: str, *extra: str) -> str:
    return f'<handler class="RspamdHandler"><rspamdUrl>{url}</rspamdUrl>{"".join(extra)}</handler>'


def message(subject: str, body: str = "Shall we meet at noon?") -> bytes:
    return (f"From: alice@remote.example\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
            "Date: Sat, 05 Dec 2026 17:00:00 +0000\r\nMessage-ID: <m1@remote.example>\r\n"
            f"\r\n{body}\r\n").encode()


def fields(stored: bytes) -> list[tuple[str, str]]:
    parsed = email.message_from_bytes(stored, policy=email.policy.compat32)
    return [(name, str(value)) for name, value in parsed.items()]


def send(server, content: bytes, sender: str = "alice@remote.example"):
    with server.smtp() as client:
        client.ehlo("client.example")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(BOB)[0] == 250
        return client.data(content)


def delivered(server, marker: str) -> list[tuple[str, str]]:
    found = server.wait_for(lambda: [m for m in server.mailbox(BOB) if marker.encode() in m],
                            what=f"the message with {marker!r} delivered")
    return fields(found[0])


@pytest.fixture(scope="module")
def server(rspamd, tmp_path_factory):   # noqa: F811 - the module's rspamd
    running = ChainmailServer(tmp_path_factory.mktemp("rspamd"), users=USERS,
                              handlers=handler(f"http://127.0.0.1:{rspamd.port}"))
    yield running
    running.stop()


def test_gtube_is_rejected_with_rspamd_message(server):
    assert send(server, message("buy now", GTUBE)) == (554, b"5.7.1 Gtube pattern")


@pytest.mark.parametrize("action", ["soft reject", "greylist"])
def test_soft_reject_and_greylist_defer_with_rspamd_message(server, action):
    reply = send(server, message(f"x force-action={action}."))
    assert reply == (451, f"4.7.1 forced by the test ({action})".encode())


def test_ham_is_delivered_with_the_verdict_and_rspamd_saw_the_envelope(server, rspamd):  # noqa: F811
    assert send(server, message("lunch"))[0] == 250
    values = dict(delivered(server, "Subject: lunch"))
    assert values["X-Rspamd-Action"] == "no action"
    assert values["X-Spamd-Result"].startswith("default: False [")
    assert "X-Spam" not in values
    logged = server.wait_for(lambda: [line for line in rspamd.log.splitlines()
                                      if "rspamd_task_write_log" in line and "m1@remote.example" in line
                                      and "(no action)" in line], what="rspamd's log of the scan")
    assert "ip: 127.0.0.1" in logged[-1]
    assert "from: <alice@remote.example>" in logged[-1]
    assert "rcpts: <bob@local.test>" in logged[-1]


def test_add_header_marks_the_message_as_spam(server):
    assert send(server, message("x force-action=add header."))[0] == 250
    values = dict(delivered(server, "force-action=add header."))
    assert values["X-Spam"] == "Yes"
    assert values["X-Rspamd-Action"] == "add header"
    assert values["X-Rspamd-Pre-Result"].startswith("action=add header;")   # from rspamd's milter block


def test_rewrite_subject_replaces_the_clients_subject(server):
    assert send(server, message("x force-action=rewrite subject."))[0] == 250
    got = delivered(server, "force-action=rewrite subject.")
    subjects = [value for name, value in got if name == "Subject"]
    assert subjects == ["*** SPAM *** x force-action=rewrite subject."]
    assert dict(got)["X-Spam"] == "Yes"


def test_james_attributes_travel_with_the_mail(rspamd, chainmail_server):   # noqa: F811
    spooling = chainmail_server(users=USERS, mailetcontainer=None,
                                handlers=handler(f"http://localhost:{rspamd.port}/"))
    assert send(spooling, message("x force-action=add header."))[0] == 250
    [queued] = spooling.spooled()
    assert queued.attributes["org.apache.james.rspamd.flag"] == "YES"
    assert queued.attributes["org.apache.james.rspamd.status"] == \
        "Yes, actions=add header score=0.0 requiredScore=15.0"


def test_rspamd_down_accepts_unscanned_or_defers_when_failing_closed(chainmail_server):
    url = f"http://127.0.0.1:{free_port()}"
    both = chainmail_server(users=USERS, mailetcontainer=None, handlers=handler(url))
    assert send(both, message("unscanned", GTUBE))[0] == 250
    [queued] = both.spooled()
    assert b"X-Rspamd" not in queued.content and b"X-Spam" not in queued.content
    assert "message accepted without a spam check" in both.log
    closed = chainmail_server(users=USERS, mailetcontainer=None,
                              handlers=handler(url, "<failOpen>false</failOpen>"))
    assert send(closed, message("deferred")) == \
        (451, b"4.7.1 Spam filter unavailable. Please try again later")
    assert closed.spooled() == []


def test_a_hanging_rspamd_delays_only_its_own_message(chainmail_server, silent_peer):  # noqa: F811
    hanging = chainmail_server(users=USERS, mailetcontainer=None, handlers=handler(
        f"http://127.0.0.1:{silent_peer.port}", "<rspamdTimeout>3</rspamdTimeout>"))
    slow = hanging.smtp()
    slow.ehlo("slow.example")
    assert slow.mail("alice@remote.example")[0] == 250
    assert slow.rcpt(BOB)[0] == 250
    assert slow.docmd("DATA")[0] == 354
    start = time.monotonic()
    slow.send(message("waits") + b".\r\n")
    with hanging.smtp() as fast:
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


@pytest.mark.parametrize("param,value,expected", [
    ("rspamdUrl", "ftp://127.0.0.1:11333", "not an http:// or https:// URL"),
    ("rspamdTimeout", "soon", "not a number"),
    ("failOpen", "perhaps", "failOpen"),
])
def test_bad_parameters_stop_the_server_naming_them(tmp_path, param, value, expected):
    with pytest.raises(Exception) as failed:
        ChainmailServer(tmp_path, handlers=f'<handler class="RspamdHandler"><{param}>{value}</{param}></handler>',
                        startup_timeout=15)
    assert param in str(failed.value) and expected in str(failed.value)


def test_rspamd_scanner_mailet_routes_by_verdict(rspamd, chainmail_server):   # noqa: F811
    processors = (
        '<processor state="root">'
        f'<mailet match="All" class="org.apache.james.rspamd.RspamdScanner">'
        f"<rspamdUrl>http://127.0.0.1:{rspamd.port}</rspamdUrl><rewriteSubject>true</rewriteSubject>"
        "<rejectSpamProcessor>spam</rejectSpamProcessor></mailet>"
        '<mailet match="IsMarkedAsSpam=org.apache.james.rspamd.status" class="ToRepository">'
        "<repositoryPath>file://var/mail/marked/</repositoryPath></mailet>"
        '<mailet match="All" class="LocalDelivery"/></processor>'
        '<processor state="spam"><mailet match="All" class="ToRepository">'
        "<repositoryPath>file://var/mail/rejected/</repositoryPath></mailet></processor>")
    container = chainmail_server(users=USERS, mailetcontainer=processors)
    container.send("alice@remote.example", BOB, message("hello"))
    container.send("alice@remote.example", BOB, message("x force-action=rewrite subject."))
    container.send("alice@remote.example", BOB, message("gtube", GTUBE))
    [ham] = container.wait_for_mailbox(BOB)
    assert dict(fields(ham))["org.apache.james.rspamd.status"].startswith("No, actions=no action score=")
    [marked] = container.wait_for(lambda: container.repository("file://var/mail/marked/"),
                                  what="the marked mail")
    assert marked.get_headers("Subject") == ["*** SPAM *** x force-action=rewrite subject."]
    assert marked.attributes["org.apache.james.rspamd.flag"] == {BOB: "YES"}
    [rejected] = container.wait_for(lambda: container.repository("file://var/mail/rejected/"),
                                    what="the rejected mail")
    assert rejected.attributes["org.apache.james.rspamd.status"][BOB].startswith("Yes, actions=reject")


def test_rspamd_verdict_fields_are_read_and_sanitised():
    import json

    from chainmail_plugins.smtp.spam_rspamd import parse_result
    result = parse_result(json.dumps({
        "action": "add header", "score": 7.5, "required_score": 15, "symbols": {
            "A": {"name": "A", "score": 1.0, "options": ["x\r\ny"]},
            "B": {"name": "B", "score": 6.5}},
        "messages": {"smtp_message": "bad\r\nInjected: 1"},
        "milter": {"add_headers": {"X-One": "1", "X-Two": [{"value": "2a"}, {"value": "2b", "order": 0}]},
                   "remove_headers": {"X-Old": 0}}}).encode())
    assert result.status == "Yes, actions=add header score=7.5 requiredScore=15.0"
    assert result.smtp_message == "bad  Injected: 1"
    assert result.spamd_result() == "default: True [7.50 / 15.00];\r\n\tB(6.50)[];\r\n\tA(1.00)[x  y]"
    assert result.add_headers == (("X-One", "1"), ("X-Two", "2a"), ("X-Two", "2b"))
    assert result.remove_headers == ("X-Old",)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"action": "delete everything"}'])
def test_rspamd_garbage_is_unavailable_not_ham(body):
    from chainmail_plugins.smtp.spam_net import FilterUnavailable
    from chainmail_plugins.smtp.spam_rspamd import parse_result
    with pytest.raises(FilterUnavailable):
        parse_result(body)
