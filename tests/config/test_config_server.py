"""smtpserver.xml / lmtpserver.xml reading."""

import dataclasses
import os
import socket
from pathlib import Path

import pytest

from chainmail.config.errors import ConfigError
from chainmail.config.server import (
    LMTP_CORE_PACKAGE,
    SMTP_CORE_PACKAGE,
    AuthConfig,
    BindAddress,
    ServerConfig,
    TLSConfig,
    load_servers,
    resolve_path,
)

HERE = Path(__file__).resolve().parent
JAMES = HERE / "james"

OIDC = """<oidc>
  <oidcConfigurationURL>https://idp.example/.well-known/openid-configuration</oidcConfigurationURL>
  <jwksURL>https://idp.example/certs</jwksURL>
  <claim>email</claim>
  <scope>openid email</scope>
  <aud>chainmail</aud>
</oidc>"""


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("DNS lookup attempted")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, boom)


def doc(body: str, kind: str = "smtp", attrs: str = "") -> str:
    """A one-server document whose ``body`` starts on line 4."""
    return f'<?xml version="1.0"?>\n<{kind}servers>\n<{kind}server{attrs}>\n{body}\n</{kind}server>\n</{kind}servers>\n'


def load(tmp_path, body: str = "", kind: str = "smtp", attrs: str = ""):
    p = tmp_path / f"{kind}server.xml"
    p.write_text(doc(body, kind, attrs))
    servers, warnings = load_servers(str(p), kind)
    return servers, warnings, str(p)


def one(tmp_path, body: str = "", kind: str = "smtp") -> ServerConfig:
    servers, warnings, _ = load(tmp_path, body, kind)
    assert len(servers) == 1
    return servers[0]


def error(tmp_path, body: str, kind: str = "smtp") -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, body, kind)
    return exc.value


# -- defaults ---------------------------------------------------------------------------------


def test_smtp_defaults(tmp_path):
    s = one(tmp_path)
    assert s.kind == "smtp" and s.enabled and s.name == "smtpserver"
    assert s.bind == (BindAddress("0.0.0.0", 25),)
    assert (s.connection_backlog, s.connection_timeout, s.connection_limit, s.connection_limit_per_ip) == (200, 300, 0, 0)
    assert s.hello_name_autodetect and s.hello_name == (socket.gethostname() or "localhost")
    assert s.io_worker_count == 2 * (os.cpu_count() or 1)
    assert s.boss_worker_count is None and s.max_executor_count == 16
    assert s.graceful_shutdown and not s.use_epoll
    assert not s.proxy_required and s.proxy_first
    assert s.tls == TLSConfig(file=s.file, line=3)
    assert s.auth == AuthConfig(announce="never", require_ssl=True, plain_auth_enabled=True, required=False, oidc=None)
    assert s.authorized_addresses.empty
    assert s.verify_identity == "strict"
    assert s.max_message_size == 0 and s.max_line_length == 8192
    assert s.helo_ehlo_enforcement and s.address_brackets_enforcement
    assert s.smtp_greeting is None and s.disabled_features == ()
    assert s.handler_timeout == 30.0
    assert s.high_write_buffer_water_mark is None and s.low_write_buffer_water_mark is None
    assert s.handlerchain.core_package == SMTP_CORE_PACKAGE
    assert s.handlerchain.handlers == () and s.handlerchain.enable_jmx
    assert s.line == 3


def test_lmtp_defaults(tmp_path):
    s = one(tmp_path, kind="lmtp")
    assert s.kind == "lmtp" and s.name == "lmtpserver"
    assert s.bind == (BindAddress("0.0.0.0", 24),)
    assert s.handlerchain.core_package == LMTP_CORE_PACKAGE
    assert not s.helo_ehlo_enforcement and not s.address_brackets_enforcement
    assert s.verify_identity == "disabled"
    assert s.authorized_addresses.empty


def test_configs_are_frozen(tmp_path):
    s = one(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tls.socket_tls = True  # type: ignore[misc]
    assert isinstance(s.handlerchain.handlers, tuple) and isinstance(s.bind, tuple)
    assert hash(s) == hash(dataclasses.replace(s))


def test_missing_file_gives_no_servers(tmp_path):
    assert load_servers(str(tmp_path / "smtpserver.xml")) == ((), [])


def test_bare_smtpserver_root_accepted(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpserver>\n<bind>127.0.0.1:2525</bind>\n</smtpserver>\n")
    (s,), warnings = load_servers(str(p))
    assert s.bind == (BindAddress("127.0.0.1", 2525),) and warnings == []


def test_wrong_root_is_an_error(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<lmtpservers/>\n")
    with pytest.raises(ConfigError) as exc:
        load_servers(str(p))
    assert str(exc.value) == f"{p}:1: lmtpservers: unexpected root element; expected <smtpservers> containing <smtpserver> blocks"


def test_empty_servers_list_warns(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpservers>\n</smtpservers>\n")
    servers, warnings = load_servers(str(p))
    assert servers == () and len(warnings) == 1


# -- bind -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0.0.0.0:25", [("0.0.0.0", 25)]),
        ("127.0.0.1:0", [("127.0.0.1", 0)]),
        ("[::1]:2525", [("::1", 2525)]),
        ("[::]:25", [("::", 25)]),
        (":::25", [("::", 25)]),
        ("::1:25", [("::1", 25)]),
        ("mail.example.com:25", [("mail.example.com", 25)]),
        ("localhost:65535", [("localhost", 65535)]),
        ("0.0.0.0:25, [::]:25", [("0.0.0.0", 25), ("::", 25)]),
        ("127.0.0.1:25,127.0.0.1:587,", [("127.0.0.1", 25), ("127.0.0.1", 587)]),
    ],
)
def test_bind_ok(tmp_path, text, expected):
    s = one(tmp_path, f"<bind>{text}</bind>")
    assert [(b.host, b.port) for b in s.bind] == expected


def test_bind_str_form():
    assert str(BindAddress("::1", 25)) == "[::1]:25"
    assert str(BindAddress("0.0.0.0", 25)) == "0.0.0.0:25"


def test_bind_bad_port_message(tmp_path):
    e = error(tmp_path, "<jmxName>x</jmxName>\n<bogus/>\n<bind>0.0.0.0:2x5</bind>")
    assert e.line == 6 and e.element == "bind"
    assert str(e).startswith(
        f"{e.file}:6: bind: '0.0.0.0:2x5' is not a valid port; expected host:port with port 0-65535"
    )


@pytest.mark.parametrize("text", ["0.0.0.0:65536", "0.0.0.0", "25", ":25", "0.0.0.0:-1", "[::1]", "[nope]:25", "bad host:25", "1.2.3:25", ""])
def test_bind_bad(tmp_path, text):
    e = error(tmp_path, f"<bind>{text}</bind>")
    assert e.element == "bind" and e.line == 4
    assert "expected host:port" in e.message


def test_bind_duplicate_in_list(tmp_path):
    e = error(tmp_path, "<bind>0.0.0.0:25, 0.0.0.0:25</bind>")
    assert "listed twice" in e.message


# -- integers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["connectionLimit", "connectionLimitPerIP", "connectiontimeout", "connectionBacklog"])
def test_negative_counts_rejected(tmp_path, tag):
    e = error(tmp_path, f"<{tag}>-1</{tag}>")
    assert e.element == tag and e.line == 4
    assert "expected a non-negative integer" in e.message


def test_non_integer_rejected(tmp_path):
    e = error(tmp_path, "<connectionLimit>ten</connectionLimit>")
    assert str(e) == f"{e.file}:4: connectionLimit: 'ten' is not an integer; expected a non-negative integer"


def test_worker_counts(tmp_path):
    s = one(tmp_path, "<ioWorkerCount>3</ioWorkerCount><bossWorkerCount>1</bossWorkerCount><maxExecutorCount>8</maxExecutorCount>")
    assert (s.io_worker_count, s.boss_worker_count, s.max_executor_count) == (3, 1, 8)
    assert error(tmp_path, "<ioWorkerCount>0</ioWorkerCount>").element == "ioWorkerCount"


def test_limits_and_misc(tmp_path):
    s = one(tmp_path, """<connectiontimeout>360</connectiontimeout><connectionLimit>100</connectionLimit>
<connectionLimitPerIP>5</connectionLimitPerIP><gracefulShutdown>false</gracefulShutdown><useEpoll>true</useEpoll>
<proxyRequired>true</proxyRequired><proxyFirst>false</proxyFirst><handlerTimeout>2.5</handlerTimeout>""")
    assert (s.connection_timeout, s.connection_limit, s.connection_limit_per_ip) == (360, 100, 5)
    assert not s.graceful_shutdown and s.use_epoll and s.proxy_required and not s.proxy_first
    assert s.handler_timeout == 2.5


def test_handler_timeout_bad(tmp_path):
    e = error(tmp_path, "<handlerTimeout>soon</handlerTimeout>")
    assert e.element == "handlerTimeout" and "expected a number of seconds" in e.message


def test_busy_poll(tmp_path):
    assert one(tmp_path).busy_poll == 100
    assert one(tmp_path, "<busyPoll>0</busyPoll>").busy_poll == 0
    assert one(tmp_path, "<busyPoll>250</busyPoll>").busy_poll == 250
    for bad in ("20000", "-1", "fast"):
        e = error(tmp_path, f"<busyPoll>{bad}</busyPoll>")
        assert e.element == "busyPoll" and "between 0 and 10000" in e.message, e.message
        assert e.line == 4 and e.file.endswith("smtpserver.xml")


@pytest.mark.parametrize("kind", ["smtp", "lmtp"])
def test_forbid_bare_newline(tmp_path, kind):
    assert one(tmp_path, kind=kind).bare_newline == "reject"
    for value, expected in (("reject", "reject"), ("YES", "reject"), ("true", "reject"),
                            ("Normalize", "normalize")):
        body = f"<forbidBareNewline>{value}</forbidBareNewline>"
        assert one(tmp_path, body, kind).bare_newline == expected
    for bad in ("no", "false", "pass"):
        e = error(tmp_path, f"<forbidBareNewline>{bad}</forbidBareNewline>", kind)
        assert e.element == "forbidBareNewline" and "expected reject or normalize" in e.message
        assert e.line == 4 and e.file.endswith(f"{kind}server.xml")


def test_water_marks(tmp_path):
    s = one(tmp_path, "<highWriteBufferWaterMark>64K</highWriteBufferWaterMark>")
    assert s.high_write_buffer_water_mark == s.low_write_buffer_water_mark == 65536
    s = one(tmp_path, "<highWriteBufferWaterMark>64K</highWriteBufferWaterMark><lowWriteBufferWaterMark>1024</lowWriteBufferWaterMark>")
    assert (s.high_write_buffer_water_mark, s.low_write_buffer_water_mark) == (65536, 1024)


# -- helloName --------------------------------------------------------------------------------


def test_hello_name_explicit(tmp_path):
    s = one(tmp_path, '<helloName autodetect="false">mx.example.com</helloName>')
    assert s.hello_name == "mx.example.com" and not s.hello_name_autodetect


def test_hello_name_autodetect_false_empty_body_is_localhost(tmp_path):
    s = one(tmp_path, '<helloName autodetect="false"/>')
    assert s.hello_name == "localhost"


def test_hello_name_body_without_autodetect_is_ignored_with_warning(tmp_path):
    servers, warnings, _ = load(tmp_path, "<helloName>mx.example.com</helloName>")
    assert servers[0].hello_name_autodetect
    assert servers[0].hello_name == (socket.gethostname() or "localhost")
    assert [w.element for w in warnings] == ["helloName"] and warnings[0].line == 4


def test_hello_name_bad_autodetect(tmp_path):
    e = error(tmp_path, '<helloName autodetect="maybe"/>')
    assert e.element == "helloName[@autodetect]" and "expected true or false" in e.message


# -- auth / announce --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,expected",
    [
        ("", "never"),
        ("<auth><announce>never</announce></auth>", "never"),
        ("<auth><announce>always</announce></auth>", "always"),
        ("<auth><announce>ALWAYS</announce></auth>", "always"),
        ("<auth><announce>forUnauthorizedAddresses</announce></auth>", "forUnauthorizedAddresses"),
        ("<auth><announce>forunauthorizedaddresses</announce></auth>", "forUnauthorizedAddresses"),
        ("<authRequired>true</authRequired>", "forUnauthorizedAddresses"),
        ("<authRequired>TRUE</authRequired>", "forUnauthorizedAddresses"),
        ("<authRequired>announce</authRequired>", "always"),
        ("<authRequired>false</authRequired>", "never"),
        ("<authRequired>whatever</authRequired>", "never"),
        ("<auth><requireSSL>false</requireSSL></auth><authRequired>true</authRequired>", "forUnauthorizedAddresses"),
        ("<auth><announce>never</announce></auth><authRequired>true</authRequired>", "never"),
        ("<auth><announce>always</announce></auth><authRequired>false</authRequired>", "always"),
    ],
)
def test_announce_mapping(tmp_path, body, expected):
    assert one(tmp_path, body).auth.announce == expected


def test_invalid_announce(tmp_path):
    e = error(tmp_path, "<auth>\n<announce>sometimes</announce>\n</auth>")
    assert e.line == 5 and e.element == "announce"
    assert "expected never, always or forUnauthorizedAddresses" in e.message


def test_auth_flags(tmp_path):
    a = one(tmp_path, "<auth><requireSSL>false</requireSSL><plainAuthEnabled>false</plainAuthEnabled><required>true</required></auth>").auth
    assert (a.require_ssl, a.plain_auth_enabled, a.required, a.oidc) == (False, False, True, None)


def test_unsupported_auth_elements_warn(tmp_path):
    _, warnings, _ = load(tmp_path, "<auth><saslMechanisms>PLAIN</saslMechanisms></auth>")
    assert [w.element for w in warnings] == ["saslMechanisms"]
    assert "not supported" in warnings[0].message


# -- OIDC -------------------------------------------------------------------------------------


def test_oidc_full(tmp_path):
    body = OIDC.replace(
        "</oidc>",
        "<introspection><url>https://idp.example/introspect</url><auth>Basic eHl6</auth></introspection>"
        "<userinfo><url>https://idp.example/userinfo</url></userinfo></oidc>",
    )
    o = one(tmp_path, f"<auth>{body}</auth>").auth.oidc
    assert o.oidc_configuration_url == "https://idp.example/.well-known/openid-configuration"
    assert (o.jwks_url, o.claim, o.scope, o.aud) == ("https://idp.example/certs", "email", "openid email", "chainmail")
    assert (o.introspection_url, o.introspection_auth, o.userinfo_url) == (
        "https://idp.example/introspect", "Basic eHl6", "https://idp.example/userinfo")


@pytest.mark.parametrize("missing", ["oidcConfigurationURL", "jwksURL", "claim", "scope", "aud"])
def test_oidc_mandatory(tmp_path, missing):
    lines = [l for l in OIDC.splitlines() if f"<{missing}>" not in l]
    e = error(tmp_path, "<auth>\n" + "\n".join(lines) + "\n</auth>")
    assert e.line == 5  # the <oidc> element
    assert f"<{missing}> is mandatory" in e.message


def test_oidc_bad_url(tmp_path):
    e = error(tmp_path, "<auth>" + OIDC.replace("https://idp.example/certs", "not a url") + "</auth>")
    assert e.element == "jwksURL" and "expected an absolute http:// or https:// URL" in e.message


# -- authorizedAddresses / verifyIdentity -----------------------------------------------------


def test_authorized_addresses_with_warning_line(tmp_path):
    servers, warnings, _ = load(tmp_path, "<jmxName>a</jmxName>\n<authorizedAddresses>127.0.0.0/8, relay.example.com</authorizedAddresses>")
    s = servers[0]
    assert s.authorized_addresses.contains("127.0.0.1")
    assert [(w.line, w.element) for w in warnings] == [(5, "authorizedAddresses")]


@pytest.mark.parametrize(
    "value,expected",
    [("true", "strict"), ("TRUE", "strict"), ("strict", "strict"), ("Relaxed", "relaxed"),
     ("false", "disabled"), ("disabled", "disabled"), ("DISABLED", "disabled")],
)
def test_verify_identity(tmp_path, value, expected):
    assert one(tmp_path, f"<verifyIdentity>{value}</verifyIdentity>").verify_identity == expected


def test_verify_identity_bad(tmp_path):
    e = error(tmp_path, "<verifyIdentity>sometimes</verifyIdentity>")
    assert e.element == "verifyIdentity" and "expected strict, relaxed or disabled" in e.message


# -- sizes and lines --------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [("0", 0), ("1024", 1024 * 1024), ("10M", 10 * 2**20), ("1G", 2**30), ("512B", 512), ("UNLIMITED", 0)])
def test_max_message_size(tmp_path, value, expected):
    assert one(tmp_path, f"<maxmessagesize>{value}</maxmessagesize>").max_message_size == expected


def test_lmtp_max_message_size_accepts_units(tmp_path):
    assert one(tmp_path, "<maxmessagesize>10M</maxmessagesize>", kind="lmtp").max_message_size == 10 * 2**20
    assert one(tmp_path, "<maxmessagesize>100</maxmessagesize>", kind="lmtp").max_message_size == 100 * 1024


@pytest.mark.parametrize("value", ["-1", "ten", "10X"])
def test_max_message_size_bad(tmp_path, value):
    e = error(tmp_path, f"<maxmessagesize>{value}</maxmessagesize>")
    assert e.element == "maxmessagesize" and e.line == 4
    assert "expected a non-negative integer with an optional unit" in e.message


@pytest.mark.parametrize("value", [1000, 8192, 1048576])
def test_max_line_length_ok(tmp_path, value):
    assert one(tmp_path, f"<maxLineLength>{value}</maxLineLength>").max_line_length == value


@pytest.mark.parametrize("value", [999, 0, 1048577, -5])
def test_max_line_length_bounds(tmp_path, value):
    e = error(tmp_path, f"<maxLineLength>{value}</maxLineLength>")
    assert e.element == "maxLineLength" and e.line == 4
    assert "maxLineLength must be between 1000 and 1048576" in e.message


# -- SMTP-only options ------------------------------------------------------------------------


def test_smtp_options(tmp_path):
    s = one(tmp_path, """<heloEhloEnforcement>false</heloEhloEnforcement>
<addressBracketsEnforcement>false</addressBracketsEnforcement>
<smtpGreeting>Welcome to chainmail</smtpGreeting>
<disabledFeatures>pipelining</disabledFeatures>
<disabledFeatures>8bitmime, dsn</disabledFeatures>""")
    assert not s.helo_ehlo_enforcement and not s.address_brackets_enforcement
    assert s.smtp_greeting == "Welcome to chainmail"
    assert s.disabled_features == ("PIPELINING", "8BITMIME", "DSN")


def test_lmtp_hardwired_and_greeting(tmp_path):
    servers, warnings, _ = load(tmp_path, """<lmtpGreeting>LMTP here</lmtpGreeting>
<heloEhloEnforcement>true</heloEhloEnforcement>
<authorizedAddresses>127.0.0.1</authorizedAddresses>
<smtpGreeting>x</smtpGreeting>""", kind="lmtp")
    s = servers[0]
    assert s.smtp_greeting == "LMTP here"
    assert not s.helo_ehlo_enforcement and s.authorized_addresses.empty
    assert [(w.line, w.element) for w in warnings] == [(5, "heloEhloEnforcement"), (6, "authorizedAddresses"), (7, "smtpGreeting")]


def test_lmtp_greeting_in_smtp_warns(tmp_path):
    servers, warnings, _ = load(tmp_path, "<lmtpGreeting>x</lmtpGreeting>")
    assert servers[0].smtp_greeting is None
    assert [w.element for w in warnings] == ["lmtpGreeting"]


# -- TLS --------------------------------------------------------------------------------------


def test_tls_both_modes_conflict(tmp_path):
    e = error(tmp_path, '<jmxName>x</jmxName>\n<tls socketTLS="true" startTLS="true">\n<keystore>keystore</keystore>\n</tls>')
    assert e.line == 5 and e.element == "tls"
    assert "startTLS is only supported when using plain sockets" in e.message


@pytest.mark.parametrize("mode", ["socketTLS", "startTLS"])
def test_tls_requires_key_material(tmp_path, mode):
    e = error(tmp_path, f'<tls {mode}="true"><keystoreType>PKCS12</keystoreType></tls>')
    assert e.element == "tls" and e.line == 4
    assert "expected a <keystore>, or <privateKey> and <certificates>" in e.message


def test_tls_half_pem_pair(tmp_path):
    e = error(tmp_path, '<tls startTLS="true"><privateKey>key.pem</privateKey></tls>')
    assert "<certificates> is missing" in e.message


def test_tls_pem_pair_ok(tmp_path):
    t = one(tmp_path, '<tls startTLS="true"><privateKey>key.pem</privateKey><certificates>/etc/c.pem</certificates><secret>pw</secret></tls>').tls
    assert t.start_tls and not t.socket_tls and t.enabled
    assert t.private_key == str(tmp_path / "key.pem")
    assert t.certificates == "/etc/c.pem"
    assert t.secret == "pw"


def test_tls_bad_attribute_value(tmp_path):
    e = error(tmp_path, '<tls socketTLS="yes"/>')
    assert e.element == "tls[@socketTLS]" and "expected true or false" in e.message


def test_tls_full(tmp_path):
    t = one(tmp_path, """<tls socketTLS="true" startTLS="false">
  <keystore>file://conf/keystore</keystore>
  <keystoreType>PKCS12</keystoreType>
  <secret>s3cret</secret>
  <provider>org.bouncycastle.jce.provider.BouncyCastleProvider</provider>
  <algorithm>SunX509</algorithm>
  <supportedProtocols><protocol>TLSv1.2</protocol><protocol>TLSv1.3</protocol></supportedProtocols>
  <supportedCipherSuites><cipherSuite>TLS_AES_128_GCM_SHA256</cipherSuite></supportedCipherSuites>
  <clientAuth>
    <truststore>trust.p12</truststore><truststoreType>PKCS12</truststoreType><truststoreSecret>t</truststoreSecret>
    <enableOCSPCRLChecks>false</enableOCSPCRLChecks>
  </clientAuth>
  <sessionCache><size>100</size><timeout>1h</timeout></sessionCache>
</tls>""").tls
    assert t.socket_tls and t.keystore == os.path.normpath(str(tmp_path.parent / "conf" / "keystore"))
    assert (t.keystore_type, t.secret) == ("PKCS12", "s3cret")
    assert t.supported_protocols == ("TLSv1.2", "TLSv1.3")
    assert t.supported_cipher_suites == ("TLS_AES_128_GCM_SHA256",)
    assert t.client_auth and t.truststore == str(tmp_path / "trust.p12")
    assert (t.truststore_type, t.truststore_secret) == ("PKCS12", "t")
    assert t.line == 4


def test_tls_known_elements_not_warned(tmp_path):
    _, warnings, _ = load(tmp_path, """<jmxName>x</jmxName><useEpoll>false</useEpoll><gracefulShutdown>true</gracefulShutdown>
<tls socketTLS="false" startTLS="false"><provider>p</provider><algorithm>SunX509</algorithm>
<enableOCSPCRLChecks>false</enableOCSPCRLChecks><sessionCache><size>1</size></sessionCache></tls>""")
    assert warnings == []


def test_resolve_path(tmp_path):
    conf = str(tmp_path / "conf")
    home = str(tmp_path)
    assert resolve_path("file://conf/keystore", conf) == os.path.join(home, "conf", "keystore")
    assert resolve_path("file://var/keys/k.p12", conf) == os.path.join(home, "var", "keys", "k.p12")
    assert resolve_path("file:///etc/ssl/k.p12", conf) == "/etc/ssl/k.p12"
    assert resolve_path("/etc/ssl/k.p12", conf) == "/etc/ssl/k.p12"
    assert resolve_path("keystore", conf) == os.path.join(conf, "keystore")
    assert resolve_path("certs/../keystore", conf) == os.path.join(conf, "keystore")
    with pytest.raises(ValueError, match="unsupported location scheme"):
        resolve_path("classpath://keystore", conf)


def test_classpath_keystore_error_only_when_tls_enabled(tmp_path):
    t = one(tmp_path, '<tls socketTLS="false"><keystore>classpath://keystore</keystore></tls>').tls
    assert t.keystore == "classpath://keystore"
    e = error(tmp_path, '<tls socketTLS="true">\n<keystore>classpath://keystore</keystore></tls>')
    assert e.element == "keystore" and e.line == 5


def test_conf_dir_anchors_relative_paths(tmp_path):
    p = tmp_path / "elsewhere.xml"
    p.write_text(doc('<tls startTLS="true"><keystore>ks.p12</keystore></tls>'))
    (s,), _ = load_servers(str(p), conf_dir=str(tmp_path / "conf"))
    assert s.tls.keystore == str(tmp_path / "conf" / "ks.p12")


# -- unknown elements -------------------------------------------------------------------------


def test_unknown_element_warning_with_line(tmp_path):
    servers, warnings, path = load(tmp_path, "<jmxName>x</jmxName>\n<conectiontimeout>10</conectiontimeout>\n<BIND>1</BIND>")
    assert servers[0].connection_timeout == 300
    assert [(w.file, w.line, w.element) for w in warnings] == [(path, 5, "conectiontimeout"), (path, 6, "BIND")]
    assert str(warnings[0]).startswith(f"warning: {path}:5: conectiontimeout: unknown element")


def test_unknown_elements_in_nested_blocks(tmp_path):
    _, warnings, _ = load(tmp_path, "<auth>\n<anounce>always</anounce>\n</auth>\n<tls>\n<keyStore>x</keyStore>\n</tls>")
    assert [(w.line, w.element) for w in warnings] == [(5, "anounce"), (8, "keyStore")]


def test_handler_children_are_not_warned(tmp_path):
    servers, warnings, _ = load(tmp_path, """<handlerchain>
  <handler class="org.apache.james.smtpserver.fastfail.DNSRBLHandler">
    <getDetail>true</getDetail>
    <rblservers><blacklist>bl.example</blacklist><blacklist>bl2.example</blacklist></rblservers>
    <some.dotted.name>v</some.dotted.name>
  </handler>
</handlerchain>""")
    assert warnings == []
    (h,) = servers[0].handlerchain.handlers
    assert h.name == "org.apache.james.smtpserver.fastfail.DNSRBLHandler"
    assert dict(h.params) == {
        "getDetail": "true",
        "rblservers.blacklist": "bl.example,bl2.example",
        "some.dotted.name": "v",
    }
    assert h.element.tag == "handler" and h.line == 5 and h.file.endswith("smtpserver.xml")


# -- handler chain ----------------------------------------------------------------------------


def test_handlerchain_attributes(tmp_path):
    c = one(tmp_path, """<handlerchain coreHandlersPackage="org.apache.james.smtpserver.NoAuthCmdHandlerLoader" enableJmx="false">
<handler class="a.B"/><handler class="c.D"><x>1</x><x>2</x></handler>
</handlerchain>""").handlerchain
    assert c.core_package == "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"
    assert not c.enable_jmx
    assert [h.name for h in c.handlers] == ["a.B", "c.D"]
    assert dict(c.handlers[1].params) == {"x": "1,2"}
    assert c.line == 4


def test_handler_without_class(tmp_path):
    e = error(tmp_path, "<handlerchain>\n<handler/>\n</handlerchain>")
    assert e.line == 5 and e.element == "handler" and "needs a class attribute" in e.message


def test_handler_params_are_read_only(tmp_path):
    c = one(tmp_path, '<handlerchain><handler class="a.B"><x>1</x></handler></handlerchain>').handlerchain
    with pytest.raises(TypeError):
        c.handlers[0].params["x"] = "2"  # type: ignore[index]


# -- several servers --------------------------------------------------------------------------


def test_duplicate_jmx_name(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpservers>\n<smtpserver><bind>0.0.0.0:25</bind></smtpserver>\n<smtpserver><bind>0.0.0.0:26</bind></smtpserver>\n</smtpservers>")
    with pytest.raises(ConfigError) as exc:
        load_servers(str(p))
    assert exc.value.line == 3 and exc.value.element == "jmxName"
    assert "'smtpserver' is already used by the server at line 2" in exc.value.message


def test_duplicate_bind(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpservers>\n<smtpserver><jmxName>a</jmxName></smtpserver>\n<smtpserver><jmxName>b</jmxName></smtpserver>\n</smtpservers>")
    with pytest.raises(ConfigError) as exc:
        load_servers(str(p))
    assert exc.value.element == "bind" and "0.0.0.0:25 is already bound" in exc.value.message


def test_port_zero_may_repeat_and_disabled_names_may_clash(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("""<smtpservers>
<smtpserver><jmxName>a</jmxName><bind>127.0.0.1:0</bind></smtpserver>
<smtpserver><jmxName>b</jmxName><bind>127.0.0.1:0</bind></smtpserver>
<smtpserver enabled="false"><jmxName>a</jmxName><bind>127.0.0.1:0</bind></smtpserver>
</smtpservers>""")
    servers, warnings = load_servers(str(p))
    assert [(s.name, s.enabled) for s in servers] == [("a", True), ("b", True), ("a", False)]


def test_disabled_block_with_error_is_skipped_with_warning(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("""<smtpservers>
<smtpserver enabled="false"><tls socketTLS="true"/></smtpserver>
<smtpserver><bind>127.0.0.1:0</bind></smtpserver>
</smtpservers>""")
    servers, warnings = load_servers(str(p))
    assert len(servers) == 1 and servers[0].enabled
    assert len(warnings) == 1 and warnings[0].line == 2 and "disabled server block" in warnings[0].message


def test_enabled_attribute_bad(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text('<smtpservers>\n<smtpserver enabled="nope"/>\n</smtpservers>')
    with pytest.raises(ConfigError) as exc:
        load_servers(str(p))
    assert str(exc.value) == f"{p}:2: smtpserver[@enabled]: 'nope' is not a boolean; expected true or false"


# -- James sample -----------------------------------------------------------------------------


def test_james_sample_loads_unchanged():
    servers, warnings = load_servers(str(JAMES / "smtpserver.xml"))
    assert warnings == []
    assert [s.name for s in servers] == ["smtpserver-global", "smtpserver-TLS", "smtpserver-authenticated"]
    assert [s.bind for s in servers] == [(BindAddress("0.0.0.0", p),) for p in (25, 465, 587)]
    assert all(s.enabled and s.kind == "smtp" for s in servers)
    g, tls, sub = servers

    assert not g.tls.socket_tls and not g.tls.start_tls
    assert tls.tls.socket_tls and not tls.tls.start_tls
    assert sub.tls.start_tls and not sub.tls.socket_tls
    keystore = os.path.normpath(str(JAMES.parent / "conf" / "keystore"))
    for s in servers:
        assert s.tls.keystore == keystore
        assert s.tls.keystore_type == "PKCS12" and s.tls.secret == "james72laBalle"
        assert s.connection_timeout == 360 and s.connection_backlog == 200
        assert s.authorized_addresses.contains("127.0.0.1") and not s.authorized_addresses.contains("10.0.0.1")
        assert s.verify_identity == "strict" and s.address_brackets_enforcement
        assert s.smtp_greeting == "Apache JAMES awesome SMTP Server"
        assert s.max_message_size == 0
        assert [h.name for h in s.handlerchain.handlers][0] == "org.apache.james.smtpserver.fastfail.ValidRcptHandler"

    assert g.auth == AuthConfig(announce="never", require_ssl=True, plain_auth_enabled=True, required=False)
    assert g.handlerchain.core_package == "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"
    for s in (tls, sub):
        assert s.auth.announce == "forUnauthorizedAddresses"
        assert s.auth.require_ssl and s.auth.required and s.auth.plain_auth_enabled
        assert s.handlerchain.core_package == SMTP_CORE_PACKAGE
        assert [h.name for h in s.handlerchain.handlers] == [
            "org.apache.james.smtpserver.fastfail.ValidRcptHandler",
            "org.apache.james.smtpserver.CoreCmdHandlerLoader",
        ]
    assert tls.auth.oidc is None
    assert sub.auth.oidc is not None and sub.auth.oidc.claim == "email" and sub.auth.oidc.aud == "james"


def test_james_lmtp_sample():
    (s,), warnings = load_servers(str(JAMES / "lmtpserver.xml"), "lmtp")
    assert warnings == []
    assert not s.enabled and s.kind == "lmtp"
    assert s.bind == (BindAddress("127.0.0.1", 24),) and s.connection_timeout == 1200
    assert s.handlerchain.core_package == LMTP_CORE_PACKAGE
