"""The socket-free session driver: handler chains from classes or XML, the server's own
session loop, replies and spooled mail as a client and the spool would see them."""

from __future__ import annotations

import asyncio

import pytest
import trio

from chainmail.testing import HookResult, SessionClosed, SessionDriver


class DenyRecipient:
    """Refuses the recipient named by <who>."""

    def configure(self, config):
        self.who = config.get("who")

    def on_rcpt(self, recipient):
        if str(recipient) == self.who:
            return HookResult.deny(550, "Not this one", "5.7.1")
        return None


class TrioHelo:
    async def on_helo(self, session, helo):
        await trio.sleep(0.001)
        session.state["trio_saw"] = helo
        if helo == "bad.example":
            return HookResult.deny(550, "Go away", "5.7.1")
        return None


class AsyncioSender:
    runs_on = "asyncio"

    async def on_mail(self, session, sender):
        asyncio.get_running_loop()   # raises unless asyncio runs this coroutine
        await asyncio.sleep(0.001)
        if sender is not None and sender.domain_lower == "grey.example":
            return HookResult.denysoft(450, "Greylisted", "4.7.1")
        return None


class Recorder:
    """Records what the session looked like at RCPT and at disconnect."""

    seen: list = []

    def on_rcpt(self, session, recipient):
        Recorder.seen.append(("rcpt", session.remote_ip, session.auth_user, session.tls is not None,
                              session.relaying_allowed, str(recipient)))

    def on_disconnect(self, session):
        Recorder.seen.append(("disconnect", session.id))


class Exploding:
    def on_rcpt(self, recipient):
        if recipient.local == "boom":
            raise RuntimeError("handler bug")


@pytest.fixture(autouse=True)
def _reset():
    Recorder.seen = []


def test_a_deny_verdict_reaches_the_client_and_only_accepted_recipients_are_spooled():
    with SessionDriver([(DenyRecipient, {"who": "x@local.test"})], helo="client.test") as s:
        assert s.mail("a@remote.example").code == 250
        denied = s.rcpt("x@local.test")
        assert (denied.code, denied.enhanced, denied.text) == (550, "5.7.1", "Not this one")
        assert s.rcpt("y@local.test").code == 250
        reply = s.data("Subject: hi\n\n.leading dot\nbody\n")
        assert (reply.code, reply.enhanced) == (250, "2.6.0")
        [msg] = s.spooled()
    assert msg.sender == "a@remote.example" and msg.recipients == ["y@local.test"]
    assert msg.content.startswith(b"Received: from client.test")
    assert msg.content.endswith(b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n")
    assert msg.attributes["remote_addr"] == "127.0.0.1"


def test_xml_chain_resolves_installed_handlers_by_entry_point():
    xml = ('<handler class="RecipientBlocker"><blocked>b@local.test</blocked>'
           '<code>551</code><enhanced>5.7.1</enhanced><text>Handler says no</text></handler>')
    with SessionDriver(xml) as s:
        replies = s.send_message("a@remote.example", ["b@local.test"], "Subject: x\r\n\r\nx\r\n")
    assert str(replies[-1]) == "551 5.7.1 Handler says no"
    assert len(replies) == 3   # EHLO, MAIL, RCPT: no DATA without an accepted recipient


def test_trio_and_asyncio_hooks_run_on_their_loops():
    with SessionDriver([TrioHelo, AsyncioSender]) as s:
        assert str(s.ehlo("bad.example")) == "550 5.7.1 Go away"
        assert s.ehlo("good.example").code == 250
        assert s.session.state["trio_saw"] == "good.example"
        assert str(s.mail("a@grey.example")) == "450 4.7.1 Greylisted"
        assert s.mail("a@fine.example").code == 250


def test_client_settings_reach_the_handlers_and_the_core_relay_check():
    with SessionDriver([Recorder], remote_ip="192.0.2.7", auth_user="alice@local.test",
                       tls=True, helo="c.test") as s:
        s.mail("alice@local.test")
        s.rcpt("bob@local.test")
        # 192.0.2.7 is outside authorizedAddresses: the core refuses to relay
        assert str(s.rcpt("x@remote.example")) == "550 5.7.1 Requested action not taken: relaying denied"
    assert Recorder.seen[0] == ("rcpt", "192.0.2.7", "alice@local.test", True, False, "bob@local.test")
    assert Recorder.seen[-1][0] == "disconnect"
    with SessionDriver(remote_ip="192.0.2.7", relaying_allowed=True, helo="c.test") as s:
        s.mail("a@remote.example")
        assert s.rcpt("x@remote.example").code == 250


def test_a_failing_handler_answers_451_and_the_session_goes_on():
    with SessionDriver([Exploding], helo="c.test") as s:
        s.mail("a@remote.example")
        assert str(s.rcpt("boom@local.test")) == "451 4.3.0 Unable to process request"
        assert s.rcpt("fine@local.test").code == 250


def test_quit_ends_the_session():
    with SessionDriver() as s:
        assert s.quit().code == 221
        assert s.closed
        with pytest.raises(SessionClosed):
            s.noop()


def test_pipelined_commands_get_one_reply_each():
    with SessionDriver() as s:
        replies = s.raw(b"EHLO c.test\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<b@local.test>\r\n"
                        b"NOOP\r\n", replies=4)
    assert [r.code for r in replies] == [250, 250, 250, 250]


def test_a_bare_line_feed_is_refused_through_the_real_engine():
    with SessionDriver(helo="c.test") as s:
        [reply] = s.raw(b"NOOP\n")
    assert reply.code == 500 and s.closed


def test_lmtp_delivers_into_maildirs_with_one_reply_per_recipient():
    users = {"bob@local.test": "a long password", "carol@local.test": "a long password"}
    with SessionDriver(lmtp=True, users=users, helo="c.test") as s:
        s.mail("a@remote.example")
        s.rcpt("bob@local.test")
        s.rcpt("carol@local.test")
        replies = s.data("Subject: lmtp\r\n\r\nhello\r\n")
        assert [r.code for r in replies] == [250, 250]
        [message] = s.mailbox("bob@local.test")
    assert message.endswith(b"Subject: lmtp\n\nhello\n")   # Maildirs keep LF line ends


def test_chainmail_session_fixture_closes_what_it_opened(chainmail_session):
    s = chainmail_session([Recorder], helo="c.test")
    s.mail("a@remote.example")
    s.rcpt("b@local.test")
    assert Recorder.seen and s.session.helo_name == "c.test"


class Declared:
    parameters = ("who",)

    def configure(self, config):
        self.who = config.get("who")


def test_a_parameter_the_handler_does_not_declare_is_refused():
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'whom'; it declares who"):
        SessionDriver([(Declared, {"whom": "x"})])
    with SessionDriver([(Declared, {"who": "x"})]) as s:
        assert s.greeting.code == 220
