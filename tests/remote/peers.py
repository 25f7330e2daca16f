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

    async def exactly(self, size: int) -> bytes | None:
        """The next ``size`` octets (a BDAT chunk), or None once the client has closed."""
        while len(self.buf) < size:
            chunk = await self.stream.receive_some(max(65536, size - len(self.buf)))
            if not chunk:
                return None
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

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
    without answering.  ``BDAT <n> [LAST]`` (RFC 3030) reads its chunk before the reply
    (default ``250``); the chunks of a transaction accepted through ``LAST`` are recorded as
    one ``DATA:`` entry, like a DATA body.  With ``tls`` (a server ``SSLContext``) ``STARTTLS`` is answered
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
            "STARTTLS": b"220 2.0.0 ready\r\n", "BDAT": b"250 2.0.0 chunk OK\r\n",
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
        chunks: list[bytes] = []
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
            if verb in ("MAIL", "RSET"):
                chunks = []           # a new transaction: earlier chunks are discarded
            if verb == "BDAT":
                args = line.split()
                chunk = await reader.exactly(int(args[1]))
                if chunk is None:
                    return
                chunks.append(chunk)
                reply = reply(line) if callable(reply) else reply
                if reply is None:
                    await stream.aclose()
                    return
                if not reply.startswith(b"2"):
                    chunks = []
                elif args[-1].upper() == b"LAST":
                    self.received.append(b"DATA:" + b"".join(chunks))
                    chunks = []
                await stream.send_all(reply)
                continue
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


# ------------------------------------------------------------------ TLS peers

def tls_server_context(issuer, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for ``names`` from ``issuer`` (a trustme CA)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issuer.issue_cert(*names).configure_cert(ctx)
    return ctx


def starttls_peer(ctx: ssl.SSLContext, *after_tls: str) -> Peer:
    """A peer offering STARTTLS with the server context ``ctx``; after it, ``after_tls``."""
    return Peer(replies={"EHLO": ehlo("PIPELINING", "STARTTLS")}, tls=ctx,
                ehlo_tls=ehlo("PIPELINING", *after_tls))


class BrokenTlsPeer(Peer):
    """Offers STARTTLS and answers ``220``, then sends clear text instead of a TLS
    handshake: the client's handshake fails.  ``tls_attempts`` counts those attempts."""

    def __init__(self) -> None:
        super().__init__(replies={"EHLO": ehlo("PIPELINING", "STARTTLS")},
                         tls=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))  # never loaded
        self.tls_attempts = 0

    async def starttls(self, stream):
        self.tls_attempts += 1
        await stream.receive_some(4096)           # the client's hello
        await stream.send_all(b"this is not TLS\r\n")
        await stream.aclose()
        raise trio.ClosedResourceError


async def start_peer_at(nursery, peer: Peer, host: str, port: int) -> Peer:
    """Serve ``peer`` on ``host:port`` (a loopback address; port 0 picks one)."""
    listeners = await nursery.start(partial(trio.serve_tcp, lambda s: peer.handle(s), port,
                                            host=host))
    peer.port = listeners[0].socket.getsockname()[1]
    return peer


class PolicyServer:
    """An HTTPS server on a loopback address for MTA-STS policies, in a thread of its own.

    ``files[path]`` is ``(status, content type, body, extra headers)``; other paths get 404.
    ``requests`` lists ``(Host header, path)`` of each request.
    """

    def __init__(self, ctx: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0) -> None:
        import http.server
        import threading

        self.files: dict[str, tuple[int, str, bytes, dict[str, str]]] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:     # noqa: N802 (http.server's name)
                server.requests.append((self.headers.get("Host", ""), self.path))
                status, ctype, body, extra = server.files.get(
                    self.path, (404, "text/plain", b"not found\n", {}))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="policy-server", daemon=True)
        self.thread.start()

    def policy(self, text: str, *, status: int = 200, ctype: str = "text/plain",
               headers: dict[str, str] | None = None) -> None:
        """Serve ``text`` at /.well-known/mta-sts.txt."""
        self.files["/.well-known/mta-sts.txt"] = (status, ctype, text.encode(), headers or {})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
