"""Every standard matcher, through the entry points (as a configuration names them)."""

from __future__ import annotations

import pytest

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import MatcherConfig
from chainmail.mailet.engine import resolve_matcher

from .helpers import mail

RCPTS = ["bob@local.test", "nobody@local.test", "x@alias.test", "far@remote.example"]


def matcher(context, text):
    name, _, cond = text.partition("=")
    cls, _ = resolve_matcher(name)
    m = cls()
    m.init(MatcherConfig(name, cond if "=" in text else None, context, "root", "t.xml", 1))
    return m


@pytest.fixture
def ctx(stores, context):
    stores.users.add("bob@local.test", "pw")
    stores.rrt.add_domain_alias("alias.test", "local.test")
    return context


@pytest.mark.parametrize("text, expected", [
    ("All", RCPTS),
    ("RecipientIsLocal", ["bob@local.test"]),
    ("HostIsLocal", ["bob@local.test", "nobody@local.test", "x@alias.test"]),
    ("HostIs=remote.example, other.test", ["far@remote.example"]),
    ("RecipientIs=NOBODY@local.test,far@remote.example", ["nobody@local.test", "far@remote.example"]),
    ("RecipientIsRegex=.*@local\\.test", ["bob@local.test", "nobody@local.test"]),
    ("RecipientIsRegex=local", []),
    ("org.apache.james.transport.matchers.IsSingleRecipient", []),
])
def test_recipient_matchers(ctx, text, expected):
    assert matcher(ctx, text).match(mail(RCPTS)) == expected


def test_detail_is_ignored_but_a_domain_alias_needs_the_rewrite_table_first(ctx):
    # As James: RecipientRewriteTable turns bob@alias.test into bob@local.test before
    # RecipientIsLocal looks; the domain itself is local (HostIsLocal).
    m = matcher(ctx, "RecipientIsLocal")
    assert m.match(mail(["Bob+tag@Local.Test", "bob@alias.test"])) == ["Bob+tag@Local.Test"]


@pytest.mark.parametrize("text, kwargs, hit", [
    ("SenderIs=Alice@remote.example", {}, True),
    ("SenderIs=other@remote.example", {}, False),
    ("SenderIsNull", {}, False),
    ("SenderIsNull", {"sender": ""}, True),
    ("SenderIsLocal", {"sender": "bob+x@local.test"}, True),
    ("SenderIsLocal", {}, False),
    ("SenderHostIs=remote.example", {}, True),
    ("SenderHostIs=remote.example", {"sender": ""}, False),
    ("SenderIsRegex=.*@remote\\.example", {}, True),
    ("SenderIsRegex=bob.*", {}, False),
    ("SMTPAuthSuccessful", {}, False),
    ("SMTPAuthSuccessful", {"attributes": {"auth_user": "bob@local.test"}}, True),
    ("SMTPAuthUserIs=bob@local.test", {"attributes": {"auth_user": "BOB@local.test"}}, True),
    ("SMTPAuthUserIs=carl@local.test", {"attributes": {"auth_user": "bob@local.test"}}, False),
    ("SMTPIsAuthNetwork", {"attributes": {"relaying_allowed": True}}, True),
    ("SMTPIsAuthNetwork", {"attributes": {"relaying_allowed": True, "auth_user": "b"}}, False),
    ("RemoteAddrInNetwork=10.0.0.0/8, 127.*", {"attributes": {"remote_addr": "127.0.0.1"}}, True),
    ("RemoteAddrInNetwork=10.0.0.0/8", {"attributes": {"remote_addr": "127.0.0.1"}}, False),
    ("RemoteAddrNotInNetwork=10.0.0.0/8", {"attributes": {"remote_addr": "127.0.0.1"}}, True),
    ("RelayLimit=1", {}, True),
    ("RelayLimit=2", {}, False),
    ("HasHeader=Subject", {}, True),
    ("HasHeader=subject=HELLO", {}, True),
    ("HasHeader=Subject=bye", {}, False),
    ("HasHeader=Subject+X-Missing", {}, False),
    ("HasAttribute=flag", {"attributes": {"flag": "1"}}, True),
    ("HasMailAttribute=flag,other", {"attributes": {"flag": "1"}}, False),
    ("SizeGreaterThan=100", {}, True),
    ("SizeGreaterThan=1k", {}, False),
    ("SentByMailet", {"attributes": {"sent_by_mailet": True}}, True),
    ("SentByMailet", {}, False),
    ("IsSingleRecipient", {}, True),
])
def test_mail_matchers(ctx, text, kwargs, hit):
    m = mail(["bob@local.test"], **kwargs)
    assert matcher(ctx, text).match(m) == (["bob@local.test"] if hit else [])


def test_auth_network_uses_the_servers_authorized_addresses(stores):
    from chainmail.config.netmatch import NetworkSet
    ctx = stores.context(auth_networks={"mx": NetworkSet("192.0.2.0/24")})
    m = matcher(ctx, "SMTPIsAuthNetwork")
    inside = mail(attributes={"server_name": "mx", "remote_addr": "192.0.2.7", "auth_user": "b"})
    outside = mail(attributes={"server_name": "mx", "remote_addr": "198.51.100.1", "relaying_allowed": True})
    assert m.match(inside) == ["bob@local.test"] and m.match(outside) == []


def test_is_sender_in_rrt_loop(ctx, stores):
    stores.rrt.add_forward("a@local.test", "b@local.test")
    stores.rrt._conn.execute("INSERT INTO rrt_mappings VALUES ('forward', 'b@local.test', 'a@local.test')")
    stores.rrt._reload_locked()
    m = matcher(ctx, "IsSenderInRRTLoop")
    assert m.match(mail(sender="a@local.test")) == ["bob@local.test"]
    assert m.match(mail()) == []


@pytest.mark.parametrize("text", ["HostIs", "RelayLimit=x", "SizeGreaterThan=big", "RecipientIsRegex=(",
                                  "RemoteAddrInNetwork", "HasHeader=+"])
def test_bad_conditions_are_configuration_errors(context, text):
    with pytest.raises(ConfigError) as err:
        matcher(context, text)
    assert str(err.value).startswith("t.xml:1: matcher ")
