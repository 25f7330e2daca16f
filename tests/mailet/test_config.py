"""mailetcontainer.xml parsing."""

from __future__ import annotations

import pytest

from chainmail.config.errors import ConfigError
from chainmail.mailet.config import load_mailetcontainer

from .helpers import parse

ROOT = "/work/main"


def test_full_document():
    cfg = parse("""<mailetcontainer>
  <context><postmaster>admin@local.test</postmaster></context>
  <spooler><threads>4</threads><errorRepository>file://var/mail/err/</errorRepository></spooler>
  <processors>
    <processor state="root" enableJmx="true">
      <matcher name="both" match="org.apache.james.mailetcontainer.impl.matchers.And">
        <matcher match="HostIs=a.test"/>
        <matcher name="inner" match="Not"><matcher match="SenderIsNull"/></matcher>
      </matcher>
      <mailet match="HostIs=a.test, b.test" class="SetMailAttribute">
        <first.name>x</first.name>
        <repeat>1</repeat><repeat>2</repeat>
        <nested><deep>v</deep></nested>
        <onMailetException>ignore</onMailetException>
      </mailet>
      <mailet notmatch="both" class="Null" onMatchException="nomatch"/>
      <mailet class="Null"/>
    </processor>
  </processors>
</mailetcontainer>""")
    assert (cfg.postmaster, cfg.threads, cfg.error_repository) == ("admin@local.test", 4, "file://var/mail/err/")
    [root] = cfg.processors
    first, second, third = root.mailets
    assert first.matcher.condition == "a.test, b.test"
    assert dict(first.params) == {"first.name": "x", "repeat": "1,2", "nested.deep": "v"}
    assert first.on_mailet_exception == "ignore" and first.on_match_exception == "error"
    assert second.invert and second.matcher.name == "both" and second.on_match_exception == "nomatch"
    assert third.matcher.name == "All" and third.line == 17
    [both] = root.composites
    assert both.children[1].name == "inner" and both.children[1].operator == "Not"


@pytest.mark.parametrize("xml, message, line", [
    ("<mailetcontainer><processors/></mailetcontainer>", "no <processor state=\"root\">", 1),
    ("<mailetcontainer>\n<processors><processor state=\"root\">\n<mailet match=\"All\"/></processor></processors></mailetcontainer>",
     "needs a class attribute", 3),
    ("<mailetcontainer><processors><processor state=\"root\"/>\n<processor state=\"root\"/></processors></mailetcontainer>",
     "already defined", 2),
    ("<mailetcontainer><processors><processor state=\"root\"><mailet match=\"All\" notmatch=\"All\" class=\"Null\"/>"
     "</processor></processors></mailetcontainer>", "both match and notmatch", 1),
    ("<mailetcontainer><spooler><threads>-1</threads></spooler><processors><processor state=\"root\"/>"
     "</processors></mailetcontainer>", "out of range", 1),
    ("<mailetcontainer><processors><processor state=\"ghost\"/></processors></mailetcontainer>", "not a processor", 1),
    ("<mailetcontainer/>", "missing", 1),
])
def test_errors_name_file_and_line(xml, message, line):
    with pytest.raises(ConfigError) as err:
        parse(xml, "/etc/chainmail/mailetcontainer.xml")
    assert message in str(err.value)
    assert str(err.value).startswith(f"/etc/chainmail/mailetcontainer.xml:{line}:")


def test_missing_file_is_none(tmp_path):
    assert load_mailetcontainer(tmp_path / "mailetcontainer.xml") is None


def test_shipped_configuration_builds(context):
    from chainmail.mailet.engine import build_engine
    cfg = load_mailetcontainer(f"{ROOT}/conf/mailetcontainer.xml")
    assert cfg.warnings == ()
    context.states = frozenset(cfg.states)
    engine = build_engine(cfg, context)
    assert set(engine.states) >= {"root", "transport", "local-delivery", "relay", "error",
                                  "relay-denied", "local-address-error", "bounces"}
