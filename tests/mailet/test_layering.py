"""The mailet package is layered: no module imports one that imports it back, mailets are
typed against the ``MailetContext`` protocol, and building an engine leaves the context as
it was.  The names plugins import from their old places still work."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chainmail.mailet
from chainmail.config.errors import ConfigError
from chainmail.mailet import api, context as context_mod, dsn, engine, outbox, spoolcodec
from chainmail.mailet.engine import build_engine

from .helpers import container_xml, parse

PACKAGE = Path(chainmail.mailet.__file__).parent


def _imports(path: Path) -> set[str]:
    """The modules of the package that ``path`` imports, anywhere in it (type-checking and
    function-level imports included: a cycle through them is still a cycle of design)."""
    found = set()
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1:
                name = base.split(".")[0]
                if name:
                    found.add(name)
                else:
                    found.update(a.name for a in node.names if a.name in modules)
            elif base.startswith("chainmail.mailet."):
                found.add(base.split(".")[2])
            elif base == "chainmail.mailet":
                found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chainmail.mailet."):
                    found.add(alias.name.split(".")[2])
    return found & modules


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_mailet_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert graph["api"] == set()            # the contract depends on nothing of the container
    assert graph["outbox"] == set()         # a leaf both the engine and the context use
    assert "context" not in graph["engine"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_names_keep_their_old_homes():
    assert engine.current_outputs is outbox.current_outputs
    assert context_mod.MailetContext is context_mod.ContainerContext
    for name in ("mail_from_queued", "envelope_of", "queue_id_of", "original_queue_id",
                 "ATTR_QUEUE_ID"):
        assert getattr(context_mod, name) is getattr(spoolcodec, name)
    for name in ("build_dsn", "status_of", "public_reason", "wanted_notifications"):
        assert getattr(context_mod, name) is getattr(dsn, name)


def test_the_protocol_names_every_member_the_container_context_has_for_mailets():
    members = {name for name in vars(api.MailetContext) if not name.startswith("_")}
    ctx = context_mod.ContainerContext()
    missing = [name for name in members if not hasattr(ctx, name)]
    assert not missing
    assert {"send_mail", "bounce", "has_processor", "repository", "postmaster"} <= members


XML = container_xml('<processor state="root"><mailet match="All" class="ToProcessor">'
                    '<processor>transport</processor></mailet></processor>'
                    '<processor state="transport"><mailet match="All" class="Null"/></processor>')


def test_build_engine_returns_the_states_and_leaves_the_context_alone(context):
    config = parse(XML)
    before = context.states
    built = build_engine(config, context)
    assert built.states == ("root", "transport")
    assert context.states == before == frozenset()


def test_a_context_given_the_states_lets_mailets_check_the_processors_they_name(stores):
    bad = container_xml('<processor state="root"><mailet match="All" class="ToProcessor">'
                        '<processor>nowhere</processor></mailet></processor>')
    config = parse(bad)
    with pytest.raises(ConfigError, match="no processor named 'nowhere'"):
        build_engine(config, stores.context(states=config.states))
    # without the states a context cannot tell, and nothing is checked
    assert build_engine(config, stores.context()).states == ("root",)


def test_check_config_still_checks_the_processors_mailets_name(tmp_path):
    from chainmail.mailet.cli import describe_container
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mailetcontainer.xml").write_text(container_xml(
        '<processor state="root">\n<mailet match="All" class="ToProcessor">'
        '<processor>nowhere</processor></mailet></processor>'))
    errors: list = []
    describe_container(str(conf), str(tmp_path / "var"), errors, [])
    assert [e.line for e in errors] == [2]
    assert "no processor named 'nowhere'" in str(errors[0])
