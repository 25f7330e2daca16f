"""The greylisting handler, driven through chainmail's own session loop (no socket)."""

from __future__ import annotations

import pytest

from chainmail.testing import ConfigError, HandlerConfig, SessionDriver

from chainmail_example_plugin.greylist import Greylist

OUTSIDE = "192.0.2.10"   # not in authorizedAddresses (127.0.0.0/8)
MESSAGE = "From: a@remote.example\r\nSubject: hello\r\n\r\nbody\r\n"


def test_first_attempt_is_deferred_and_a_retry_after_the_delay_is_accepted():
    with SessionDriver([(Greylist, {"delay": 0})], remote_ip=OUTSIDE, helo="c.example") as s:
        s.mail("a@remote.example")
        first = s.rcpt("bob@local.test")
        assert (first.code, first.enhanced) == (451, "4.7.1")
        assert first.text.startswith("Greylisted")
        s.rset()
        s.mail("a@remote.example")
        assert s.rcpt("bob@local.test").code == 250
        assert s.data(MESSAGE).code == 250
        [spooled] = s.spooled()
    assert spooled.recipients == ["bob@local.test"]
    assert spooled.content.startswith(b"X-Greylist: delayed 0 seconds by mx.test\r\n")


def test_a_retry_before_the_delay_is_still_deferred():
    with SessionDriver([(Greylist, {"delay": 300})], remote_ip=OUTSIDE, helo="c.example") as s:
        s.mail("a@remote.example")
        assert s.rcpt("bob@local.test").code == 451
        assert s.rcpt("bob@local.test").code == 451


def test_a_retry_from_another_address_of_the_same_network_counts():
    greylist = Greylist()   # one instance for both sessions, as one server block has
    greylist.configure(HandlerConfig("Greylist", {"delay": "0"}))
    with SessionDriver([greylist], remote_ip="192.0.2.10", helo="c.example") as first:
        first.mail("a@remote.example")
        assert first.rcpt("bob@local.test").code == 451
    with SessionDriver([greylist], remote_ip="192.0.2.99", helo="c.example") as retry:
        retry.mail("a@remote.example")
        assert retry.rcpt("bob@local.test").code == 250
    with SessionDriver([greylist], remote_ip="198.51.100.1", helo="c.example") as other:
        other.mail("a@remote.example")
        assert other.rcpt("bob@local.test").code == 451


def test_clients_that_may_relay_are_not_greylisted():
    with SessionDriver([(Greylist, {"delay": 300})], remote_ip="127.0.0.1", helo="c.example") as s:
        s.mail("a@remote.example")
        assert s.rcpt("bob@local.test").code == 250


def test_a_passed_retry_does_not_open_the_relay():
    with SessionDriver([(Greylist, {"delay": 0})], remote_ip=OUTSIDE, helo="c.example") as s:
        s.mail("a@remote.example")
        assert s.rcpt("victim@elsewhere.example").code == 451
        refused = s.rcpt("victim@elsewhere.example")
    assert (refused.code, refused.enhanced) == (550, "5.7.1")


def test_the_handler_is_found_by_its_entry_point_names():
    for name in ("Greylist", "com.example.mail.Greylist"):
        with SessionDriver(f'<handler class="{name}"><delay>300</delay></handler>',
                           remote_ip=OUTSIDE, helo="c.example") as s:
            s.mail("a@remote.example")
            assert s.rcpt("bob@local.test").code == 451


def test_a_bad_delay_is_a_configuration_error_naming_the_parameter():
    with pytest.raises(ConfigError, match="delay: 'soon' is not an integer"):
        SessionDriver('<handler class="Greylist"><delay>soon</delay></handler>')
