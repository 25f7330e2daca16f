"""A third-party handler package (tests/plugins/chainmail-test-plugin), installed with its own
entry points and named in <handlerchain>, as the command line loads it (``run``,
``check-config``).  Its handlers' replies in a session are tested without a server in
tests/session/test_plugin_replies.py and tests/plugins/test_test_plugin_handlers.py."""

from __future__ import annotations

import subprocess

from ..conftest import CHAINMAIL, cli_on_conf


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
        '<handler class="org.apache.james.smtpserver.fastfail.ValidRcptMX"/>\n'
        '</handlerchain></smtpserver></smtpservers>\n', "check-config")
    assert result.returncode == 1
    assert "smtpserver.xml:2: handler: no installed handler provides " \
           "'org.apache.james.smtpserver.fastfail.ValidRcptMX'" in result.stderr
