"""Every error of a configuration file in one pass, and parameters that know their own line.

An operator porting a James configuration fixes all of a file's mistakes in one round: a
server block, ``domainlist.xml`` and ``mailetcontainer.xml`` are read to their end, a bad
value is reported at its line and read as its default so that the rest is still checked.
"""

from __future__ import annotations

import io
import socket

import pytest

from chainmail.check_config import check_config
from chainmail.config import ConfigError, ConfigErrors, collect_config, load_config
from chainmail.config.domainlist import load_domainlist
from chainmail.config.server import load_servers, read_servers
from chainmail.config.xml import Parameters, element_parameters, parse_bytes
from chainmail.mailet.config import load_mailetcontainer
from chainmail.plugin_loader import ParameterReader, parameter_warnings

NO_DNS = "<dnsservice><servers><server>127.0.0.1:9</server></servers><autodiscover>false</autodiscover></dnsservice>\n"

THREE_ERRORS = """<smtpservers>
<smtpserver>
<jmxName>mx</jmxName>
<bind>127.0.0.1:0</bind>
<connectionLimit>many</connectionLimit>
<maxmessagesize>huge</maxmessagesize>
<handlerchain>
<handler class="NoSuchHandler"/>
</handlerchain>
</smtpserver>
</smtpservers>
"""


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("DNS lookup attempted")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, boom)


def lines(errors) -> list[tuple[int | None, str]]:
    return [(e.line, e.element) for e in errors]


# -- a server block ---------------------------------------------------------------------------


def test_a_block_reports_every_bad_value_at_its_line(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text(THREE_ERRORS)
    with pytest.raises(ConfigErrors) as exc:
        load_servers(str(p))
    assert lines(exc.value.errors) == [(5, "connectionLimit"), (6, "maxmessagesize")]
    # it is the first error too, so that code written for one error still works
    assert (exc.value.line, exc.value.element) == (5, "connectionLimit")
    text = str(exc.value).splitlines()
    assert text[0] == f"{p}:5: connectionLimit: 'many' is not an integer; expected a non-negative integer"
    assert text[1].startswith(f"{p}:6: maxmessagesize: ")


def test_read_servers_keeps_the_block_with_defaults_for_its_bad_values(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text(THREE_ERRORS)
    (server,), warnings, errors = read_servers(str(p))
    assert len(errors) == 2 and warnings == []
    assert server.connection_limit == 0 and server.max_message_size == 0
    assert [h.name for h in server.handlerchain.handlers] == ["NoSuchHandler"]


def test_errors_in_every_part_of_a_block(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("""<smtpservers>
<smtpserver>
<bind>127.0.0.1:0, nonsense</bind>
<gracefulShutdown>perhaps</gracefulShutdown>
<handlerTimeout>-1</handlerTimeout>
<verifyIdentity>loose</verifyIdentity>
<auth><announce>sometimes</announce></auth>
<tls socketTLS="true"><keystore>classpath:x.p12</keystore></tls>
<forbidBareNewline>maybe</forbidBareNewline>
<handlerchain><handler/></handlerchain>
</smtpserver>
</smtpservers>
""")
    _, _, errors = read_servers(str(p))
    assert lines(errors) == [(3, "bind"), (4, "gracefulShutdown"), (5, "handlerTimeout"),
                             (6, "verifyIdentity"), (7, "announce"), (8, "keystore"),
                             (9, "forbidBareNewline"), (10, "handler")]


def test_a_tls_section_with_an_error_is_read_as_no_tls(tmp_path):
    """So that check-config does not open the key material and report the mistake twice."""
    p = tmp_path / "smtpserver.xml"
    p.write_text('<smtpserver>\n<bind>127.0.0.1:0</bind>\n<tls startTLS="true" socketTLS="true">\n'
                 '<keystore>k.p12</keystore></tls></smtpserver>\n')
    (server,), _, errors = read_servers(str(p))
    assert lines(errors) == [(3, "tls")] and not server.tls.enabled


def test_errors_of_several_blocks_and_no_clash_from_a_block_read_with_defaults(tmp_path):
    """Two blocks whose bad binds both fall back to 0.0.0.0:25 do not also 'clash'."""
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpservers>\n<smtpserver><jmxName>a</jmxName><bind>x:1:2</bind></smtpserver>\n"
                 "<smtpserver><jmxName>b</jmxName><bind>y:1:2</bind></smtpserver>\n"
                 "<smtpserver><jmxName>b</jmxName><bind>127.0.0.1:0</bind>\n"
                 "<busyPoll>-3</busyPoll></smtpserver>\n</smtpservers>\n")
    servers, _, errors = read_servers(str(p))
    assert lines(errors) == [(2, "bind"), (3, "bind"), (5, "busyPoll")]
    assert [s.name for s in servers] == ["a", "b", "b"]


def test_a_clash_between_valid_blocks_is_still_an_error(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpservers>\n<smtpserver><jmxName>a</jmxName><bind>127.0.0.1:2525</bind></smtpserver>\n"
                 "<smtpserver><jmxName>a</jmxName><bind>127.0.0.1:2525</bind></smtpserver>\n</smtpservers>\n")
    _, _, errors = read_servers(str(p))
    assert lines(errors) == [(3, "jmxName"), (3, "bind")]


def test_every_error_of_a_disabled_block_is_a_warning_at_its_line(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text('<smtpservers>\n<smtpserver enabled="false">\n<connectionLimit>x</connectionLimit>\n'
                 '<busyPoll>y</busyPoll>\n</smtpserver>\n</smtpservers>\n')
    servers, warnings = load_servers(str(p))
    assert servers == ()
    assert [w.line for w in warnings] == [3, 4]
    assert all("disabled server block is not used and contains an error" in w.message for w in warnings)


# -- the whole directory ----------------------------------------------------------------------


def test_load_config_refuses_with_every_error_of_every_file(tmp_path):
    (tmp_path / "smtpserver.xml").write_text(THREE_ERRORS)
    (tmp_path / "domainlist.xml").write_text(
        "<domainlist>\n<domainnames>\n<domainname>bad domain</domainname>\n"
        "<domainname>-x.test</domainname>\n</domainnames>\n<autodetect>maybe</autodetect>\n</domainlist>\n")
    with pytest.raises(ConfigErrors) as exc:
        load_config(tmp_path)
    where = [(e.file.rsplit("/", 1)[-1], e.line) for e in exc.value.errors]
    assert where == [("smtpserver.xml", 5), ("smtpserver.xml", 6), ("domainlist.xml", 3),
                     ("domainlist.xml", 4), ("domainlist.xml", 6)]
    config, errors = collect_config(tmp_path)
    assert config is not None and len(errors) == 5


def test_one_error_is_raised_as_itself(tmp_path):
    (tmp_path / "smtpserver.xml").write_text("<smtpserver><busyPoll>x</busyPoll></smtpserver>\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert type(exc.value) is ConfigError and exc.value.element == "busyPoll"


def test_domainlist_reports_every_error(tmp_path):
    p = tmp_path / "domainlist.xml"
    p.write_text("<domainlist>\n<domainnames>\n<domainname>a b</domainname>\n<domainname>ok.test</domainname>\n"
                 "</domainnames>\n<defaultDomain>@x</defaultDomain>\n<autodetectIP>sure</autodetectIP>\n</domainlist>\n")
    with pytest.raises(ConfigErrors) as exc:
        load_domainlist(p)
    assert lines(exc.value.errors) == [(3, "domainname"), (6, "defaultDomain"), (7, "autodetectIP")]


def test_check_config_reports_the_three_errors_of_one_block(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(THREE_ERRORS)
    (conf / "dnsservice.xml").write_text(NO_DNS)
    out, err = io.StringIO(), io.StringIO()
    assert check_config(str(conf), str(tmp_path / "var"), out=out, err=err) == 1
    smtp = conf / "smtpserver.xml"
    report = err.getvalue().splitlines()
    assert report[0] == (f"chainmail: configuration error: {smtp}:5: connectionLimit: 'many' is "
                         "not an integer; expected a non-negative integer")
    assert report[1].startswith(f"chainmail: configuration error: {smtp}:6: maxmessagesize: ")
    assert report[2].startswith(f"chainmail: configuration error: {smtp}:8: handler: no installed "
                                "handler provides 'NoSuchHandler'")
    assert report[3] == "chainmail: 3 configuration error(s)"


# -- mailetcontainer.xml ----------------------------------------------------------------------


def test_mailetcontainer_reports_every_error(tmp_path):
    p = tmp_path / "mailetcontainer.xml"
    p.write_text("""<mailetcontainer>
<context><postmaster>a b</postmaster></context>
<spooler><threads>lots</threads></spooler>
<processors>
<processor state="root">
<mailet match="All"/>
<mailet match="All" notmatch="All" class="Null"/>
<matcher match="Or"/>
<mailet match="All" class="Null"/>
</processor>
<processor>
</processor>
<processor state="root"/>
<processor state="ghost"/>
</processors>
</mailetcontainer>
""")
    with pytest.raises(ConfigErrors) as exc:
        load_mailetcontainer(p)
    assert lines(exc.value.errors) == [(2, "postmaster"), (3, "threads"), (6, "mailet"), (7, "mailet"),
                                       (8, "matcher"), (11, "processor"), (13, "processor"),
                                       (14, "processor")]
    errors: list[ConfigError] = []
    config = load_mailetcontainer(p, errors)
    assert len(errors) == 8 and config is not None
    (root,) = config.processors   # what was valid is still read
    assert [m.class_name for m in root.mailets] == ["Null"] and root.mailets[0].line == 9


def test_mailet_parameters_know_their_own_lines(tmp_path):
    p = tmp_path / "mailetcontainer.xml"
    p.write_text("""<mailetcontainer>
<processors>
<processor state="root">
<mailet match="All" class="RemoteDelivery">
<maxRetrys>3</maxRetrys>
<onMailetException>ignore</onMailetException>
<mail.smtp><port>2525</port></mail.smtp>
</mailet>
</processor>
</processors>
</mailetcontainer>
""")
    config = load_mailetcontainer(p)
    assert config is not None
    (entry,) = config.processors[0].mailets
    assert dict(entry.params) == {"maxRetrys": "3", "mail.smtp.port": "2525"}
    assert entry.on_mailet_exception == "ignore"

    class RemoteDelivery:
        parameters = ("maxRetries", "mail.*")

    (warning,) = parameter_warnings(RemoteDelivery, entry.params, "mailet", "RemoteDelivery",
                                    str(p), entry.line)
    assert (warning.line, warning.element) == (5, "mailet RemoteDelivery: maxRetrys")
    assert "did you mean <maxRetries>?" in warning.message


# -- parameters -------------------------------------------------------------------------------


class _Config(ParameterReader):
    kind = "mailet"

    def __init__(self, params):
        self.params, self.name, self.file, self.line = params, "Thing", "m.xml", 4


def test_a_bad_parameter_value_names_the_parameters_line():
    el = parse_bytes(b'<x>\n<a>1</a>\n<b>no</b>\n<b>again</b>\n<c>\n<d>deep</d>\n</c>\n</x>', "m.xml")
    params = element_parameters(el)
    assert dict(params) == {"a": "1", "b": "no,again", "c.d": "deep"}
    assert [params.line_of(k) for k in ("a", "b", "c.d", "zz")] == [2, 3, 6, None]
    with pytest.raises(ConfigError) as exc:
        _Config(params).get_int("b", 1)
    assert str(exc.value) == "m.xml:3: mailet Thing: b: 'no,again' is not an integer"
    # a missing parameter has no line of its own: the element's
    with pytest.raises(ConfigError) as exc:
        _Config(params).require("zz")
    assert exc.value.line == 4
    # a plain mapping (a plugin's own tests) keeps the element's line
    with pytest.raises(ConfigError) as exc:
        _Config({"b": "no"}).get_bool("b", True)
    assert exc.value.line == 4


def test_parameters_are_a_read_only_mapping():
    params = Parameters({"a": "1", "b": "2"}, {"a": 3, "b": 4})
    assert params == {"a": "1", "b": "2"} and len(params) == 2 and list(params) == ["a", "b"]
    with pytest.raises(TypeError):
        params["a"] = "x"  # type: ignore[index]
    rest = params.without("a")
    assert dict(rest) == {"b": "2"} and rest.line_of("b") == 4 and rest.line_of("a") is None


def test_dnsservice_reports_every_error(tmp_path):
    from chainmail.remote.dns import load_dnsservice
    p = tmp_path / "dnsservice.xml"
    p.write_text("<dnsservice>\n<servers>\n<server>dns.example</server>\n<server>127.0.0.1</server>\n"
                 "<server>1.2.3.4:x</server>\n</servers>\n<timeout>soon</timeout>\n</dnsservice>\n")
    with pytest.raises(ConfigErrors) as exc:
        load_dnsservice(p)
    assert lines(exc.value.errors) == [(3, "server"), (5, "server"), (7, "timeout")]
