"""Scripted SMTP peers on 127.0.0.1 for the outgoing-mail tests."""

from __future__ import annotations

from functools import partial

import trio

__all__ = ["Peer", "start_peer"]


class Peer:
    """A scripted SMTP server on 127.0.0.1: ``replies`` maps a command verb to its reply."""

    def __init__(self, greeting=b"220 peer.test ESMTP\r\n", replies=None, stall=False):
        self.greeting = greeting
        self.replies = {
            "EHLO": b"500 5.5.1 what?\r\n", "HELO": b"250 peer.test\r\n",
            "MAIL": b"250 2.1.0 OK\r\n", "RCPT": b"250 2.1.5 OK\r\n",
            "DATA": b"354 go on\r\n", "RSET": b"250 OK\r\n", "QUIT": b"221 bye\r\n",
            "AUTH": b"235 2.7.0 Authentication successful\r\n",
            **(replies or {}),
        }
        self.stall = stall
        self.received: list[bytes] = []
        self.port = 0

    async def handle(self, stream):
        if self.stall:
            await trio.sleep_forever()
        await stream.send_all(self.greeting)
        buf = b""
        in_data = False
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.received.append(b"DATA:" + buf[:end + 2])
                    buf = buf[end + 5:]
                    in_data = False
                    await stream.send_all(b"250 2.0.0 queued\r\n")
                    continue
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                line, buf = buf[:end], buf[end + 2:]
                self.received.append(line)
                word = line.split(b" ")[0].decode()
                verb = word.upper()
                reply = self.replies.get(word, self.replies.get(verb, b"502 no\r\n"))
                if callable(reply):
                    reply = reply(line)
                await stream.send_all(reply)
                if verb == "DATA" and reply.startswith(b"354"):
                    in_data = True
                if verb == "QUIT":
                    return


async def start_peer(nursery, peer: Peer) -> Peer:
    listeners = await nursery.start(partial(trio.serve_tcp, lambda s: peer.handle(s), 0, host="127.0.0.1"))
    peer.port = listeners[0].socket.getsockname()[1]
    return peer
