"""Plain-TCP session I/O against a real server: busy polling on and off, and a client that
never pauses cannot keep the others waiting."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from ..conftest import cli_on_conf, need, wait_for


def read_reply(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not (data.endswith(b"\r\n") and data.split(b"\r\n")[-2][3:4] == b" "):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("busy_poll", ["0", "100"])
def test_one_connection_per_message(chainmail_factory, busy_poll):
    """smtp-source's one-session, one-connection-per-message pattern: the lone session and
    the listener (after each session ends) busy-poll when it is on."""
    server = chainmail_factory(f"<busyPoll>{busy_poll}</busyPoll>")
    result = subprocess.run([need("smtp-source"), "-s", "1", "-m", "200", "-l", "1024",
                             "-f", "s@remote.example", "-t", "r@local.test", "-M", "client.example",
                             f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(server.queued()) == 200


def test_check_config_shows_busy_poll(tmp_path):
    out = cli_on_conf(
        tmp_path,
        "<smtpservers><smtpserver><jmxName>a</jmxName><bind>127.0.0.1:0</bind><handlerchain/></smtpserver>"
        "<smtpserver><jmxName>b</jmxName><bind>127.0.0.1:0</bind><busyPoll>0</busyPoll><handlerchain/></smtpserver>"
        "</smtpservers>", "check-config").stdout
    assert "busyPoll = 100 microseconds" in out and "busyPoll = 0 (off)" in out
    assert "forbidBareNewline = reject" in out


def test_a_client_that_never_pauses_does_not_hold_up_the_others(chainmail):
    """One client streams pipelined NOOPs as fast as it can and reads the replies; its session
    always finds input waiting.  A second client must still be greeted and served meanwhile."""
    flood = socket.create_connection(("127.0.0.1", chainmail.port))
    assert read_reply(flood).startswith(b"220 ")
    flood.sendall(b"EHLO flood.test\r\n")
    assert read_reply(flood).startswith(b"250")
    stop = threading.Event()
    replies = 0

    def write():
        batch = b"NOOP\r\n" * 2000
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                flood.sendall(batch)
            except OSError:
                return   # closed by the test when it is done

    def drain():
        nonlocal replies
        flood.settimeout(30)
        while not stop.is_set():
            try:
                chunk = flood.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            replies += chunk.count(b"\r\n")

    threads = [threading.Thread(target=write, daemon=True), threading.Thread(target=drain, daemon=True)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: replies > 1000, what="the flooding session being served")
        start = time.monotonic()
        with chainmail.smtp() as other:
            other.sendmail("a@remote.example", ["b@local.test"], "Subject: meanwhile\r\n\r\nhi\r\n")
        took = time.monotonic() - start
        during = replies
        assert threads[0].is_alive(), "the flood ended before the other client was served"
    finally:
        stop.set()
        flood.shutdown(socket.SHUT_RDWR)
        flood.close()
        for t in threads:
            t.join(5)
    assert took < 3, f"the other client waited {took:.1f} s"
    assert during > 1000
    assert len(chainmail.queued()) == 1


def _scenario(port: int, kind: str, n: int) -> int:
    """One client of the mixed crowd below; returns 1 if the server acknowledged a message."""
    body = b"Subject: crowd %d\r\n\r\n" % n + b"line of the body\r\n" * (n % 7 * 40 + 1)
    envelope = b"EHLO crowd.test\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<u%d@local.test>\r\n" % n
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert read_reply(s).startswith(b"220 ")
        if kind == "pipelined":
            s.sendall(envelope + b"DATA\r\n")
            got = b""
            while not got.endswith(b"\r\n") or b"\r\n354 " not in got:
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
            assert b"\r\n250 2.1.0" in got and b"\r\n250 2.1.5" in got, got
            s.sendall(body + b".\r\nQUIT\r\n")
            return int(read_reply(s).startswith(b"250 2.6.0"))
        for line in envelope.split(b"\r\n")[:-1]:
            s.sendall(line + b"\r\n")
            assert read_reply(s)[:1] == b"2"
        s.sendall(b"DATA\r\n")
        assert read_reply(s).startswith(b"354")
        if kind == "cut-in-data":
            s.sendall(body[: len(body) // 2])
            return 0
        if kind == "reset-in-data":
            s.sendall(body[: len(body) // 3])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return 0
        if kind == "trickle":
            for i in range(0, len(body), 97):
                s.sendall(body[i:i + 97])
                time.sleep(0.001)
            s.sendall(b".\r\n")
        else:
            s.sendall(body + b".\r\n")
        ok = read_reply(s).startswith(b"250 2.6.0")
        s.sendall(b"QUIT\r\n")
        return int(ok)


def test_a_mixed_crowd_loses_nothing_it_acknowledged(chainmail):
    """Sixty clients at once, some finishing, some pipelining, some trickling, some cutting
    the connection or resetting it in the middle of DATA: every message the server answered
    250 to is in the spool, nothing of the others, and the server still serves."""
    import random
    from concurrent.futures import ThreadPoolExecutor
    rng = random.Random(2026)
    kinds = [rng.choice(["whole", "pipelined", "trickle", "cut-in-data", "reset-in-data"])
             for _ in range(60)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        acked = sum(pool.map(lambda job: _scenario(chainmail.port, *job), zip(kinds, range(60))))
    finishing = sum(k in ("whole", "pipelined", "trickle") for k in kinds)
    assert acked == finishing
    time.sleep(0.2)   # the cut sessions must leave nothing: no event to wait for, a short look
    queued = chainmail.queued()
    assert len(queued) == acked
    assert sorted(m.envelope.recipients[0] for m in queued) == sorted(
        f"u{n}@local.test" for n, k in enumerate(kinds) if k in ("whole", "pipelined", "trickle"))
    with chainmail.smtp() as s:
        assert s.noop()[0] == 250
