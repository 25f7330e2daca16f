"""RemoteDelivery parameters: James's defaults and parsing rules (reference §6.3, §8 items 86-90)."""

from __future__ import annotations

import pytest

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import MailetConfig
from chainmail.remote.config import (
    DEFAULT_DELAY_MS, Delay, DelayError, DelaysAndMaxRetry, RemoteDeliveryConfig,
    delays_and_max_retry, parse_delay, parse_delay_list, parse_duration_ms, parse_gateways,
    split_host_port,
)

H6 = DEFAULT_DELAY_MS


def cfg(**params) -> RemoteDeliveryConfig:
    return RemoteDeliveryConfig.from_params(params, file="mailetcontainer.xml", line=12)


# ------------------------------------------------------------------------- item 86: defaults

def test_defaults():
    c = cfg()
    assert c.outgoing == "outgoing"
    assert c.debug is False
    assert c.timeout_ms == 180000
    assert c.connection_timeout_ms == 60000
    assert c.send_partial is False
    assert c.bounce_processor is None and c.on_success is None
    assert c.start_tls is False and c.ssl_enable is False
    assert c.verify_server_identity is True
    assert c.bind is None
    assert c.max_dns_problem_retries == 0
    assert c.use_priority is False
    assert c.load_balancing is True
    assert c.ssl_trust_all_certs is False
    assert c.helo_name == "localhost"
    assert c.max_retries == 5
    assert c.delays.expanded_ms == (H6,) * 5
    assert c.gateways == () and c.gateway_username is None and c.gateway_password is None
    assert c.mail_properties == {}
    assert c.warnings == ()


def test_helo_name_defaults_to_the_default_domain():
    assert RemoteDeliveryConfig.from_params({}, default_domain="example.org").helo_name == "example.org"
    assert RemoteDeliveryConfig.from_params({"heloName": "mx.example.org"},
                                            default_domain="example.org").helo_name == "mx.example.org"


def test_values_are_read():
    c = cfg(outgoing="out2", timeout="1000", connectiontimeout="2000", sendpartial="true",
            bounceProcessor="bounces", onSuccess="sent", startTLS="TRUE", sslEnable="true",
            verifyServerIdentity="false", bind="127.0.0.2", usePriority="true", debug="true",
            loadBalancing="false", sslTrustAllCerts="true", maxDnsProblemRetries="3")
    assert (c.outgoing, c.timeout_ms, c.connection_timeout_ms) == ("out2", 1000, 2000)
    assert c.send_partial and c.start_tls and c.ssl_enable and c.use_priority and c.debug
    assert not c.verify_server_identity and not c.load_balancing and c.ssl_trust_all_certs
    assert (c.bounce_processor, c.on_success, c.bind) == ("bounces", "sent", "127.0.0.2")
    assert c.max_dns_problem_retries == 3


@pytest.mark.parametrize("key,attr,default", [
    ("sendpartial", "send_partial", False), ("startTLS", "start_tls", False),
    ("sslEnable", "ssl_enable", False), ("verifyServerIdentity", "verify_server_identity", True),
    ("usePriority", "use_priority", False), ("debug", "debug", False),
    ("loadBalancing", "load_balancing", True),
])
def test_unparsable_booleans_fall_back_to_the_default_with_a_warning(key, attr, default):
    c = cfg(**{key: "maybe"})
    assert getattr(c, attr) is default
    assert len(c.warnings) == 1
    assert key in str(c.warnings[0]) and "mailetcontainer.xml:12" in str(c.warnings[0])


@pytest.mark.parametrize("key,attr,default", [
    ("timeout", "timeout_ms", 180000), ("connectiontimeout", "connection_timeout_ms", 60000),
])
def test_timeouts(key, attr, default):
    assert getattr(cfg(**{key: "abc"}), attr) == default
    assert key in str(cfg(**{key: "abc"}).warnings[0])
    assert getattr(cfg(**{key: "0"}), attr) == 0          # zero kept
    assert getattr(cfg(**{key: "-5"}), attr) == -5        # negative kept
    assert getattr(cfg(**{key: "1234"}), attr) == 1234


def test_connection_timeout_key_is_lower_case():
    c = cfg(connectionTimeout="5")
    assert c.connection_timeout_ms == 60000
    assert "connectionTimeout" in str(c.warnings[0]) and "connectiontimeout" in str(c.warnings[0])


def test_invalid_max_dns_problem_retries_is_an_error_naming_file_line_and_parameter():
    with pytest.raises(ConfigError) as err:
        cfg(maxDnsProblemRetries="many")
    assert str(err.value).startswith("mailetcontainer.xml:12: mailet RemoteDelivery: maxDnsProblemRetries:")


# -------------------------------------------------------------------------- item 87: gateways

def test_gateway_list():
    assert cfg(gateway="a, b").gateways == ("a", "b")
    assert cfg(gateway="a, b", gatewayPort="25").gateways == ("a:25", "b:25")
    assert cfg(gateway="a:2525, b", gatewayPort="25").gateways == ("a:2525", "b:25")
    assert cfg(gateway="a:2525, b").gateway_hosts == (("a", 2525), ("b", None))
    assert cfg(gateway="a,,b,").gateways == ("a", "b")


def test_gateway_ipv6():
    assert parse_gateways("[::1]:2525, ::1", "25") == ("[::1]:2525", "[::1]:25")
    assert split_host_port("[::1]:2525") == ("::1", 2525)
    assert split_host_port("::1") == ("::1", None)
    assert split_host_port("host") == ("host", None)


def test_bad_gateway_port_is_an_error():
    with pytest.raises(ConfigError, match="gateway"):
        cfg(gateway="a:notaport")
    with pytest.raises(ConfigError, match="gateway"):
        cfg(gateway="a:70000")


def test_gateway_credentials():
    c = cfg(gateway="a", gatewayUsername="u", gatewayPassword="p")
    assert (c.gateway_username, c.gateway_password, c.is_auth) == ("u", "p", True)
    # ignored without a gateway
    c = cfg(gatewayUsername="u", gatewayPassword="p")
    assert (c.gateway_username, c.gateway_password, c.is_auth) == (None, None, False)
    # the lower-case alias, and the camel-case name wins
    assert cfg(gateway="a", gatewayusername="alias").gateway_username == "alias"
    assert cfg(gateway="a", gatewayusername="alias", gatewayUsername="u").gateway_username == "u"


# ------------------------------------------------------------------------ item 88: mail.* props

def test_mail_properties_are_copied():
    c = cfg(**{"mail.smtp.starttls.required": "true", "mail.smtp.ehlo": "false"})
    assert c.mail_properties == {"mail.smtp.starttls.required": "true", "mail.smtp.ehlo": "false"}
    assert c.starttls_required is True


def test_mail_properties_override():
    assert cfg(startTLS="true", **{"mail.smtp.starttls.enable": "false"}).starttls_enabled is False
    assert cfg(**{"mail.smtp.starttls.enable": "true"}).starttls_enabled is True
    assert cfg(verifyServerIdentity="true",
               **{"mail.smtp.ssl.checkserveridentity": "false"}).check_server_identity is False


def test_mail_port_properties_must_be_ports():
    assert cfg(**{"mail.smtp.port": "2525"}).mail_properties["mail.smtp.port"] == "2525"
    for bad in ("x", "0", "70000"):
        with pytest.raises(ConfigError, match="mail.smtp.port"):
            cfg(**{"mail.smtp.port": bad})


def test_mail_property_without_value_is_an_error():
    with pytest.raises(ConfigError, match="mail.smtp.foo"):
        RemoteDeliveryConfig.from_params({"mail.smtp.foo": None})


# ------------------------------------------------------------------------ item 89: one delay

@pytest.mark.parametrize("text,expected", [
    ("36", Delay(1, 36)),
    ("0", Delay(1, 0)),
    ("1s", Delay(1, 1000)),
    ("2*36", Delay(2, 36)),
    ("2*36s", Delay(2, 36000)),
    ("2 * 36 s", Delay(2, 36000)),
    ("5000", Delay(1, 5000)),
    ("2*3600000", Delay(2, 3600000)),
    ("3 minutes", Delay(1, 180000)),
    ("1h", Delay(1, 3600000)),
    ("1 day", Delay(1, 86400000)),
    ("1w", Delay(1, 7 * 86400000)),
    ("10msecs", Delay(1, 10)),
])
def test_parse_delay(text, expected):
    assert parse_delay(text) == expected


@pytest.mark.parametrize("text", ["-1s", "-1*36", "36*", "2*", "invalid", "36invalid", "", "*36"])
def test_parse_delay_errors(text):
    with pytest.raises(DelayError):
        parse_delay(text)


def test_duration_units():
    assert parse_duration_ms("2 seconds") == 2000
    assert parse_duration_ms("1 month") == 31556952 * 1000 // 12
    assert parse_duration_ms("1 year") == 31556952 * 1000
    assert parse_duration_ms("5 MIN") == 300000
    with pytest.raises(DelayError):
        parse_duration_ms("-1")


# ------------------------------------------------------------- item 90: DelaysAndMaxRetry

def test_one_delay():
    d = delays_and_max_retry(1, "1s")
    assert d == DelaysAndMaxRetry(1, (Delay(1, 1000),))


def test_two_delays():
    d = delays_and_max_retry(2, "1s,2s")
    assert d.max_retries == 2 and d.expanded_ms == (1000, 2000)


def test_attempts_above_max_retries_raise_max_retries():
    d = delays_and_max_retry(1, "1s,2*2s")
    assert d.max_retries == 3 and d.delays == (Delay(1, 1000), Delay(2, 2000))


def test_max_retries_above_attempts_extends_the_last_delay():
    d = delays_and_max_retry(4, "1s,2*2s")
    assert d.max_retries == 4 and d.delays == (Delay(1, 1000), Delay(3, 2000))


def test_no_delay_time_gives_one_attempt_after_6_hours():
    assert delays_and_max_retry(1, None) == DelaysAndMaxRetry(1, (Delay(1, H6),))


def test_empty_items_are_ignored():
    assert delays_and_max_retry(2, "1s,,2s").expanded_ms == (1000, 2000)


def test_invalid_item_stops_parsing_earlier_items_kept():
    problems: list[str] = []
    assert parse_delay_list("1s,invalid,2s", problems) == [Delay(1, 1000)]
    assert "invalid" in problems[0]
    d = delays_and_max_retry(3, "1s,invalid,2s")
    assert d == DelaysAndMaxRetry(3, (Delay(3, 1000),))


def test_no_retries_and_no_delays():
    assert delays_and_max_retry(0, "") == DelaysAndMaxRetry(0, ())


def test_retries_without_delays_is_an_error():
    with pytest.raises(DelayError):
        delays_and_max_retry(2, "")


def test_zero_max_retries_without_delay_time_is_one():
    assert delays_and_max_retry(0, None) == DelaysAndMaxRetry(1, (Delay(1, H6),))
    assert cfg(maxRetries="0").max_retries == 1


def test_reference_examples_in_the_parameter_table():
    c = cfg(delayTime="5000, 100000, 500000", maxRetries="3")
    assert c.max_retries == 3 and c.delays.expanded_ms == (5000, 100000, 500000)
    c = cfg(delayTime="5000, 100000, 500000", maxRetries="5")
    assert c.max_retries == 5 and c.delays.expanded_ms == (5000, 100000, 500000, 500000, 500000)
    c = cfg(delayTime="1s,2*2s", maxRetries="1")
    assert c.max_retries == 3
    c = cfg(delayTime="2 * 36 s")
    assert c.max_retries == 5 and c.delays.expanded_ms == (36000,) * 5


def test_unusable_schedule_falls_back_to_defaults_with_a_warning():
    for params in ({"maxRetries": "2", "delayTime": ""}, {"maxRetries": "x", "delayTime": "1s"},
                   {"delayTime": "invalid"}):
        c = cfg(**params)
        assert c.delays == DelaysAndMaxRetry.defaults(), params
        assert any("maxRetries" in str(w) for w in c.warnings)


def test_invalid_delay_item_is_warned():
    c = cfg(delayTime="1s,invalid,2s", maxRetries="3")
    assert c.delays.expanded_ms == (1000, 1000, 1000)
    assert any("delayTime" in str(w) and "invalid" in str(w) for w in c.warnings)


def test_delay_before_retry():
    d = delays_and_max_retry(3, "1s, 2s")
    assert [d.delay_before_retry(n) for n in (1, 2, 3, 4)] == [1000, 2000, 2000, H6]


def test_from_mailet_config():
    class Ctx:
        default_domain = "example.net"

    mc = MailetConfig(name="org.apache.james.transport.mailets.RemoteDelivery",
                      params={"delayTime": "1s", "maxRetries": "1", "maxDnsProblemRetries": "x"},
                      context=Ctx(), file="conf/mailetcontainer.xml", line=40)
    with pytest.raises(ConfigError) as err:
        RemoteDeliveryConfig.from_mailet_config(mc)
    assert str(err.value).startswith("conf/mailetcontainer.xml:40: mailet "
                                     "org.apache.james.transport.mailets.RemoteDelivery: maxDnsProblemRetries")
    mc = MailetConfig(name="RemoteDelivery", params={"delayTime": "1s", "maxRetries": "1"},
                      context=Ctx(), file="f", line=1)
    c = RemoteDeliveryConfig.from_mailet_config(mc)
    assert c.helo_name == "example.net" and c.delays.expanded_ms == (1000,)
