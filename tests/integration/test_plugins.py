"""A third-party handler package (tests/plugins/chainmail-test-plugin), installed with its own
entry points, named in <handlerchain> and driven through a real server.  Its handlers'
behaviour in a session is tested without a server in tests/plugins/test_test_plugin_handlers.py."""

from __future__ import annotations

import subprocess

from ..conftest import CHAINMAIL, cli_on_conf, raw_exchange

BLOCK_A = ('<handler class="RecipientBlocker"><blocked>blocked@local.test</blocked>'
           '<code>551</code><enhanced>5.7.1</enhanced><text>Handler A says no</text></handler>')


def test_deny_with_custom_code_and_text_reaches_the_client(chainmail_factory):
    server = chainmail_factory(handlers=BLOCK_A)
    data = raw_exchange(server.port, b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                        b"RCPT TO:<blocked@local.test>\r\nRCPT TO:<ok@local.test>\r\nQUIT\r\n")
    assert b"551 5.7.1 Handler A says no\r\n" in data
    assert b"250 2.1.5 Recipient <ok@local.test> OK\r\n" in data


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
    # check-config opens the TLS blocks' keystore as `run` does: make it first
    subprocess.run([*CHAINMAIL, "keystore", "--conf", str(conf)], capture_output=True, timeout=60,
                   check=True)
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
    assert result.returncode == 1
    assert "smtpserver.xml:2: handler: no installed handler provides " \
           "'org.apache.james.smtpserver.fastfail.DNSRBLHandler'" in result.stderr
