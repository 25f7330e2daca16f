"""The SMTP dialogue over real sockets: what a session does with TCP itself (a message read
across many reads, a client hanging up in the middle of DATA).  The replies of the default
chain are tested without a socket in tests/session/test_smtp_replies.py."""

from __future__ import annotations

import socket

from ..conftest import wait_for


def test_large_message_streams_to_spool(chainmail):
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 5000   # ~5 MB
    with chainmail.smtp() as s:
        assert s.sendmail("a@local.test", ["u@local.test"], body) == {}
    [msg] = chainmail.queued()
    assert chainmail.queued_body(msg.id).endswith(body)


def test_cut_off_data_leaves_nothing(chainmail):
    spool = chainmail.var / "spool"

    def leftovers() -> list:
        return [p for p in spool.rglob("*") if p.is_file()]

    with socket.create_connection(("127.0.0.1", chainmail.port)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO t\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n")
        while not (line := f.readline()).startswith(b"354"):
            assert line, "closed before DATA's reply"
        # more than the writer keeps in memory: the partial body goes to a file in the spool
        s.sendall(b"Subject: partial\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)
        wait_for(leftovers, what="the partial message streaming to the spool")
        f.close()
    wait_for(lambda: not leftovers(), what="the partial message removed from the spool")
    assert chainmail.queued() == []
