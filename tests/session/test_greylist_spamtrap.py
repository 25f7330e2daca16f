"""SpamTrapHandler and JDBCGreylistHandler through the server's own session loop: their
replies, their state shared across sessions through the var directory's database, and
their configuration errors."""

from __future__ import annotations

import time

import pytest

from chainmail.config.errors import ConfigError

GREYLIST = "JDBCGreylistHandler"
TEMP = "451 4.4.3 Temporary rejected: Reconnect to deliver later"
BLOCKED = "554 5.7.1 Email rejected"


def greylist(**params) -> str:
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in params.items())
    return f'<handler class="{GREYLIST}">{inner}</handler>'


def spamtrap(inner: str) -> str:
    return f'<handler class="org.apache.james.smtpserver.fastfail.SpamTrapHandler">{inner}</handler>'


def client(open_session, handlers, var, ip="192.0.2.10", **settings):
    s = open_session(handlers, var=var, remote_ip=ip, authorized_addresses="", helo="c.example",
                     **settings)
    assert s.mail("sender@remote.example").code == 250
    return s


# -- greylisting -------------------------------------------------------------------------------

def test_first_attempt_451_retry_after_block_time_accepted_then_whitelisted(chainmail_session,
                                                                            tmp_path):
    var = tmp_path / "var"
    chain = greylist(tempBlockTime="300 ms")
    first = client(chainmail_session, chain, var)
    assert str(first.rcpt("user@local.test")) == TEMP
    assert str(first.rcpt("user@local.test")) == TEMP   # too early: still refused
    time.sleep(0.4)
    # a later connection from another address of the same /24 passes
    retry = client(chainmail_session, chain, var, ip="192.0.2.77")
    assert str(retry.rcpt("user@local.test")) == "250 2.1.5 Recipient <user@local.test> OK"
    # whitelisted now: passes at once; another sender or recipient is a new triplet
    again = client(chainmail_session, chain, var, ip="192.0.2.10")
    assert again.rcpt("user@local.test").code == 250
    assert str(again.rcpt("other@local.test")) == TEMP
    other_net = client(chainmail_session, chain, var, ip="198.51.100.10")
    assert str(other_net.rcpt("user@local.test")) == TEMP


def test_unseen_entry_expires_and_starts_again(chainmail_session, tmp_path):
    var = tmp_path / "var"
    chain = greylist(tempBlockTime="100 ms", unseenLifeTime="300 ms")
    assert str(client(chainmail_session, chain, var).rcpt("user@local.test")) == TEMP
    time.sleep(0.45)
    # older than unseenLifeTime: forgotten, so refused again as new (not accepted)
    s = client(chainmail_session, chain, var)
    assert str(s.rcpt("user@local.test")) == TEMP
    time.sleep(0.15)
    assert s.rcpt("user@local.test").code == 250


def test_auto_whitelist_expires(chainmail_session, tmp_path):
    var = tmp_path / "var"
    chain = greylist(tempBlockTime="50 ms", autoWhiteListLifeTime="300 ms")
    s = client(chainmail_session, chain, var)
    assert str(s.rcpt("user@local.test")) == TEMP
    time.sleep(0.1)
    assert s.rcpt("user@local.test").code == 250
    time.sleep(0.45)
    assert str(s.rcpt("user@local.test")) == TEMP


@pytest.mark.parametrize("settings", [
    {"relaying_allowed": True},
    {"auth_user": "bob@local.test"},
    {"ip": "203.0.113.9"},
], ids=["relaying", "authenticated", "whitelisted-network"])
def test_exempt_clients_are_not_greylisted(chainmail_session, tmp_path, settings):
    chain = greylist(whitelistedNetworks="203.0.113.0/24, 10.0.0.0/8")
    s = client(chainmail_session, chain, tmp_path / "var", **settings)
    assert s.rcpt("user@local.test").code == 250


def test_null_sender_is_a_triplet_too(chainmail_session, tmp_path):
    s = chainmail_session(greylist(), remote_ip="192.0.2.10", authorized_addresses="",
                          helo="c.example")
    assert s.mail("").code == 250
    assert str(s.rcpt("user@local.test")) == TEMP


def test_james_time_syntax_and_defaults():
    from chainmail.chain import HandlerConfig
    from chainmail_plugins.smtp.greylist import JDBCGreylistHandler

    handler = JDBCGreylistHandler()
    handler.configure(HandlerConfig(GREYLIST, {"tempBlockTime": "4 hours"}))
    assert handler.temp_block == 4 * 3600
    assert handler.whitelist_life == 36 * 86400
    assert handler.unseen_life == 4 * 3600


@pytest.mark.parametrize("params, message", [
    ({"tempBlockTime": "soon"}, "tempBlockTime: 'soon' is not a duration"),
    ({"unseenLifeTime": "4 fortnights"}, "unseenLifeTime: '4 fortnights': unknown unit"),
    ({"whitelistedNetworks": "10.0.0.0/33"}, "whitelistedNetworks: entry '10.0.0.0/33' dropped"),
])
def test_greylist_configuration_errors_name_the_parameter(chainmail_session, params, message):
    with pytest.raises(ConfigError) as info:
        chainmail_session(greylist(**params))
    assert message in str(info.value)
    assert "smtpserver.xml" in str(info.value)


# -- spam traps -----------------------------------------------------------------------------

def test_trap_blocks_the_ip_across_sessions_for_block_time(chainmail_session, tmp_path):
    var = tmp_path / "var"
    chain = spamtrap("<spamTrapRecip>trap@local.test</spamTrapRecip>"
                     "<spamTrapRecip>bait@local.test</spamTrapRecip><blockTime>500</blockTime>")
    s = client(chainmail_session, chain, var)
    assert s.rcpt("user@local.test").code == 250
    assert str(s.rcpt("Trap@Local.test")) == BLOCKED
    assert str(s.rcpt("user@local.test")) == BLOCKED
    later = client(chainmail_session, chain, var)
    assert str(later.rcpt("user@local.test")) == BLOCKED
    elsewhere = client(chainmail_session, chain, var, ip="192.0.2.11")
    assert elsewhere.rcpt("user@local.test").code == 250
    time.sleep(0.6)
    after = client(chainmail_session, chain, var)
    assert after.rcpt("user@local.test").code == 250
    assert str(after.rcpt("bait@local.test")) == BLOCKED


def test_spamtraprecips_list_form(chainmail_session, tmp_path):
    chain = spamtrap("<spamTrapRecips><rcpt>trap@local.test</rcpt></spamTrapRecips>")
    s = client(chainmail_session, chain, tmp_path / "var")
    assert str(s.rcpt("trap@local.test")) == BLOCKED
    assert str(s.rcpt("user@local.test")) == BLOCKED


def test_spamtrap_without_trap_is_a_configuration_error(chainmail_session):
    with pytest.raises(ConfigError) as info:
        chainmail_session(spamtrap("<blockTime>1000</blockTime>"))
    assert "spamTrapRecip: is required" in str(info.value)
    assert "smtpserver.xml" in str(info.value)
