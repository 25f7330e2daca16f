"""Safe XML loading, error formatting and the typed readers."""

import pytest

from chainmail.config.errors import ConfigError, ConfigWarning
from chainmail.config.xml import Reader, parse_bool, parse_bytes, parse_file


def test_config_error_format_with_and_without_line():
    err = ConfigError("smtpserver.xml", 6, "bind", "'0.0.0.0:2x5' is not a valid port")
    assert str(err) == "smtpserver.xml:6: bind: '0.0.0.0:2x5' is not a valid port"
    assert (err.file, err.line, err.element, err.message) == ("smtpserver.xml", 6, "bind", "'0.0.0.0:2x5' is not a valid port")
    assert str(ConfigError("smtpserver.xml", None, "bind", "bad")) == "smtpserver.xml: bind: bad"


def test_config_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("f.xml", 3, "tls", "boom")))
    assert str(err) == "f.xml:3: tls: boom"


def test_config_warning_format():
    w = ConfigWarning("smtpserver.xml", 9, "bogus", "unknown element")
    assert str(w) == "warning: smtpserver.xml:9: bogus: unknown element"
    assert str(ConfigWarning("d.xml", None, "x", "y")) == "warning: d.xml: x: y"


def test_doctype_rejected_with_line(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text('<?xml version="1.0"?>\n<!DOCTYPE smtpservers>\n<smtpservers/>\n')
    with pytest.raises(ConfigError) as exc:
        parse_file(str(p))
    assert exc.value.line == 2
    assert exc.value.element == "DOCTYPE"
    assert str(exc.value).startswith(f"{p}:2: DOCTYPE: ")


def test_xxe_is_rejected_and_never_expanded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    p = tmp_path / "smtpserver.xml"
    p.write_text(
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE smtpservers [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        "<smtpservers><smtpserver><bind>&xxe;</bind></smtpserver></smtpservers>\n"
    )
    with pytest.raises(ConfigError) as exc:
        parse_file(str(p))
    assert "TOPSECRET" not in str(exc.value)
    assert "DOCTYPE" in str(exc.value)


def test_billion_laughs_rejected():
    data = (
        b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n<lolz>&lol2;</lolz>'
    )
    with pytest.raises(ConfigError):
        parse_bytes(data, "x.xml")


def test_syntax_error_gives_file_and_line(tmp_path):
    p = tmp_path / "smtpserver.xml"
    p.write_text("<smtpservers>\n  <smtpserver>\n    <bind>0.0.0.0:25</bnd>\n  </smtpserver>\n</smtpservers>\n")
    with pytest.raises(ConfigError) as exc:
        parse_file(str(p))
    assert exc.value.line == 3
    assert str(exc.value).startswith(f"{p}:3: xml: ")
    assert "bnd" in str(exc.value)
    assert "expected a well-formed XML document" in str(exc.value)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.xml"
    p.write_text("")
    with pytest.raises(ConfigError) as exc:
        parse_file(str(p))
    assert exc.value.line == 1
    with pytest.raises(ConfigError) as exc:
        parse_file(str(tmp_path / "nope.xml"))
    assert "cannot read file" in str(exc.value)


def test_comments_removed_and_lines_kept():
    root = parse_bytes(b"<a>\n<!-- c -->\n<b>x<!-- y -->y</b>\n</a>", "f.xml")
    (b,) = list(root)
    assert b.text == "xy"
    assert b.sourceline == 3


@pytest.mark.parametrize("value,expected", [("true", True), ("TRUE", True), (" False ", False), ("false", False)])
def test_parse_bool(value, expected):
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["yes", "1", "", "nope"])
def test_parse_bool_rejects(value):
    with pytest.raises(ValueError, match="expected true or false"):
        parse_bool(value)


def test_reader_bool_int_errors_carry_line():
    root = parse_bytes(b'<s enabled="nope">\n<a>x</a>\n<n>-1</n>\n<m>12</m>\n</s>', "s.xml")
    r = Reader("s.xml")
    with pytest.raises(ConfigError) as exc:
        r.attr_bool(root, "enabled", True)
    assert str(exc.value) == "s.xml:1: s[@enabled]: 'nope' is not a boolean; expected true or false"
    with pytest.raises(ConfigError) as exc:
        r.child_bool(root, "a", True)
    assert exc.value.line == 2
    with pytest.raises(ConfigError) as exc:
        r.child_int(root, "n", 0, minimum=0)
    assert str(exc.value) == "s.xml:3: n: -1 is out of range; expected a non-negative integer"
    assert r.child_int(root, "m", 0) == 12
    assert r.child_int(root, "absent", 7) == 7


def test_check_children_warns_unknown_and_repeated():
    root = parse_bytes(b"<s>\n<a/>\n<Bind/>\n<a/>\n</s>", "s.xml")
    r = Reader("s.xml")
    r.check_children(root, {"a", "bind"})
    assert [(w.line, w.element) for w in r.warnings] == [(3, "Bind"), (4, "a")]
    assert "case-sensitive" in r.warnings[0].message
    assert "only the first" in r.warnings[1].message
