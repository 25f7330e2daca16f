"""TLSTransport against trio's own TLS client over a socket pair: handshakes (TLS 1.2 and
1.3), large and pipelined data, a cancelled send resumed, close_notify both ways, EOF without
it, and failed handshakes."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from types import SimpleNamespace

import pytest
import trio
import trustme

from chainmail.server.tlsio import TLSTransport

CA = trustme.CA()
CERT = CA.issue_cert("mx.test")


def server_context(maximum=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    CERT.configure_cert(ctx)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    CA.configure_trust(ctx)
    return ctx


class Pair:
    """A TLSTransport on one end of a socket pair, a trio.SSLStream client on the other."""

    def __init__(self, maximum=None, busy_poll=0.0, lone=True):
        a, b = socket.socketpair()
        a.setblocking(False)
        self.raw_server, self.raw_client = a, b
        load = SimpleNamespace(lone=lone)
        self.server = TLSTransport(a, server_context(maximum), load, busy_poll)
        self.client = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(b)),
                                     client_context(), server_hostname="mx.test")

    async def handshake(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.client.do_handshake)
            await self.server.handshake()

    def close(self) -> None:
        self.raw_server.close()
        self.raw_client.close()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


async def read_exactly(stream: trio.SSLStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, None])
async def test_handshake_and_a_dialogue(maximum):
    p = Pair(maximum)
    try:
        await p.handshake()
        assert p.server.sslobj.version() == ("TLSv1.2" if maximum else "TLSv1.3")
        assert p.server.sslobj.cipher()
        await p.server.send_all(b"220 mx.test ready\r\n")
        assert await read_exactly(p.client, 19) == b"220 mx.test ready\r\n"
        await p.client.send_all(b"EHLO client.test\r\n")
        assert await p.server.receive() == b"EHLO client.test\r\n"
        await p.server.send_all(b"250 mx.test\r\n")
        assert await read_exactly(p.client, 13) == b"250 mx.test\r\n"
    finally:
        p.close()


async def test_tls13_tickets_wait_for_the_first_reply(pair):
    await pair.handshake()
    assert pair.server.sslobj.version() == "TLSv1.3"
    assert pair.server.unsent            # the session tickets, held back
    with pytest.raises(BlockingIOError):
        pair.raw_client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    await pair.server.send_all(b"220 hi\r\n")
    assert not pair.server.unsent
    assert await read_exactly(pair.client, 8) == b"220 hi\r\n"


async def test_data_sent_with_the_handshake_is_not_lost(pair):
    async def client():
        await pair.client.do_handshake()
        await pair.client.send_all(b"PROXY TCP4 203.0.113.6 192.0.2.1 1 465\r\nEHLO t\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await pair.server.handshake()
    data = b""
    while not data.endswith(b"EHLO t\r\n"):
        data += await pair.server.receive()
    assert data == b"PROXY TCP4 203.0.113.6 192.0.2.1 1 465\r\nEHLO t\r\n"


async def test_a_large_stream_arrives_whole_in_large_reads(pair):
    await pair.handshake()
    payload = os.urandom(5 * 1024 * 1024)
    sizes = []
    digest = hashlib.sha256()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair.client.send_all, payload)
        got = 0
        while got < len(payload):
            chunk = await pair.server.receive()
            assert chunk
            sizes.append(len(chunk))
            digest.update(chunk)
            got += len(chunk)
    assert got == len(payload)
    assert digest.digest() == hashlib.sha256(payload).digest()
    assert max(sizes) > 16384           # several records in one read
    assert max(sizes) <= 2 * 65536


async def test_a_cancelled_send_is_resumed_by_the_next(pair):
    """A client that does not read: the send waits, is cancelled (an idle timeout), and what
    it had not sent goes out first with the next send, so the stream stays well-formed."""
    await pair.handshake()
    big = os.urandom(4 * 1024 * 1024)
    with trio.move_on_after(0.2) as scope:
        await pair.server.send_all(big)
    assert scope.cancelled_caught
    assert pair.server.unsent
    async with trio.open_nursery() as nursery:
        received = []

        async def reader():
            received.append(await read_exactly(pair.client, len(big) + 9))

        nursery.start_soon(reader)
        await pair.server.send_all(b"421 bye\r\n")
    assert received[0] == big + b"421 bye\r\n"


async def read_to_end(transport) -> bytes:
    """Everything the transport hands out until its end of stream."""
    data = b""
    while chunk := await transport.receive():
        data += chunk
    return data


async def test_close_notify_from_the_client_ends_the_stream(pair):
    await pair.handshake()
    await pair.client.send_all(b"MAIL FROM:<a@b.example>\r\n")
    await pair.client.aclose()           # close_notify, then the socket closes
    data = await read_to_end(pair.server)
    assert data == b"MAIL FROM:<a@b.example>\r\n"
    assert pair.server.eof
    assert await pair.server.receive() == b""
    pair.server.close()                  # the peer is gone: nothing raised


async def test_eof_without_close_notify_ends_the_stream(pair):
    await pair.handshake()
    await pair.client.send_all(b"DATA\r\nhalf a mess")
    pair.raw_client.shutdown(socket.SHUT_RDWR)
    data = await read_to_end(pair.server)
    assert data == b"DATA\r\nhalf a mess"
    pair.server.close()


async def test_the_server_sends_close_notify(pair):
    await pair.handshake()
    await pair.server.send_all(b"221 bye\r\n")
    pair.server.close()
    assert await read_exactly(pair.client, 9) == b"221 bye\r\n"
    assert await pair.client.receive_some(100) == b""   # close_notify, not a ragged EOF
    pair.server.close()                  # a second close does nothing


async def test_not_tls_fails_the_handshake(pair):
    pair.raw_client.sendall(b"EHLO this is not TLS\r\n")
    with pytest.raises(trio.BrokenResourceError) as err:
        await pair.server.handshake()
    assert isinstance(err.value.__cause__, ssl.SSLError)
    pair.server.close()                  # nothing to close: no close_notify


async def test_eof_in_the_handshake_fails_it(pair):
    pair.raw_client.shutdown(socket.SHUT_WR)
    with pytest.raises(trio.BrokenResourceError) as err:
        await pair.server.handshake()
    assert isinstance(err.value.__cause__, (ssl.SSLError, OSError))


async def test_busy_polling_lone_session():
    p = Pair(busy_poll=0.05)
    try:
        await p.handshake()

        async def later():
            await trio.sleep(0.01)
            await p.client.send_all(b"NOOP\r\n")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            assert await p.server.receive() == b"NOOP\r\n"
    finally:
        p.close()


async def test_many_small_exchanges(pair):
    await pair.handshake()
    for i in range(300):
        line = b"NOOP %d\r\n" % i
        await pair.client.send_all(line)
        assert await pair.server.receive() == line
        await pair.server.send_all(b"250 ok\r\n")
        assert await read_exactly(pair.client, 8) == b"250 ok\r\n"
