"""Scripted SMTP peers on 127.0.0.1 for the outgoing-mail tests."""

from __future__ import annotations

import contextlib
import ssl
from functools import partial

import trio
import trio.testing

__all__ = ["Peer", "start_peer", "ehlo", "ClientReader"]


def ehlo(*keywords: str, name: str = "peer.test") -> bytes:
    """A multi-line ``250`` EHLO reply announcing ``keywords``."""
    lines = [name, *keywords]
    return b"".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
                    for i, line in enumerate(lines))


def unstuff(data: bytes) -> bytes:
    """The message as sent, without the DATA dot-stuffing."""
    data = data.replace(b"\r\n..", b"\r\n.")
    return data[1:] if data.startswith(b"..") else data


class ClientReader:
    """What a client sends, split as a server reads it: command lines (without CRLF) and,
    after :meth:`expect_data`, one DATA body (still dot-stuffed, up to its last CRLF)."""

    def __init__(self, stream) -> None:
        self.stream = stream   # replaced by the caller after STARTTLS (nothing is buffered then)
        self.buf = b""
        self.in_data = False

    def expect_data(self) -> None:
        self.in_data = True

    async def next(self) -> tuple[str, bytes] | None:
        """``("line", command)``, ``("data", body)``, or None once the client has closed."""
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end >= 0:
                    body, self.buf, self.in_data = self.buf[:end + 2], self.buf[end + 5:], False
                    return "data", body
            else:
                end = self.buf.find(b"\r\n")
                if end >= 0:
                    line, self.buf = self.buf[:end], self.buf[end + 2:]
                    return "line", line
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buf += chunk


class Peer:
    """A scripted SMTP server on 127.0.0.1: ``replies`` maps a command verb to its reply.

    A reply may be a callable of the command line; a reply of ``None`` closes the connection
    without answering.  With ``tls`` (a server ``SSLContext``) ``STARTTLS`` is answered
    ``220`` and the connection is wrapped; ``ehlo_tls`` is then the EHLO reply.
    """

    def __init__(self, greeting=b"220 peer.test ESMTP\r\n", replies=None, stall=False,
                 tls: ssl.SSLContext | None = None, ehlo_tls: bytes | None = None):
        self.greeting = greeting
        self.replies = {
            "EHLO": b"500 5.5.1 what?\r\n", "HELO": b"250 peer.test\r\n",
            "MAIL": b"250 2.1.0 OK\r\n", "RCPT": b"250 2.1.5 OK\r\n",
            "DATA": b"354 go on\r\n", "RSET": b"250 OK\r\n", "QUIT": b"221 bye\r\n",
            "AUTH": b"235 2.7.0 Authentication successful\r\n",
            "STARTTLS": b"220 2.0.0 ready\r\n",
            **(replies or {}),
        }
        self.stall = stall
        self.tls = tls
        self.ehlo_tls = ehlo_tls
        self.received: list[bytes] = []
        self.port = 0
        self.connections = 0
        self.open: set = set()

    async def kick(self, reply: bytes = b"421 4.4.2 peer.test idle timeout\r\n") -> None:
        """Say ``reply`` on every open connection and close it, as an idle timeout does."""
        await trio.testing.wait_all_tasks_blocked()     # every session back in receive_some
        for stream in list(self.open):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(reply)
                await stream.aclose()

    async def handle(self, stream):
        self.connections += 1
        if self.stall:
            await trio.sleep_forever()
        self.open.add(stream)
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.session(stream)
        finally:
            self.open.discard(stream)

    async def session(self, stream):
        await stream.send_all(self.greeting)
        reader = ClientReader(stream)
        while (event := await reader.next()) is not None:
            kind, line = event
            if kind == "data":
                self.received.append(b"DATA:" + unstuff(line))
                await stream.send_all(b"250 2.0.0 queued\r\n")
                continue
            self.received.append(line)
            word = line.split(b" ")[0].decode()
            verb = word.upper()
            reply = self.replies.get(word, self.replies.get(verb, b"502 no\r\n"))
            if verb == "EHLO" and self.ehlo_tls and isinstance(stream, trio.SSLStream):
                reply = self.ehlo_tls
            if callable(reply):
                reply = reply(line)
            if reply is None:
                await stream.aclose()
                return
            await stream.send_all(reply)
            if verb == "DATA" and reply.startswith(b"354"):
                reader.expect_data()
            if verb == "STARTTLS" and self.tls and reply.startswith(b"220"):
                stream = reader.stream = await self.starttls(stream)
            if verb == "QUIT":
                return

    async def starttls(self, stream):
        self.open.discard(stream)
        tls = trio.SSLStream(stream, self.tls, server_side=True)
        await tls.do_handshake()
        self.open.add(tls)
        return tls


async def start_peer(nursery, peer: Peer) -> Peer:
    listeners = await nursery.start(partial(trio.serve_tcp, lambda s: peer.handle(s), 0, host="127.0.0.1"))
    peer.port = listeners[0].socket.getsockname()[1]
    return peer
