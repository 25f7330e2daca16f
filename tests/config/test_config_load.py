"""load_config, describe_server and the shipped conf/ directory."""

import re
import shutil
import socket
from pathlib import Path

import pytest

from chainmail.config import Config, ConfigError, describe_server, load_config
from chainmail.config.server import BindAddress

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SHIPPED = ROOT / "conf"
JAMES = HERE / "james"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("DNS lookup attempted")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, boom)


def test_shipped_conf():
    cfg = load_config(str(SHIPPED))
    assert isinstance(cfg, Config)
    assert cfg.warnings == ()
    s, smtps, submission = cfg.smtp_servers
    assert (smtps.name, smtps.bind, smtps.tls.socket_tls) == ("smtpserver-TLS", (BindAddress("0.0.0.0", 4650),), True)
    assert (submission.name, submission.bind, submission.tls.start_tls) == (
        "smtpserver-submission", (BindAddress("0.0.0.0", 5870),), True)
    for sub in (smtps, submission):
        assert sub.auth.required and sub.auth.require_ssl and sub.auth.announce == "always"
        assert sub.handlerchain.core_package == "org.apache.james.smtpserver.CoreCmdHandlerLoader"
    assert s.enabled and s.name == "smtpserver"
    assert s.bind == (BindAddress("0.0.0.0", 2525),)
    assert s.hello_name_autodetect and s.connection_timeout == 360
    assert (s.connection_limit, s.connection_limit_per_ip) == (0, 0)
    assert str(s.authorized_addresses) == "127.0.0.0/8"
    assert s.verify_identity == "strict" and s.max_message_size == 0
    assert s.address_brackets_enforcement and s.helo_ehlo_enforcement
    assert s.auth.announce == "never"
    assert not s.tls.socket_tls and not s.tls.start_tls
    assert s.handlerchain.core_package == "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"
    # The MX offers DSN, MT-PRIORITY and REQUIRETLS (James's hooks, after the core set).
    esmtp = [f"org.apache.james.smtpserver.{name}" for name in (
        "dsn.DSNEhloHook", "dsn.DSNMailParameterHook", "dsn.DSNRcptParameterHook",
        "dsn.DSNMessageHook", "priority.SmtpMtPriorityEhloHook",
        "priority.SmtpMtPriorityParameterHook", "priority.SmtpMtPriorityMessageHook",
        "tls.SmtpRequireTlsEhloHook", "tls.SmtpRequireTlsParameterHook",
        "tls.SmtpRequireTlsMessageHook")]
    assert [h.name for h in s.handlerchain.handlers] == [
        "org.apache.james.smtpserver.NoAuthCmdHandlerLoader", *esmtp]
    # LMTP is shipped disabled, on the loopback interface, with direct Maildir delivery.
    [lmtp] = cfg.lmtp_servers
    assert not lmtp.enabled and lmtp.name == "lmtpserver" and lmtp.kind == "lmtp"
    assert lmtp.bind == (BindAddress("127.0.0.1", 2424),)
    assert lmtp.handlerchain.core_package == "org.apache.james.lmtpserver.CoreCmdHandlerLoader"
    assert [h.name for h in lmtp.handlerchain.handlers] == esmtp[:4]   # DSN
    assert [s.name for s in cfg.servers] == ["smtpserver", "smtpserver-TLS", "smtpserver-submission"]
    assert cfg.domainlist.domains == ("localhost",)
    assert cfg.domainlist.default_domain == "localhost"
    assert not cfg.domainlist.autodetect and not cfg.domainlist.autodetect_ip
    assert cfg.servers == (s, smtps, submission)


def test_shipped_examples_load_when_uncommented(tmp_path):
    text = (SHIPPED / "smtpserver.xml").read_text()
    # Remove the comment markers that wrap the two example <smtpserver> blocks.
    text = re.sub(r"<!--\s*(<smtpserver enabled=\"true\">.*?</smtpserver>)\s*-->", r"\1", text, flags=re.S)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(text)
    cfg = load_config(str(conf))
    assert cfg.warnings == ()
    assert [s.name for s in cfg.smtp_servers] == ["smtpserver", "smtpserver-TLS", "smtpserver-submission"]
    plain, smtps, sub = cfg.smtp_servers
    assert smtps.bind[0].port == 4650 and smtps.tls.socket_tls and not smtps.tls.start_tls
    assert sub.bind[0].port == 5870 and sub.tls.start_tls and not sub.tls.socket_tls
    assert smtps.tls.keystore == str(conf / "keystore")
    for s in (smtps, sub):
        assert s.auth.announce == "always" and s.auth.required
        assert s.max_message_size == 25 * 2**20


def test_james_directory():
    cfg = load_config(str(JAMES))
    assert cfg.warnings == ()
    assert len(cfg.smtp_servers) == 3 and len(cfg.lmtp_servers) == 1
    assert len(cfg.servers) == 3  # the LMTP block is disabled
    assert cfg.domainlist.default_domain == "james.local"
    assert cfg.domainlist.domains == ("localhost", "james.local")


def test_missing_dir():
    with pytest.raises(ConfigError, match="configuration directory not found"):
        load_config("/nonexistent/chainmail/conf")


def test_missing_smtpserver_file_warns(tmp_path):
    cfg = load_config(str(tmp_path))
    assert cfg.smtp_servers == () and cfg.lmtp_servers == ()
    assert len(cfg.warnings) == 1 and "no SMTP server" in str(cfg.warnings[0])


def test_lmtp_file_and_cross_file_checks(tmp_path):
    shutil.copy(SHIPPED / "smtpserver.xml", tmp_path / "smtpserver.xml")
    (tmp_path / "lmtpserver.xml").write_text(
        "<lmtpservers>\n<lmtpserver><jmxName>lmtp</jmxName><bind>127.0.0.1:2424</bind></lmtpserver>\n</lmtpservers>\n")
    cfg = load_config(str(tmp_path))
    assert [s.kind for s in cfg.servers] == ["smtp", "smtp", "smtp", "lmtp"]

    (tmp_path / "lmtpserver.xml").write_text(
        "<lmtpservers>\n<lmtpserver><jmxName>smtpserver</jmxName><bind>127.0.0.1:2424</bind></lmtpserver>\n</lmtpservers>\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path))
    assert exc.value.element == "jmxName" and exc.value.file.endswith("lmtpserver.xml")

    (tmp_path / "lmtpserver.xml").write_text(
        "<lmtpservers>\n<lmtpserver><bind>0.0.0.0:2525</bind></lmtpserver>\n</lmtpservers>\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path))
    assert exc.value.element == "bind" and "0.0.0.0:2525 is already bound" in exc.value.message


def test_error_path_is_relative_as_given(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text("<smtpservers>\n<smtpserver>\n<bind>0.0.0.0:2x5</bind>\n</smtpserver>\n</smtpservers>\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_config("conf")
    assert str(exc.value).startswith("conf/smtpserver.xml:3: bind: '0.0.0.0:2x5' is not a valid port; expected host:port with port 0-65535")


def test_describe_server_lists_every_option():
    cfg = load_config(str(JAMES))
    rows = dict(describe_server(cfg.smtp_servers[2]))
    for key in ("[@enabled]", "jmxName", "bind", "connectionBacklog", "connectiontimeout", "connectionLimit",
                "connectionLimitPerIP", "helloName", "helloName[@autodetect]", "ioWorkerCount", "bossWorkerCount",
                "maxExecutorCount", "gracefulShutdown", "useEpoll", "proxyRequired", "proxyFirst",
                "tls[@socketTLS]", "tls[@startTLS]", "tls/keystore", "tls/keystoreType", "tls/secret",
                "auth/announce", "auth/requireSSL", "auth/plainAuthEnabled", "auth/required",
                "auth/oidc/jwksURL", "auth/oidc/aud", "authorizedAddresses", "verifyIdentity", "maxmessagesize",
                "maxLineLength", "heloEhloEnforcement", "addressBracketsEnforcement", "smtpGreeting",
                "disabledFeatures", "handlerTimeout", "handlerchain[@coreHandlersPackage]"):
        assert key in rows, key
    assert rows["jmxName"] == "smtpserver-authenticated"
    assert rows["bind"] == "0.0.0.0:587"
    assert rows["tls[@startTLS]"] == "true"
    assert rows["auth/announce"] == "forUnauthorizedAddresses"
    assert rows["authorizedAddresses"] == "127.0.0.0/8"
    assert rows["maxmessagesize"] == "0 (unlimited)"
    # secrets never printed
    text = repr(describe_server(cfg.smtp_servers[2]))
    assert "james72laBalle" not in text and "amFtZXM6c2VjcmV0" not in text


def test_describe_lmtp_server():
    cfg = load_config(str(JAMES))
    rows = dict(describe_server(cfg.lmtp_servers[0]))
    assert rows["[@enabled]"] == "false"
    assert "lmtpGreeting" in rows and "auth/announce" not in rows
