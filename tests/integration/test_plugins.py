"""A third-party handler package (tests/plugins/chainmail-test-plugin), installed with its own
entry points, named in <handlerchain> and driven through a real server."""

from __future__ import annotations

import subprocess

from ..conftest import CHAINMAIL, cli_on_conf, raw_exchange

BLOCK_A = ('<handler class="RecipientBlocker"><blocked>blocked@local.test</blocked>'
           '<code>551</code><enhanced>5.7.1</enhanced><text>Handler A says no</text></handler>')
BLOCK_B = ('<handler class="com.example.mail.RecipientBlocker"><blocked>blocked@local.test</blocked>'
           '<code>553</code><text>Handler B says no</text></handler>')


def test_deny_with_custom_code_and_text_reaches_the_client(chainmail_factory):
    server = chainmail_factory(handlers=BLOCK_A)
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                        b"RCPT TO:<blocked@local.test>\r\nRCPT TO:<ok@local.test>\r\nQUIT\r\n")
    assert b"551 5.7.1 Handler A says no\r\n" in data
    assert b"250 2.1.5 Recipient <ok@local.test> OK\r\n" in data


def test_xml_order_is_respected(chainmail_factory):
    ab = chainmail_factory(handlers=BLOCK_A + BLOCK_B)
    ba = chainmail_factory(handlers=BLOCK_B + BLOCK_A)
    rcpt = b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<blocked@local.test>\r\nQUIT\r\n"
    assert b"551 5.7.1 Handler A says no" in raw_exchange(ab.port, rcpt)
    assert b"553 Handler B says no" in raw_exchange(ba.port, rcpt)


def test_user_handlers_run_before_the_core_set(chainmail_factory):
    """A user RCPT hook sees remote recipients before the core relay check refuses them."""
    server = chainmail_factory(authorized="", handlers=BLOCK_A.replace("blocked@local.test", "x@remote.example"))
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@remote.example>\r\nQUIT\r\n")
    assert b"551 5.7.1 Handler A says no" in data


def test_ehlo_keywords_in_chain_order(chainmail_factory):
    server = chainmail_factory(handlers='<handler class="KeywordAnnouncer"><keyword>X-FIRST</keyword></handler>'
                                        '<handler class="KeywordAnnouncer"><keyword>X-SECOND</keyword></handler>')
    with server.smtp() as s:
        _, text = s.ehlo("t")
    assert text.decode().split("\n")[1:] == ["X-FIRST", "X-SECOND", "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"]


def test_asyncio_thread_and_trio_hooks(chainmail_factory):
    server = chainmail_factory("<handlerTimeout>1</handlerTimeout>",
                               handlers='<handler class="AsyncioSenderCheck"><domain>grey.example</domain></handler>'
                                        '<handler class="BlockingRecipientCheck"/>'
                                        '<handler class="SlowHeloCheck"><name>slow.example</name></handler>')
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@grey.example>\r\nMAIL FROM:<a@fine.example>\r\n"
                        b"RCPT TO:<thread-denied@local.test>\r\nRCPT TO:<u@local.test>\r\nQUIT\r\n")
    lines = data.decode().split("\r\n")
    assert "450 4.7.1 Greylisted by an asyncio hook" in lines
    assert "250 2.1.0 Sender <a@fine.example> OK" in lines
    assert "550 5.1.1 Refused by a thread hook" in lines
    assert "250 2.1.5 Recipient <u@local.test> OK" in lines
    # a trio hook that overruns its 1 s budget: 451 for that command, and the session goes on
    data = raw_exchange(server.port, b"EHLO slow.example\r\nEHLO fast.example\r\nQUIT\r\n", timeout=8)
    lines = data.decode().split("\r\n")
    assert lines[1] == "451 4.3.0 Unable to process request"
    assert lines[2] == "250-mx.test Hello fast.example [127.0.0.1]"


def test_failing_handler_answers_451_and_session_goes_on(chainmail_factory):
    server = chainmail_factory(handlers='<handler class="FaultyHook"/>')
    with server.smtp() as s:
        s.ehlo("t")
        s.mail("a@remote.example")
        assert s.rcpt("explode@local.test") == (451, b"4.3.0 Unable to process request")
        assert s.rcpt("fine@local.test")[0] == 250
        assert s.data(b"Subject: x\r\n\r\nbody\r\n")[0] == 250
    assert server.queued()[0].envelope.recipients == ["fine@local.test"]
    assert "handler failed on RCPT" in server.log and "RuntimeError: handler bug" in server.log


def test_prepended_header_lands_in_the_spool(chainmail_factory):
    server = chainmail_factory(handlers='<handler class="HeaderStamper"><value>plugin-42</value></handler>')
    with server.smtp() as s:
        s.sendmail("a@remote.example", ["u@local.test"], "Subject: s\r\n\r\nx\r\n")
    [msg] = server.queued()
    assert server.queued_body(msg.id).startswith(b"X-Stamped-By: plugin-42\r\nReceived: from ")


def test_bad_handler_parameter_is_a_configuration_error(tmp_path):
    result = cli_on_conf(
        tmp_path,
        '<smtpservers><smtpserver><bind>127.0.0.1:0</bind><handlerchain>\n\n'
        '<handler class="RecipientBlocker"><code>abc</code></handler>'
        '</handlerchain></smtpserver></smtpservers>', "run")
    assert result.returncode == 2
    assert "smtpserver.xml:3: handler RecipientBlocker: code: 'abc' is not an integer" in result.stderr


def test_james_sample_configuration_loads_unchanged(tmp_path):
    """James's sample smtpserver.xml (three servers, ValidRcptHandler, the loaders named in
    <handler> elements) loads and resolves every handler."""
    import shutil
    from pathlib import Path
    conf = tmp_path / "conf"
    shutil.copytree(Path(__file__).parent.parent / "config" / "james", conf)
    result = subprocess.run([*CHAINMAIL, "check-config", "--conf", str(conf), "--var", str(tmp_path / "var")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "org.apache.james.smtpserver.fastfail.ValidRcptHandler -> chainmail_plugins.smtp.validrcpt:ValidRcptHandler" \
        in result.stdout


def test_james_handler_not_provided_is_named(tmp_path):
    result = cli_on_conf(
        tmp_path,
        '<smtpservers><smtpserver><bind>127.0.0.1:0</bind><handlerchain>\n'
        '<handler class="org.apache.james.smtpserver.fastfail.DNSRBLHandler"/>\n'
        '</handlerchain></smtpserver></smtpservers>\n', "check-config")
    assert result.returncode == 2
    assert "smtpserver.xml:2: handler: no installed handler provides " \
           "'org.apache.james.smtpserver.fastfail.DNSRBLHandler'" in result.stderr
