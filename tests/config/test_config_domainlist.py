"""domainlist.xml reading."""

import socket

import pytest

from chainmail.config.domainlist import DomainListConfig, load_domainlist, normalise_domain
from chainmail.config.errors import ConfigError


def write(tmp_path, body: str) -> str:
    p = tmp_path / "domainlist.xml"
    p.write_text(f'<?xml version="1.0"?>\n<domainlist class="org.apache.james.domainlist.memory.MemoryDomainList">\n{body}\n</domainlist>\n')
    return str(p)


def test_james_format(tmp_path):
    path = write(tmp_path, """<domainnames>
  <domainname>Example.COM</domainname>
  <domainname>example.org</domainname>
  <domainname>example.com</domainname>
  <domainname></domainname>
</domainnames>
<autodetect>false</autodetect>
<autodetectIP>false</autodetectIP>
<defaultDomain>example.com</defaultDomain>""")
    cfg, warnings = load_domainlist(path)
    assert warnings == []
    assert cfg.domains == ("example.com", "example.org")
    assert cfg.default_domain == "example.com"
    assert not cfg.autodetect and not cfg.autodetect_ip
    assert cfg.file == path and cfg.line == 2
    assert cfg.contains("EXAMPLE.org") and cfg.contains("example.com.") and "example.org" in cfg
    assert not cfg.contains("example.net")


def test_default_domain_is_local(tmp_path):
    cfg, _ = load_domainlist(write(tmp_path, "<autodetect>false</autodetect><defaultDomain>Mail.Example.NET</defaultDomain>"))
    assert cfg.default_domain == "mail.example.net"
    assert cfg.domains == ("mail.example.net",)


def test_defaults_when_elements_absent(tmp_path):
    cfg, _ = load_domainlist(write(tmp_path, ""))
    assert cfg.default_domain == "localhost"
    assert cfg.autodetect and cfg.autodetect_ip
    assert cfg.domains[0] == "localhost"


def test_autodetect_adds_hostname_without_dns(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("DNS lookup attempted")

    monkeypatch.setattr(socket, "getaddrinfo", boom)
    monkeypatch.setattr(socket, "gethostbyname", boom)
    monkeypatch.setattr(socket, "gethostname", lambda: "MX1.Example.Test")
    cfg, _ = load_domainlist(write(tmp_path, "<domainnames><domainname>a.test</domainname></domainnames><autodetect>true</autodetect>"))
    assert cfg.domains == ("a.test", "localhost", "mx1.example.test")
    assert cfg.default_domain == "localhost"


def test_missing_file_gives_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    cfg, warnings = load_domainlist(str(tmp_path / "domainlist.xml"))
    assert warnings == []
    assert cfg.default_domain == "localhost"
    assert cfg.domains == ("localhost", "box")
    assert cfg.autodetect and cfg.autodetect_ip


def test_bad_domain_is_error_with_line(tmp_path):
    path = write(tmp_path, "<domainnames>\n<domainname>bad domain</domainname>\n</domainnames>")
    with pytest.raises(ConfigError) as exc:
        load_domainlist(path)
    assert exc.value.line == 4 and exc.value.element == "domainname"
    assert "invalid domain 'bad domain'" in str(exc.value) and "expected a domain name" in str(exc.value)


def test_bad_default_domain(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_domainlist(write(tmp_path, "<defaultDomain>user@example.com</defaultDomain>"))
    assert exc.value.element == "defaultDomain"


def test_bad_boolean(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_domainlist(write(tmp_path, "<autodetect>maybe</autodetect>"))
    assert exc.value.element == "autodetect" and exc.value.line == 3


def test_unknown_element_warned(tmp_path):
    _, warnings = load_domainlist(write(tmp_path, "<autodetect>false</autodetect>\n<domainName>x</domainName>"))
    assert [(w.line, w.element) for w in warnings] == [(4, "domainName")]


def test_wrong_root(tmp_path):
    p = tmp_path / "domainlist.xml"
    p.write_text("<domains/>")
    with pytest.raises(ConfigError, match="expected <domainlist>"):
        load_domainlist(str(p))


@pytest.mark.parametrize(
    "text,expected",
    [("Example.COM", "example.com"), ("localhost", "localhost"), ("a-b.cd.example", "a-b.cd.example"),
     ("example.com.", "example.com"), ("127.0.0.1", "[127.0.0.1]"), ("[127.0.0.1]", "[127.0.0.1]"),
     ("[IPv6:::1]", "[ipv6:::1]"), ("bücher.example", "xn--bcher-kva.example")],
)
def test_normalise_domain(text, expected):
    assert normalise_domain(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "-a.com", "a-.com", "a..com", "x@y.com", "1.2.3", "[nope]", "a" * 64 + ".com",
                                  "c_d.example"])
def test_normalise_domain_rejects(text):
    with pytest.raises(ValueError):
        normalise_domain(text)


def test_dataclass_defaults():
    d = DomainListConfig()
    assert d.contains("localhost") and d.default_domain == "localhost"


def test_one_domain_rule_for_the_file_and_the_store():
    """domainlist.xml and the domain store normalise alike: a name the file accepts is
    seeded into the store in the same form, and the same names are refused by both."""
    from chainmail.store.domains import normalize_domain
    for text in ("Bücher.Example.", "127.0.0.1", "[IPv6:0::1]", "MX.example.org"):
        assert normalise_domain(text) == normalize_domain(text)
    for bad in ("c_d.example", "1.2.3", "a..b"):
        with pytest.raises(ValueError, match="invalid"):
            normalise_domain(bad)
        with pytest.raises(ValueError, match="invalid"):
            normalize_domain(bad)


def test_contains_compares_canonical_forms():
    d = DomainListConfig(domains=(normalise_domain("bücher.example"), "[127.0.0.1]"))
    assert d.contains("BÜCHER.example.") and d.contains("xn--bcher-kva.example")
    assert d.contains("127.0.0.1") and not d.contains("not a domain")
