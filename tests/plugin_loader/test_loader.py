"""The one plugin-loading module: resolution, configuration errors, run modes, typed
parameters and declared parameters, for handlers, mailets and matchers alike."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from chainmail import plugin_loader
from chainmail.chain import HandlerConfig
from chainmail.config.errors import ConfigError
from chainmail.mailet.api import MailetConfig

GROUP = "chainmail.test"
HERE = "tests.plugin_loader.test_loader"


class Greylist:
    parameters = ("url", "maxRetries", "errorProcessor", "mail.*", "policy")


class BadInit:
    def configure(self, config):
        raise ValueError("delay must be positive")


class KeyInit:
    def init(self, config):
        {}["missing"]


class Threaded:
    runs_on = "threads"


class AsyncioMethod:
    async def service(self, mail):
        return None
    service.runs_on = "asyncio"


class BrokenConstructor:
    def __init__(self):
        raise RuntimeError("no database")


def eps(**names):
    return {n: EntryPoint(n, v, GROUP) for n, v in names.items()}


def test_resolve_exact_then_unique_short_name():
    found = eps(**{"Greylist": f"{HERE}:Greylist", "com.example.Other": f"{HERE}:BadInit"})
    assert plugin_loader.resolve("Greylist", GROUP, "handler", eps=found)[0] is Greylist
    assert plugin_loader.resolve("org.example.Greylist", GROUP, "handler", eps=found)[0] is Greylist
    assert plugin_loader.resolve("Other", GROUP, "handler", eps=found)[0] is BadInit


def test_resolve_ambiguous_and_unknown_list_the_candidates():
    found = eps(**{"a.Greylist": f"{HERE}:Greylist", "b.Greylist": f"{HERE}:BadInit",
                   "Threaded": f"{HERE}:Threaded"})
    with pytest.raises(ConfigError) as info:
        plugin_loader.resolve("Greylist", GROUP, "mailet", "m.xml", 7, eps=found)
    assert str(info.value) == ("m.xml:7: mailet: 'Greylist' is ambiguous: it may mean any of "
                               "a.Greylist, b.Greylist; write the full name")
    with pytest.raises(ConfigError) as info:
        plugin_loader.resolve("Nope", GROUP, "matcher", "m.xml", 9, eps=found)
    assert "m.xml:9: matcher: no installed matcher provides 'Nope'" in str(info.value)
    assert "Threaded" in str(info.value)


def test_resolve_a_plugin_that_fails_to_import():
    found = eps(Gone=f"{HERE}_missing_module:Gone")
    with pytest.raises(ConfigError, match=r"f.xml:2: handler: 'Gone' .* failed to load: "
                                          r"ModuleNotFoundError"):
        plugin_loader.resolve("Gone", GROUP, "handler", "f.xml", 2, eps=found)


@pytest.mark.parametrize("cls,method,exc", [(BadInit, "configure", "ValueError: delay must be positive"),
                                            (KeyInit, "init", "KeyError: 'missing'")])
def test_an_exception_from_configure_becomes_a_config_error_with_file_and_line(cls, method, exc):
    with pytest.raises(ConfigError) as info:
        plugin_loader.configure(cls(), method, None, "handler", "Greylist", "smtpserver.xml", 12)
    err = info.value
    assert (err.file, err.line, err.element) == ("smtpserver.xml", 12, "handler Greylist")
    assert err.message == f"{method}() failed: {exc}"


def test_a_failing_constructor_is_a_config_error():
    with pytest.raises(ConfigError, match="x.xml:3: mailet Db: could not be created: "
                                          "RuntimeError: no database"):
        plugin_loader.instantiate(BrokenConstructor, "mailet", "Db", "x.xml", 3)


def test_run_mode_check_rejects_a_misspelt_or_unsupported_mode():
    with pytest.raises(ConfigError, match="runs_on='threads' is not a run mode a handler may use"):
        plugin_loader.check_run_modes(Threaded(), (), "handler", "T", "f.xml", 1)
    with pytest.raises(ConfigError, match=r"runs_on='asyncio' on service\(\) .* expected one of "
                                          "sync, trio, thread"):
        plugin_loader.check_run_modes(AsyncioMethod(), ("service",), "mailet", "A", "f.xml", 1,
                                      ("sync", "trio", "thread"))
    plugin_loader.check_run_modes(AsyncioMethod(), ("service",), "handler", "A", "f.xml", 1)
    assert plugin_loader.run_mode(AsyncioMethod(), AsyncioMethod().service) == "asyncio"


@pytest.mark.parametrize("config,element", [
    (HandlerConfig("Greylist", {"on": "yes", "n": "x", "empty": " "}, file="s.xml", line=4),
     "handler Greylist"),
    (MailetConfig("Greylist", {"on": "yes", "n": "x", "empty": " "}, file="s.xml", line=4),
     "mailet Greylist")])
def test_typed_getters_are_the_same_for_handlers_and_mailets(config, element):
    with pytest.raises(ConfigError) as info:
        config.get_bool("on", False)
    assert str(info.value) == f"s.xml:4: {element}: on: 'yes' is not a boolean; expected true or false"
    with pytest.raises(ConfigError, match=f"s.xml:4: {element}: n: 'x' is not an integer"):
        config.get_int("n", 1)
    with pytest.raises(ConfigError, match=f"s.xml:4: {element}: url: is required"):
        config.require("url")
    with pytest.raises(ConfigError, match="empty: is required"):
        config.require("empty")
    assert config.get_bool("empty", True) is True and config.get_int("absent", 7) == 7


def test_one_boolean_rule_everywhere():
    from chainmail.config.xml import parse_bool as xml_bool
    from chainmail.mailet.api import parse_bool as api_bool
    assert xml_bool is api_bool is plugin_loader.parse_bool
    assert api_bool(" TRUE ") is True and api_bool("false") is False
    for word in ("yes", "no", "1", "on"):
        with pytest.raises(ValueError, match="expected true or false"):
            api_bool(word)


@pytest.mark.parametrize("typo,meant", [("ur", "url"), ("maxRetrys", "maxRetries"),
                                        ("errorProcesor", "errorProcessor"),
                                        ("maxretries", "maxRetries")])
def test_an_unknown_parameter_gets_a_suggestion(typo, meant):
    assert plugin_loader.unknown_parameters(Greylist.parameters, [typo]) == [(typo, meant)]


def test_declared_names_cover_globs_and_nested_elements_and_container_attributes():
    params = {"mail.smtp.port": "25", "policy.timeout": "3", "onMailetException": "ignore",
              "zzz": "1"}
    assert plugin_loader.unknown_parameters(Greylist.parameters, params,
                                            plugin_loader.MAILET_ATTRIBUTES) == [("zzz", None)]


def test_warnings_name_file_line_and_suggestion_and_undeclared_classes_get_none():
    (warning,) = plugin_loader.parameter_warnings(Greylist, {"ur": "x", "url": "y"}, "mailet",
                                                  "Greylist", "mc.xml", 30)
    assert str(warning) == ("warning: mc.xml:30: mailet Greylist: ur: unknown parameter is "
                            "ignored; did you mean <url>?")
    assert plugin_loader.parameter_warnings(BadInit, {"anything": "1"}, "handler", "B", "f", 1) == []

    class Nothing:
        parameters = ()
    (warning,) = plugin_loader.parameter_warnings(Nothing, {"x": "1"}, "handler", "N", "f", 2)
    assert "N takes no parameters" in str(warning)


def test_every_shipped_plugin_declares_its_parameters():
    """Handlers, mailets and matchers of the distribution all declare what they read, so a
    misspelt parameter of any of them is warned about."""
    from chainmail.chain import HandlersPackage
    for group in (plugin_loader.HANDLER_GROUP, plugin_loader.MAILET_GROUP):
        for name, ep in plugin_loader.installed(group).items():
            if not ep.value.startswith("chainmail_plugins."):
                continue
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, HandlersPackage):
                continue
            if obj.__name__ == "SetMailAttribute":   # every child is an attribute name
                continue
            assert plugin_loader.declared_parameters(obj) is not None, name
    for name, ep in plugin_loader.installed(plugin_loader.MATCHER_GROUP).items():
        if ep.value.startswith("chainmail_plugins."):
            assert getattr(ep.load(), "takes_condition", None) in (True, False), name
