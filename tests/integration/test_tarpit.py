"""TarpitHandler over real sockets: a tarpitted RCPT waits without delaying other sessions."""

from __future__ import annotations

import time

TARPIT = ('<handler class="org.apache.james.smtpserver.fastfail.TarpitHandler">'
          "<tarpitRcptCount>0</tarpitRcptCount><tarpitSleepTime>3000</tarpitSleepTime></handler>")


def test_tarpitted_session_does_not_delay_another(chainmail_factory):
    server = chainmail_factory(handlers=TARPIT)
    slow = server.smtp()
    slow.ehlo("slow.example")
    assert slow.mail("a@remote.example")[0] == 250
    start = time.monotonic()
    slow.putcmd("rcpt", "TO:<u1@local.test>")      # tarpitted: answered after 3 s

    fast = server.smtp()
    fast.ehlo("fast.example")
    assert fast.mail("b@remote.example")[0] == 250
    assert fast.rset()[0] == 250                    # a whole exchange while the other waits
    assert fast.noop()[0] == 250
    fast_elapsed = time.monotonic() - start
    fast.quit()

    code, _ = slow.getreply()
    slow_elapsed = time.monotonic() - start
    slow.quit()
    assert code == 250
    assert slow_elapsed >= 3.0
    assert fast_elapsed < 1.5
