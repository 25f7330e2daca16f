"""The handlers of tests/plugins/chainmail-test-plugin, named in <handlerchain> XML and found
through their entry points, driven with chainmail.testing's session driver (no socket, no
subprocess).  tests/testing/test_server.py runs plugin handlers named in XML through a real
``chainmail run``; tests/integration/test_plugins.py keeps the command-line checks."""

from __future__ import annotations

from chainmail.testing import SessionDriver

BLOCK_A = ('<handler class="RecipientBlocker"><blocked>blocked@local.test</blocked>'
           '<code>551</code><enhanced>5.7.1</enhanced><text>Handler A says no</text></handler>')
BLOCK_B = ('<handler class="com.example.mail.RecipientBlocker"><blocked>blocked@local.test</blocked>'
           '<code>553</code><text>Handler B says no</text></handler>')


def refusal(handlers: str, recipient: str = "blocked@local.test", **settings) -> str:
    with SessionDriver(handlers, helo="t", **settings) as s:
        s.mail("a@remote.example")
        return str(s.rcpt(recipient))


def test_xml_order_is_respected():
    assert refusal(BLOCK_A + BLOCK_B) == "551 5.7.1 Handler A says no"
    assert refusal(BLOCK_B + BLOCK_A) == "553 Handler B says no"


def test_user_handlers_run_before_the_core_set():
    """A user RCPT hook sees remote recipients before the core relay check refuses them."""
    handlers = BLOCK_A.replace("blocked@local.test", "x@remote.example")
    assert refusal(handlers, "x@remote.example", authorized_addresses="") == \
        "551 5.7.1 Handler A says no"
    # without the handler, the core relay check answers
    assert refusal("", "x@remote.example", authorized_addresses="").startswith("550 5.7.1")


def test_ehlo_keywords_in_chain_order():
    with SessionDriver('<handler class="KeywordAnnouncer"><keyword>X-FIRST</keyword></handler>'
                       '<handler class="KeywordAnnouncer"><keyword>X-SECOND</keyword></handler>') as s:
        reply = s.ehlo("t")
    assert list(reply.lines[1:]) == ["X-FIRST", "X-SECOND", "PIPELINING", "ENHANCEDSTATUSCODES",
                                     "8BITMIME", "SMTPUTF8", "CHUNKING", "BINARYMIME"]


def test_asyncio_thread_and_trio_hooks():
    handlers = ('<handler class="AsyncioSenderCheck"><domain>grey.example</domain></handler>'
                '<handler class="BlockingRecipientCheck"/>'
                '<handler class="SlowHeloCheck"><name>slow.example</name></handler>')
    with SessionDriver(handlers, options="<handlerTimeout>1</handlerTimeout>", helo="t") as s:
        assert str(s.mail("a@grey.example")) == "450 4.7.1 Greylisted by an asyncio hook"
        assert str(s.mail("a@fine.example")) == "250 2.1.0 Sender <a@fine.example> OK"
        assert str(s.rcpt("thread-denied@local.test")) == "550 5.1.1 Refused by a thread hook"
        assert str(s.rcpt("u@local.test")) == "250 2.1.5 Recipient <u@local.test> OK"
        # a trio hook that overruns its 1 s budget: 451 for that command, and the session goes on
        assert str(s.ehlo("slow.example")) == "451 4.3.0 Unable to process request"
        assert s.ehlo("fast.example").lines[0] == "mx.test Hello fast.example [127.0.0.1]"


def test_failing_handler_answers_451_and_session_goes_on(caplog):
    with SessionDriver('<handler class="FaultyHook"/>', helo="t") as s:
        s.mail("a@remote.example")
        assert str(s.rcpt("explode@local.test")) == "451 4.3.0 Unable to process request"
        assert s.rcpt("fine@local.test").code == 250
        assert s.data("Subject: x\r\n\r\nbody\r\n").code == 250
        [queued] = s.spooled()
    assert queued.recipients == ["fine@local.test"]
    assert "handler failed on RCPT" in caplog.text and "RuntimeError: handler bug" in caplog.text


def test_prepended_header_lands_in_the_spool():
    with SessionDriver('<handler class="HeaderStamper"><value>plugin-42</value></handler>') as s:
        s.send_message("a@remote.example", ["u@local.test"], "Subject: s\r\n\r\nx\r\n")
        [msg] = s.spooled()
    assert msg.content.startswith(b"X-Stamped-By: plugin-42\r\nReceived: from ")
