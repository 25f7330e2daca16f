"""poll_readable: readable at once, or False after the time given, never longer."""

from __future__ import annotations

import socket
import threading
import time

from chainmail.server.busypoll import poll_readable


def test_data_already_there():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"x")
        start = time.perf_counter()
        assert poll_readable(a, 1.0)
        assert time.perf_counter() - start < 0.5


def test_nothing_arrives():
    a, b = socket.socketpair()
    with a, b:
        start = time.perf_counter()
        assert not poll_readable(a, 0.02)
        elapsed = time.perf_counter() - start
        assert 0.02 <= elapsed < 0.5


def test_data_arriving_while_polling():
    a, b = socket.socketpair()
    with a, b:
        timer = threading.Timer(0.01, b.sendall, (b"x",))
        timer.start()
        try:
            assert poll_readable(a, 2.0)
            assert a.recv(1) == b"x"
        finally:
            timer.cancel()


def test_eof_counts_as_readable():
    a, b = socket.socketpair()
    with a:
        b.close()
        assert poll_readable(a, 1.0)
        assert a.recv(1) == b""


def test_pending_connection_on_a_listening_socket():
    with socket.create_server(("127.0.0.1", 0)) as listening:
        assert not poll_readable(listening, 0.005)
        with socket.create_connection(listening.getsockname()):
            assert poll_readable(listening, 1.0)
