"""James's simple fast-fail handlers in a session: each one's limit, reply and exemptions."""

from __future__ import annotations

import time


def handler(name: str, **params) -> str:
    body = "".join(f"<{k}>{v}</{k}>" for k, v in params.items())
    return f'<handler class="org.apache.james.smtpserver.fastfail.{name}">{body}</handler>'


def test_max_rcpt_refuses_past_the_limit_and_resets_with_rset(chainmail_session):
    s = chainmail_session(handler("MaxRcptHandler", maxRcpt=2), helo="client.example")
    assert s.mail("a@remote.example").code == 250
    assert s.rcpt("u1@local.test").code == 250
    assert s.rcpt("u2@local.test").code == 250
    assert str(s.rcpt("u3@local.test")) == \
        "452 4.5.3 Requested action not taken: max recipients reached"
    s.rset()
    s.mail("a@remote.example")
    assert s.rcpt("u3@local.test").code == 250


def test_max_unknown_cmd_closes_past_the_limit(chainmail_session):
    s = chainmail_session(handler("MaxUnknownCmdHandler", maxUnknownCmdCount=2), helo="c")
    assert s.command("FOO").code == 500
    assert s.command("BAR").code == 500
    last = s.command("BAZ")
    assert str(last) == "521 5.5.1 Closing connection as too many unknown commands received"
    assert s.closed


def test_max_unknown_cmd_count_is_reset_by_rset(chainmail_session):
    s = chainmail_session(handler("MaxUnknownCmdHandler", maxUnknownCmdCount=1), helo="c")
    assert s.command("FOO").code == 500
    s.rset()
    assert s.command("FOO").code == 500
    assert s.command("FOO").code == 521


def test_duplicate_recipient_is_accepted_once(chainmail_session):
    s = chainmail_session(
        '<handler class="org.apache.james.protocols.smtp.core.fastfail.SupressDuplicateRcptHandler"/>',
        helo="client.example")
    s.mail("a@remote.example")
    assert str(s.rcpt("user@local.test")) == "250 2.1.5 Recipient <user@local.test> OK"
    assert str(s.rcpt("user@LOCAL.test")) == "250 2.1.5 Recipient <user@LOCAL.test> OK"
    assert s.data("Subject: x\r\n\r\nbody\r\n").code == 250
    [msg] = s.spooled()
    assert msg.recipients == ["user@local.test"]


def test_without_suppression_a_duplicate_is_listed_twice(chainmail_session):
    s = chainmail_session(helo="client.example")
    s.send_message("a@remote.example", ["user@local.test", "user@local.test"], "Subject: x\r\n\r\nb\r\n")
    [msg] = s.spooled()
    assert msg.recipients == ["user@local.test", "user@local.test"]


def test_tarpit_delays_recipients_past_the_count(chainmail_session):
    s = chainmail_session(handler("TarpitHandler", tarpitRcptCount=1, tarpitSleepTime=300),
                          helo="client.example")
    s.mail("a@remote.example")
    start = time.monotonic()
    assert s.rcpt("u1@local.test").code == 250
    first = time.monotonic() - start
    assert s.rcpt("u2@local.test").code == 250     # 1 over the count: 300 ms
    second = time.monotonic() - start - first
    assert s.rcpt("u3@local.test").code == 250     # 2 over: 600 ms
    third = time.monotonic() - start - first - second
    assert first < 0.2
    assert 0.3 <= second < 0.6
    assert 0.6 <= third < 1.0


ALLOWED = ('<handler class="org.apache.james.smtpserver.fastfail.AllowedUnauthenticatedSender">'
           "<allowedSenders><allowedSender>app@local.test</allowedSender>"
           "<allowedSender>@partner.example</allowedSender></allowedSenders></handler>")


def test_unauthenticated_relay_client_may_use_only_listed_senders(chainmail_session):
    s = chainmail_session(ALLOWED, helo="client.example")   # 127.0.0.1 is authorized
    assert s.mail("APP@local.test").code == 550   # local parts are case-sensitive
    assert s.mail("app@LOCAL.test").code == 250
    s.rset()
    assert s.mail("anyone@Partner.Example").code == 250
    s.rset()
    assert str(s.mail("other@local.test")) == \
        "550 5.7.1 Sender <other@local.test> is not allowed for unauthenticated connection from 127.0.0.1"
    assert str(s.mail("")) == \
        "550 5.7.1 Sender <> is not allowed for unauthenticated connection from 127.0.0.1"


def test_from_ips_limits_a_sender_to_its_networks(chainmail_session):
    xml = ALLOWED.replace("<allowedSender>app@local.test</allowedSender>",
                          '<allowedSender fromIps="10.0.0.0/8, 192.0.2.7">app@local.test</allowedSender>')
    outside = chainmail_session(xml, helo="c")   # 127.0.0.1, authorized but not listed
    assert str(outside.mail("app@local.test")) == \
        "550 5.7.1 Sender <app@local.test> is not allowed for unauthenticated connection from 127.0.0.1"
    assert outside.mail("x@partner.example").code == 250   # an entry without fromIps
    inside = chainmail_session(xml, helo="c", remote_ip="192.0.2.7", relaying_allowed=True)
    assert inside.mail("app@local.test").code == 250


def test_allowed_sender_list_is_required_and_checked(chainmail_session):
    import pytest

    from chainmail.config.errors import ConfigError

    empty = ('<handler class="AllowedUnauthenticatedSender">'
             "<allowNullSender>true</allowNullSender></handler>")
    with pytest.raises(ConfigError, match="at least one <allowedSender>"):
        chainmail_session(empty)
    bad_ips = ALLOWED.replace("<allowedSender>app@local.test</allowedSender>",
                              '<allowedSender fromIps="not-a-net">app@local.test</allowedSender>')
    with pytest.raises(ConfigError, match="not-a-net"):
        chainmail_session(bad_ips)


def test_null_sender_allowed_when_configured(chainmail_session):
    xml = ALLOWED.replace("<allowedSenders>", "<allowNullSender>true</allowNullSender><allowedSenders>")
    s = chainmail_session(xml, helo="client.example")
    assert s.mail("").code == 250


def test_authenticated_and_non_relaying_sessions_are_exempt(chainmail_session):
    authed = chainmail_session(ALLOWED, helo="c", auth_user="bob@local.test")
    assert authed.mail("other@local.test").code == 250
    outsider = chainmail_session(ALLOWED, helo="c", relaying_allowed=False)
    assert outsider.mail("other@remote.example").code == 250


def test_bad_parameter_names_file_and_line(chainmail_session):
    import pytest

    from chainmail.config.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        chainmail_session(handler("MaxRcptHandler", maxRcpt="many"))
    assert "maxRcpt" in str(err.value) and "'many' is not an integer" in str(err.value)
    assert "smtpserver.xml" in str(err.value)
