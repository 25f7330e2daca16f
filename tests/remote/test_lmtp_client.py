"""The outgoing client in LMTP mode (RFC 2033): LHLO, one reply per accepted recipient after
DATA or BDAT LAST, Unix sockets; against chainmail's own LMTP server and scripted peers."""

from __future__ import annotations

import contextlib
import os
from functools import partial

import pytest
import trio

from chainmail.remote.client import SmtpClient, SmtpConnectionError, SmtpReplyError

from ..integration.test_lmtp import lmtp, maildir, with_users  # noqa: F401  (fixture)
from .peers import ClientReader, ehlo, unstuff

MESSAGE = b"Subject: lmtp\r\n\r\nline one\r\n.dotted line\r\n"


class LmtpPeer:
    """A scripted LMTP server: ``rcpt(address)`` and ``deliver(address)`` give the reply to
    each recipient's ``RCPT`` and its reply after the content (default ``250``).
    ``close_after`` closes the connection after that many per-recipient replies."""

    def __init__(self, *, lhlo: bytes = ehlo("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
                 rcpt=None, deliver=None, chunk=None, close_after: int | None = None):
        self.lhlo = lhlo
        self.rcpt = rcpt or (lambda a: b"250 2.1.5 OK\r\n")
        self.deliver = deliver or (lambda a: f"250 2.0.0 <{a}> Saved\r\n".encode())
        self.chunk = chunk or (lambda n: b"250 2.0.0 chunk OK\r\n")
        self.close_after = close_after
        self.received: list[bytes] = []
        self.bodies: list[bytes] = []

    async def handle(self, stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.session(stream)

    async def finish(self, stream, accepted: list[str]) -> bool:
        for n, address in enumerate(accepted):
            if self.close_after is not None and n >= self.close_after:
                await stream.aclose()
                return False
            await stream.send_all(self.deliver(address))
        return True

    async def session(self, stream) -> None:
        await stream.send_all(b"220 store.test LMTP ready\r\n")
        reader = ClientReader(stream)
        accepted: list[str] = []
        chunks: list[bytes] = []
        while (event := await reader.next()) is not None:
            kind, line = event
            if kind == "data":
                self.bodies.append(unstuff(line))
                if not await self.finish(stream, accepted):
                    return
                continue
            self.received.append(line)
            verb = line.split(b" ")[0].upper()
            if verb == b"LHLO":
                reply = self.lhlo
            elif verb == b"MAIL":
                accepted, chunks, reply = [], [], b"250 2.1.0 OK\r\n"
            elif verb == b"RCPT":
                address = line.decode().partition("<")[2].rstrip(">")
                reply = self.rcpt(address)
                if reply.startswith(b"2"):
                    accepted.append(address)
            elif verb == b"DATA":
                reader.expect_data()
                reply = b"354 OK\r\n"
            elif verb == b"BDAT":
                args = line.split()
                chunks.append(await reader.exactly(int(args[1])) or b"")
                if args[-1].upper() == b"LAST":
                    self.bodies.append(b"".join(chunks))
                    if not await self.finish(stream, accepted):
                        return
                    continue
                reply = self.chunk(len(chunks))
            elif verb == b"QUIT":
                await stream.send_all(b"221 2.0.0 Bye\r\n")
                return
            else:
                reply = b"250 2.0.0 OK\r\n" if verb == b"RSET" else b"500 5.5.1 Unknown command\r\n"
            await stream.send_all(reply)


async def serve(nursery, peer: LmtpPeer) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, peer.handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def connect(port: int) -> SmtpClient:
    return await SmtpClient.connect("127.0.0.1", port, helo_name="mx.test", timeout=5,
                                    connect_timeout=5, starttls="never", lmtp=True)


# ------------------------------------------------------------------ against chainmail itself

async def test_lmtp_to_chainmail(lmtp):  # noqa: F811
    server = lmtp()
    with_users(server, "bob@local.test", "cedric@local.test")
    client = await connect(server.lmtp_port)
    assert client.esmtp and "PIPELINING" in client.extensions
    rcpts = ["bob@local.test", "nobody@local.test", "cedric@local.test"]
    result = await client.send("a@remote.example", rcpts, MESSAGE, send_partial=True)
    await client.quit()
    assert [r.reply.code for r in result.recipients] == [250, 550, 250]
    assert list(result.data_replies) == ["bob@local.test", "cedric@local.test"]
    assert str(result.data_replies["cedric@local.test"]) == \
        "250 2.6.0 Message received <cedric@local.test>"
    assert result.delivered == ["bob@local.test", "cedric@local.test"]
    assert result.final_reply("nobody@local.test").enhanced == "5.1.1"
    for user in ("bob@local.test", "cedric@local.test"):
        [msg] = list(maildir(server, user))
        assert msg["Subject"] == "lmtp"
        assert msg.get_payload() == "line one\n.dotted line\n"


# ------------------------------------------------------------------ scripted peers

async def test_lhlo_not_ehlo_and_no_helo_fallback(nursery):
    peer = LmtpPeer(lhlo=b"500 5.5.1 Unknown command\r\n")
    port = await serve(nursery, peer)
    with pytest.raises(SmtpReplyError) as err:
        await connect(port)
    assert err.value.command == "LHLO" and err.value.permanent
    assert peer.received == [b"LHLO mx.test"]


@pytest.mark.parametrize("chunking", [False, True])
async def test_one_reply_per_recipient_after_the_content(nursery, chunking):
    replies = {"full@s.test": b"552 5.2.2 <full@s.test> Quota exceeded\r\n",
               "busy@s.test": b"451 4.2.0 <busy@s.test> Mailbox is locked\r\n"}
    keywords = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", *(["CHUNKING"] if chunking else []))
    peer = LmtpPeer(lhlo=ehlo(*keywords), deliver=lambda a: replies.get(
        a, f"250 2.0.0 <{a}> Saved\r\n".encode()))
    client = await connect(await serve(nursery, peer))
    client.chunk_size = 7
    rcpts = ["ok@s.test", "full@s.test", "busy@s.test", "fine@s.test"]
    result = await client.send("a@x.test", rcpts, MESSAGE)
    # and the session goes on: a second mail on the same connection
    again = await client.send("a@x.test", ["ok@s.test"], b"Subject: two\r\n\r\n2\r\n")
    await client.quit()
    assert result.delivered == ["ok@s.test", "fine@s.test"]
    assert {a: r.code for a, r in result.data_replies.items()} == {
        "ok@s.test": 250, "full@s.test": 552, "busy@s.test": 451, "fine@s.test": 250}
    assert result.final_reply("busy@s.test").enhanced == "4.2.0"
    assert again.delivered == ["ok@s.test"]
    assert peer.bodies[0] == MESSAGE
    bdat = [c for c in peer.received if c.startswith(b"BDAT")]
    if chunking:   # 7-octet chunks, each answered before the next; LAST answered per recipient
        assert bdat[:2] == [b"BDAT 7", b"BDAT 7"] and bdat[-1].endswith(b"LAST")
        assert not any(c == b"DATA" for c in peer.received)
    else:
        assert bdat == [] and b"DATA" in peer.received


async def test_refused_chunk_speaks_for_every_recipient(nursery):
    peer = LmtpPeer(lhlo=ehlo("PIPELINING", "CHUNKING"),
                    chunk=lambda n: b"552 5.3.4 too big\r\n" if n == 2 else b"250 2.0.0 OK\r\n")
    client = await connect(await serve(nursery, peer))
    client.chunk_size = 5
    result = await client.send("a@x.test", ["u@s.test", "v@s.test"], MESSAGE)
    await client.quit()
    assert result.delivered == [] and result.data_replies == {}
    assert result.final_reply("v@s.test").code == 552
    assert [c for c in peer.received if c.startswith(b"BDAT")] == [b"BDAT 5", b"BDAT 5"]
    assert b"RSET" in peer.received


async def test_refused_recipients_and_connection_lost_midway(nursery):
    peer = LmtpPeer(rcpt=lambda a: b"550 5.1.1 unknown\r\n" if a.startswith("x") else b"250 OK\r\n",
                    close_after=1)
    client = await connect(await serve(nursery, peer))
    result = await client.send("a@x.test", ["u@s.test", "x@s.test", "v@s.test", "w@s.test"],
                               MESSAGE, send_partial=True)
    await client.aclose()
    # u was answered before the close: delivered; v and w are left for a retry
    assert result.delivered == ["u@s.test"]
    assert result.final_reply("x@s.test").code == 550
    for address in ("v@s.test", "w@s.test"):
        reply = result.final_reply(address)
        assert reply.code == 421 and reply.enhanced == "4.4.2"


async def test_unix_socket(nursery, tmp_path):
    path = str(tmp_path / "lmtp.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    peer = LmtpPeer()
    await nursery.start(trio.serve_listeners, peer.handle, [trio.SocketListener(sock)])
    client = await SmtpClient.connect(path, 24, helo_name="mx.test", timeout=5, lmtp=True,
                                      starttls="never")
    result = await client.send("a@x.test", ["u@s.test"], MESSAGE)
    await client.quit()
    assert result.delivered == ["u@s.test"] and peer.bodies == [MESSAGE]
    os.unlink(path)
    with pytest.raises(SmtpConnectionError, match=f"cannot connect to {path}"):
        await SmtpClient.connect(path, 24, timeout=5, lmtp=True)
