#!/usr/bin/env python3
"""STARTTLS load generator for bench/run.py: smtp-source has no STARTTLS (its -T is a TCP window).

    python bench/tls_source.py -s 10 -m 300 -l 1024 [-d 50] [-r 1] [-P 1] \\
        -f sender@bench.test -t rcpt@bench.test -M bench.test 127.0.0.1:PORT

-s sessions run at once (asyncio tasks, in -P processes); each opens a connection, reads the
greeting, sends EHLO, STARTTLS, does the TLS handshake (no certificate check: the benchmark's
certificate is self-signed), EHLO again, then sends -d messages (default 1: a connection and a
handshake per message) and QUIT, and starts over until -m messages are sent in all. Commands go one
at a time, without PIPELINING, as smtp-source sends them. Recipients follow smtp-source -r K:
"Krcpt@bench.test", ..., "2rcpt@bench.test", "rcpt@bench.test". The message is -l bytes of body
lines after a few header lines.

Exit status 0 when every message got 250; otherwise 1, with the unexpected reply on stderr.
Standard library only.
"""

from __future__ import annotations

import contextlib
import argparse
import asyncio
import os
import ssl
import sys
import time

TIMEOUT = 60.0


class Unexpected(Exception):
    """A reply the client did not expect: the run fails."""


def make_body(length: int) -> bytes:
    line = b"La de da de da, the quick brown fox jumps over the lazy dog 0123456789 abcd\r\n"
    out = bytearray()
    while len(out) < length:
        out += line
    del out[max(length, 2):]
    out[-2:] = b"\r\n"  # the last line, cut short, still ends with CRLF
    return bytes(out)


def recipients(to: str, count: int) -> list[str]:
    local, _, domain = to.partition("@")
    return [f"{k}{local}@{domain}" for k in range(count, 1, -1)] + [to]


class Source:
    def __init__(self, args, total: int, proc: int) -> None:
        self.args = args
        self.left = total
        self.sent = 0
        self.proc = proc
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.host, _, port = args.target.rpartition(":")
        self.port = int(port)
        self.rcpts = [f"RCPT TO:<{r}>\r\n".encode() for r in recipients(args.to, args.rcpts)]
        self.mail = f"MAIL FROM:<{args.sender}>\r\n".encode()
        self.ehlo = f"EHLO {args.helo}\r\n".encode()
        self.head = (f"From: <{args.sender}>\r\nTo: <{args.to}>\r\nSubject: bench\r\n").encode()
        self.body = make_body(args.length)

    async def reply(self, reader: asyncio.StreamReader, want: str, what: str) -> list[bytes]:
        lines = []
        while True:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if not line:
                raise Unexpected(f"connection closed after {what}")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        if not lines[-1].startswith(want.encode()):
            raise Unexpected(f"{what}: {b' | '.join(l.strip() for l in lines).decode(errors='replace')}")
        return lines

    async def command(self, reader, writer, data: bytes, want: str) -> list[bytes]:
        writer.write(data)
        return await self.reply(reader, want, data.split(b"\r\n")[0].decode(errors="replace"))

    async def session(self, worker: int) -> None:
        while self.left > 0:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), TIMEOUT)
            try:
                await self.reply(reader, "220", "greeting")
                ext = await self.command(reader, writer, self.ehlo, "250")
                if not any(l[4:].upper().startswith(b"STARTTLS") for l in ext):
                    raise Unexpected("EHLO does not offer STARTTLS")
                await self.command(reader, writer, b"STARTTLS\r\n", "220")
                await asyncio.wait_for(
                    writer.start_tls(self.ctx, server_hostname=self.args.helo), TIMEOUT)
                await self.command(reader, writer, self.ehlo, "250")
                for _ in range(self.args.per_conn):
                    if self.left <= 0:
                        break
                    self.left -= 1
                    await self.command(reader, writer, self.mail, "250")
                    for r in self.rcpts:
                        await self.command(reader, writer, r, "250")
                    await self.command(reader, writer, b"DATA\r\n", "354")
                    mid = f"Message-ID: <{self.proc}.{worker}.{self.sent}.{time.time_ns()}@bench.test>\r\n\r\n"
                    writer.write(self.head + mid.encode() + self.body + b".\r\n")
                    await self.reply(reader, "250", "end of DATA")
                    self.sent += 1
                await self.command(reader, writer, b"QUIT\r\n", "221")
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()

    async def run(self, sessions: int) -> None:
        await asyncio.gather(*(self.session(i) for i in range(sessions)))


def run_proc(args, total: int, sessions: int, proc: int) -> int:
    src = Source(args, total, proc)
    try:
        asyncio.run(src.run(sessions))
    except (Unexpected, OSError, ssl.SSLError, asyncio.TimeoutError) as e:
        print(f"tls_source: {type(e).__name__}: {e} (after {src.sent} messages)", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-s", dest="sessions", type=int, default=1)
    ap.add_argument("-m", dest="messages", type=int, default=1)
    ap.add_argument("-l", dest="length", type=int, default=1024)
    ap.add_argument("-d", dest="per_conn", type=int, default=1, help="messages per connection")
    ap.add_argument("-r", dest="rcpts", type=int, default=1)
    ap.add_argument("-P", dest="procs", type=int, default=1, help="client processes")
    ap.add_argument("-f", dest="sender", default="sender@bench.test")
    ap.add_argument("-t", dest="to", default="rcpt@bench.test")
    ap.add_argument("-M", dest="helo", default="bench.test")
    ap.add_argument("target", help="HOST:PORT")
    args = ap.parse_args()
    procs = max(1, min(args.procs, args.sessions))
    t0 = time.perf_counter()
    if procs == 1:
        rc = run_proc(args, args.messages, args.sessions, 0)
    else:
        pids = []
        for i in range(procs):
            share = args.messages // procs + (1 if i < args.messages % procs else 0)
            sess = args.sessions // procs + (1 if i < args.sessions % procs else 0)
            pid = os.fork()
            if pid == 0:
                os._exit(run_proc(args, share, sess, i))
            pids.append(pid)
        rc = 0
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            rc = rc or (os.waitstatus_to_exitcode(status) != 0)
    if rc == 0:
        wall = time.perf_counter() - t0
        print(f"tls_source: {args.messages} messages in {wall:.2f} s", file=sys.stderr)
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
