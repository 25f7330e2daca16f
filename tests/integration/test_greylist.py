"""Greylisting on a real ``chainmail run`` with two worker processes: the triplet seen by one
worker is known to the other, because the table lives in the shared database of ``var``."""

from __future__ import annotations

import smtplib
import time

from .test_workers import server_pids, workers

GREYLIST = ('<handler class="org.apache.james.smtpserver.fastfail.JDBCGreylistHandler">'
            '<tempBlockTime>1 sec</tempBlockTime></handler>')


def test_first_451_then_retry_accepted_by_every_worker(chainmail_factory):
    server = chainmail_factory("<ioWorkerCount>2</ioWorkerCount>", handlers=GREYLIST,
                               authorized="")
    clients = [smtplib.SMTP("127.0.0.1", server.port, timeout=10) for _ in range(16)]
    try:
        # the connections are spread over both workers
        assert server_pids(server.port) == set(workers(server).values())
        for c in clients:
            assert c.ehlo("client.example")[0] == 250
            assert c.mail("sender@remote.example")[0] == 250
        first = clients[0].rcpt("user@local.test")
        assert first == (451, b"4.4.3 Temporary rejected: Reconnect to deliver later")
        time.sleep(1.2)
        # every worker sees the triplet the first one stored: the retry passes everywhere
        for c in clients:
            assert c.rcpt("user@local.test")[0] == 250
        assert clients[1].data(b"Subject: greylisted\r\n\r\nbody\r\n")[0] == 250
    finally:
        for c in clients:
            c.close()
