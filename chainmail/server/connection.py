"""One connection: the loop between a trio stream and the sans-I/O engine.

Reads are large (64 KiB); every complete command in a read is handled before anything is
sent, and the replies of a pipelined batch go out in one write (RFC 2920).  No task is spawned
per command.

Sessions read and write their socket directly, trying the call first and waiting in trio's
epoll only when it would block: trio's socket methods add a scheduler pass after every
successful call.  TLS sessions do the same through :class:`.tlsio.TLSTransport` (an
``ssl.SSLObject`` over memory BIOs on the same socket) rather than ``trio.SSLStream``.  A
session yields at least every ``YIELD_EVERY`` calls that did not block, so a client that
never pauses cannot starve the others.  A lone session busy-polls before it waits
(:mod:`.busypoll`).

Idle timeouts cost nothing per read: a session notes when it starts waiting for the client
(``waiting_since``, only while reading or sending), and one sweeper per process
(:func:`sweep_idle_sessions`) cancels the sessions that waited longer than
``connectiontimeout``.  Trio deadlines moved on every read and write measured about 10% of the
CPU of a short session.  Handlers are never cut short by the idle timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import ssl
import time
from functools import partial
from typing import Any

import trio

from .. import health, metrics
from ..protocol import engine
from ..protocol.proxy import MAX_HEADER, ProxyError, ProxyHeader, parse_proxy_header
from ..protocol.replies import R, Reply
from ..session import Session, TLSInfo, sni_name
from ..verdict import Action, to_reply
from .busypoll import poll_readable
from .tlsio import TLSTransport

__all__ = ["serve_connection", "sweep_idle_sessions", "SessionRunner"]

log = logging.getLogger("chainmail.session")

RECEIVE_SIZE = 65536
FLUSH_AT = 65536          # send pending replies once this many bytes are queued
YIELD_EVERY = 16         # socket calls that did not block, at most, between two yields
SHUTDOWN_SEND_TIMEOUT = 2.0
PREAMBLE_TIMEOUT = 30.0   # at most this long for a PROXY header and a TLS handshake


def _address(sockaddr) -> tuple[str, int]:
    host, port = sockaddr[0], sockaddr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


#: accept() failures that mean "out of resources for now": wait and accept again
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1


async def sweep_idle_sessions(contexts, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """End the sessions that waited for their client longer than their ``connectiontimeout``
    (checked every quarter of the shortest timeout, at most every second)."""
    health.serving(contexts)   # the blocks in force: what health checks and scrapes look at
    timeouts = [float(ctx.config.connection_timeout or 0) for ctx in contexts]
    timeouts = [t for t in timeouts if t > 0]
    task_status.started()
    interval = min(1.0, max(0.05, min(timeouts) / 4)) if timeouts else 1.0
    while True:
        await trio.sleep(interval)
        metrics.flush_counts()
        if not timeouts:
            continue
        now = time.monotonic()
        for ctx in contexts:
            for runner in list(ctx.sessions):
                since = runner.waiting_since
                if since is not None and now - since > runner.timeout:
                    runner.scope.cancel()


async def serve_connection(ctx, stream: trio.SocketStream, *, peer=None, local=None,
                           plain: socket.socket | None = None) -> None:
    """Entry point for each accepted connection: connection limit, PROXY header, implicit TLS,
    per-IP limit (on the real client), then the session.  ``plain`` is the stream's socket,
    which a session without TLS reads and writes directly."""
    try:
        remote = _address(peer if peer is not None else stream.socket.getpeername())
        local = local if local is not None else _address(stream.socket.getsockname())
    except OSError:
        return
    cfg = ctx.config
    implicit_tls = ctx.tls is not None and cfg.tls.socket_tls
    metrics.connection_opened()
    try:
        if ctx.draining or not ctx.limits.admit():
            reply = R.shutting_down(ctx.hostname) if ctx.draining else R.too_many_connections(ctx.hostname)
            await _refuse(stream, None if implicit_tls else reply, remote)
            return
        ctx.load.sessions += 1
        try:
            await _serve_counted(ctx, stream, remote, local, implicit_tls, plain)
        finally:
            ctx.limits.release()
            ctx.load.sessions -= 1
    finally:
        metrics.flush_counts()   # before the gauge: a scrape that sees it closed sees its counts
        metrics.connection_closed()


async def _refuse(stream, reply: Reply | None, remote) -> None:
    log.info("refused %s:%s: %s", remote[0], remote[1], reply or "limit reached")
    metrics.connection_refused()
    if reply is None:
        return
    metrics.reply(reply.code)
    with trio.move_on_after(SHUTDOWN_SEND_TIMEOUT):
        try:
            await stream.send_all(reply.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _serve_counted(ctx, stream, remote, local, implicit_tls: bool, plain) -> None:
    cfg = ctx.config
    proxied_from = None
    leftover = b""
    tls_info = None
    timeout = float(cfg.connection_timeout or 0) or math.inf
    if not (cfg.proxy_required or implicit_tls):
        await _serve_session(ctx, stream, remote, local, None, None, b"", plain)
        return
    with trio.move_on_after(min(timeout, PREAMBLE_TIMEOUT)) as preamble:
        try:
            if cfg.proxy_required and (cfg.proxy_first or not implicit_tls):
                header = await read_proxy_header_exactly(stream.socket)
                if header.source is not None:
                    proxied_from, remote, local = remote, header.source, header.destination
            if implicit_tls:
                stream = TLSTransport(plain, ctx.tls.context, ctx.load, cfg.busy_poll / 1e6)
                await _handshake(stream)
                tls_info = tls_info_of(stream.sslobj)
                if cfg.proxy_required and not cfg.proxy_first:
                    header, leftover = await read_proxy_header_from(stream)
                    if header.source is not None:
                        proxied_from, remote, local = remote, header.source, header.destination
        except ProxyError as exc:
            log.warning("connection from %s:%s closed: %s", remote[0], remote[1], exc)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("connection from %s:%s failed before the session began: %s", remote[0],
                     remote[1], exc.__cause__ or exc)
            return
    if preamble.cancelled_caught:
        log.warning("connection from %s:%s closed: no PROXY header or TLS handshake in time",
                    remote[0], remote[1])
        return
    await _serve_session(ctx, stream, remote, local, tls_info, proxied_from, leftover, plain)


async def _serve_session(ctx, stream, remote, local, tls_info, proxied_from, leftover,
                         plain=None) -> None:
    ip = remote[0]
    limits = ctx.limits
    if not limits.admit_ip(ip):
        await _refuse(stream, R.too_many_connections_from_ip(ctx.hostname), remote)
        return
    session = Session(ctx, remote, local, lmtp=ctx.lmtp)
    metrics.session_started(ctx.lmtp)
    session.tls = tls_info
    session.proxied_from = proxied_from
    runner = SessionRunner(ctx, stream, session, plain)
    if leftover:
        runner.conn.receive_data(leftover)
    ctx.sessions.add(runner)
    try:
        await runner.run()
    finally:
        ctx.sessions.discard(runner)
        limits.release_ip(ip)


async def _handshake(tls: TLSTransport) -> None:
    """The TLS handshake, counted (a cancelled one, by a timeout, counts as failed)."""
    try:
        await tls.handshake()
    except BaseException:
        metrics.tls_handshake(False)
        raise
    metrics.tls_handshake(True)


async def read_proxy_header_exactly(sock) -> ProxyHeader:
    """Read a PROXY header from a plain socket without consuming a byte past it (MSG_PEEK),
    so what follows (SMTP, or a TLS ClientHello) is left for its reader."""
    want = 16
    while True:
        data = await sock.recv(want, socket.MSG_PEEK)
        if not data:
            raise ProxyError("connection closed before the PROXY header")
        header = parse_proxy_header(data)
        if header is not None:
            await _consume(sock, header.length)
            return header
        if len(data) < want:
            # Peeked bytes stay readable, so waiting for "readable" would spin: poll briefly.
            # The caller bounds the whole wait.
            await trio.sleep(0.005)
            continue
        want = min(want * 4, MAX_HEADER)


async def _consume(sock, n: int) -> None:
    while n:
        chunk = await sock.recv(n)
        if not chunk:
            raise ProxyError("connection closed inside the PROXY header")
        n -= len(chunk)


async def read_proxy_header_from(transport: TLSTransport) -> tuple[ProxyHeader, bytes]:
    """Read a PROXY header from inside TLS; returns it and the bytes after it."""
    buf = b""
    while True:
        chunk = await transport.receive()
        if not chunk:
            raise ProxyError("connection closed before the PROXY header")
        buf += chunk
        header = parse_proxy_header(buf)
        if header is not None:
            return header, buf[header.length:]
        if len(buf) > MAX_HEADER:
            raise ProxyError("PROXY header too long")


def new_engine(config, chunking: bool = False) -> engine.Connection:
    """The protocol engine of a new session; ``chunking`` when the handler chain implements
    ``BDAT`` (RFC 3030), so that a BDAT line's chunk is read as data."""
    return engine.Connection(config.max_line_length,
                             normalize=config.bare_newline == "normalize", chunking=chunking)


def tls_info_of(tls: ssl.SSLObject) -> TLSInfo:
    """What the session and the Received: header tell of a finished handshake; the SNI name
    is the one the context's SNI callback saw in this task."""
    cipher = tls.cipher()
    return TLSInfo(protocol=tls.version() or "TLS", cipher=cipher[0] if cipher else "",
                   sni=sni_name.get())


class SessionRunner:
    """Drives one session.  ``idle`` is true while waiting for the client between
    transactions: the state in which a graceful shutdown may end the session at once."""

    def __init__(self, ctx, stream, session: Session, plain: socket.socket | None = None):
        self.ctx = ctx
        self.stream = stream
        # None only when the stream is not a plain socket: the methods that use it directly
        # are bound by _bind_io only when it is set.
        self.plain: socket.socket = plain   # type: ignore[assignment]
        self.unyielded = 0   # socket calls since the last yield
        self.busy_poll = ctx.config.busy_poll / 1e6
        self._bind_io()
        self.session = session
        self.conn = new_engine(ctx.config, chunking=ctx.chain.implements("BDAT"))
        self.out: list[bytes] = []
        #: the reply to the BDAT command whose chunk is being read, when it was refused (its
        #: chunk is then read and dropped); None while the chunk goes to the data receiver
        self.chunk_refusal: Reply | None = None
        self.out_size = 0
        self.scope = trio.CancelScope()
        self.idle = False
        self.shutdown_requested = False
        self.batch_position = 0  # commands handled from the current read
        self.timeout = float(ctx.config.connection_timeout or 0) or math.inf
        #: time.monotonic() when it began waiting for the client (reading, or sending to a
        #: client that does not read); None while a command is being handled
        self.waiting_since: float | None = None

    def _bind_io(self) -> None:
        """Plain TCP goes straight to the socket, bypassing trio's socket methods and their
        scheduler pass after every call (stack-probe.md §2); TLS goes through the
        :class:`TLSTransport` on that same socket."""
        stream = self.stream
        if type(stream) is trio.SocketStream and self.plain is not None:
            self.receive = self._receive_plain
            self.send_all = self._send_all_plain
        elif type(stream) is TLSTransport:
            self.receive = stream.receive
            self.send_all = stream.send_all
        else:
            self.receive = partial(stream.receive_some, RECEIVE_SIZE)
            self.send_all = stream.send_all

    async def _receive_plain(self) -> bytes:
        try:
            data = self.plain.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return await self._wait_and_receive()
        self.unyielded += 1
        if self.unyielded >= YIELD_EVERY:
            self.unyielded = 0
            await trio.lowlevel.checkpoint()
        return data

    async def _wait_and_receive(self) -> bytes:
        sock = self.plain
        if self.busy_poll and self.ctx.load.lone and poll_readable(sock, self.busy_poll):
            with contextlib.suppress(BlockingIOError):   # readable can still mean nothing
                return sock.recv(RECEIVE_SIZE)
        while True:
            self.unyielded = 0
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue

    async def _send_all_plain(self, data: bytes) -> None:
        sock = self.plain
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            view = memoryview(data)
            while sent < len(view):
                self.unyielded = 0
                await trio.lowlevel.wait_writable(sock)
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(view[sent:])
        elif not self.ctx.load.lone:
            # Let the other sessions run before reading the client's answer, which is then
            # usually there already (as trio's own send does).
            self.unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- shutdown -------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        """Called on SIGTERM: end now if idle, else after the current transaction."""
        self.shutdown_requested = True
        if self.idle:
            self.scope.cancel()

    # -- output -----------------------------------------------------------------------------
    def queue(self, reply: Reply) -> None:
        metrics.reply(reply.code)
        data = reply.encode()
        self.out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if not self.out:
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        self.out_size = 0
        self.waiting_since = time.monotonic()
        try:
            await self.send_all(data)
        finally:
            self.waiting_since = None

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        chain = self.ctx.chain
        session = self.session
        try:
            with self.scope:
                try:
                    await self._greet(chain)
                    await self._loop(chain)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass  # the client went away
            if self.scope.cancelled_caught:
                await self._say_goodbye()
        finally:
            if type(self.stream) is TLSTransport:
                self.stream.close()   # close_notify, if the socket takes it at once
            receiver = session.data_receiver
            if receiver is not None:
                session.data_receiver = None
                receiver.abort()
            if chain.hooks["on_disconnect"]:
                with trio.CancelScope(shield=True):
                    try:
                        await chain.collect("on_disconnect", session)
                    except Exception:
                        log.exception("on_disconnect handler failed for %s", session)

    async def _say_goodbye(self) -> None:
        host = self.ctx.hostname
        reply = R.shutting_down(host) if self.shutdown_requested else R.idle_timeout(host)
        log.info("%s: closing: %s", self.session, reply)
        metrics.reply(reply.code)
        with trio.move_on_after(SHUTDOWN_SEND_TIMEOUT):
            try:
                await self.send_all(b"".join(self.out) + reply.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError,
                    OSError):
                pass

    async def _greet(self, chain) -> None:
        session = self.session
        try:
            verdict = await chain.verdict("on_connect", session)
        except Exception:
            log.exception("on_connect handler failed for %s", session)
            verdict = None
        reply = None
        if verdict is not None:
            reply = to_reply(verdict, self._default_greeting())
        if reply is None:
            reply = self._default_greeting()
        self.queue(reply)
        if reply.close or (verdict is not None and verdict.action in (Action.DENY, Action.DENYSOFT)
                           and verdict.disconnect):
            await self.flush()
            raise trio.ClosedResourceError
        await self.flush()

    def _default_greeting(self) -> Reply:
        cfg = self.ctx.config
        if cfg.smtp_greeting:
            return Reply.of(220, cfg.smtp_greeting)
        return R.greeting(self.ctx.hostname, self.ctx.lmtp)

    async def _loop(self, chain) -> None:
        conn = self.conn
        session = self.session
        receive = self.receive
        Command, BodyChunk, EndOfData = engine.Command, engine.BodyChunk, engine.EndOfData
        NEED_DATA, CLOSED = engine.NEED_DATA, engine.CLOSED
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if self.out:
                    await self.flush()
                if self.shutdown_requested and not session.transaction.has_sender \
                        and session.data_receiver is None:
                    self.scope.cancel()
                    await trio.lowlevel.checkpoint()
                self.idle = not session.transaction.has_sender and session.data_receiver is None
                self.waiting_since = time.monotonic()
                try:
                    data = await receive()
                finally:
                    self.waiting_since = None
                    self.idle = False
                conn.receive_data(data)
                self.batch_position = 0
                continue
            if type(event) is BodyChunk:
                receiver = session.data_receiver
                if receiver is not None and self.chunk_refusal is None:
                    receiver.write(event.data)
                continue
            if type(event) is Command:
                self.batch_position += 1
                reply = await self._command(chain, event)
                if conn.send(reply) is engine.TLS_HANDSHAKE:
                    if not await self._start_tls(reply):
                        return
                    receive = self.receive
                    continue
            elif type(event) is engine.BdatCommand:
                self.batch_position += 1
                # The chunk follows at once: it is read before this command is answered.
                self.chunk_refusal = await self._bdat(chain, event)
                continue
            elif type(event) is engine.EndOfChunk or type(event) is EndOfData:
                # The message is complete (DATA's final dot, or a BDAT chunk): over LMTP one
                # complete reply per accepted recipient (RFC 2033), the last one sent below.
                ended = (self._end_of_chunk(event) if type(event) is engine.EndOfChunk
                         else self._end_of_data(event))
                reply = self._queue_all_but_last(await ended)
                conn.send(reply)
            elif event is CLOSED:
                return
            elif type(event) is engine.LineTooLong:
                reply = R.line_too_long
            elif type(event) is engine.BareLineFeed:
                reply = R.data_bare_lf if event.in_data else R.bare_lf
            elif type(event) is engine.ForbiddenOctet:
                reply = self._forbidden(event)
            else:  # pragma: no cover - the engine has no other events
                raise AssertionError(event)
            self.queue(reply)
            if reply.close:
                await self.flush()
                return
            if self.out_size >= FLUSH_AT:
                await self.flush()

    def _queue_all_but_last(self, replies: "Reply | list[Reply]") -> Reply:
        if not isinstance(replies, list):
            return replies
        for each in replies[:-1]:
            self.queue(each)
        return replies[-1]

    def _forbidden(self, event) -> Reply:
        """A bare CR or a NUL: in a command, that command is refused; in message data, the
        message is refused and the session closed, as for a bare LF (docs/protocol.md)."""
        if not event.in_data:
            return R.bad_encoding
        what = "a NUL" if event.octet == b"\0" else "a bare CR"
        log.warning("%s: message data with %s refused, closing", self.session, what)
        return R.data_nul if event.octet == b"\0" else R.data_bare_lf

    async def _start_tls(self, reply: Reply) -> bool:
        """RFC 3207 after a ``220`` to STARTTLS.  Refuses (451, close) when the client sent
        anything with the STARTTLS line, before or after it (command injection,
        CVE-2011-0411).  Returns False when the session must end."""
        session = self.session
        if self.ctx.tls is None:   # a handler answered 220 to STARTTLS with no TLS set up
            log.error("%s: STARTTLS answered 220 but no TLS is configured", session)
            self.out.clear()
            self.queue(R.unable_to_process.closing())
            await self.flush()
            return False
        if self.batch_position > 1 or self.conn.buffered:
            log.warning("%s: STARTTLS pipelined with other data: closing", session)
            self.out.clear()
            self.queue(R.unable_to_process.closing())
            await self.flush()
            return False
        self.queue(reply)
        await self.flush()
        tls = TLSTransport(self.plain, self.ctx.tls.context, self.ctx.load, self.busy_poll)
        self.scope.deadline = trio.current_time() + min(self.timeout, PREAMBLE_TIMEOUT)
        try:
            await _handshake(tls)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: TLS handshake failed: %s", session, exc.__cause__ or exc)
            return False
        finally:
            self.scope.deadline = math.inf
        self.stream = tls
        self._bind_io()
        self.conn.start_tls()
        info = tls_info_of(tls.sslobj)
        session.reset_for_tls(info)
        log.info("%s: TLS started: %s %s", session, info.protocol, info.cipher)
        return True

    async def _command(self, chain, command) -> Reply:
        session = self.session
        before = session.data_receiver
        try:
            handler = session.line_handler
            if handler is not None:
                session.line_handler = None
                reply = await handler(session, command.line)
            else:
                metrics.command(command.verb)
                reply = await chain.dispatch(session, command)
        except trio.TooSlowError:
            log.error("%s: a handler of %s overran its time budget", session, command.verb)
            reply = R.unable_to_process
        except Exception:
            log.exception("%s: handler failed on %s", session, command.verb)
            reply = R.unable_to_process
        if reply is None:
            reply = R.unrecognized(command.verb)
        receiver = session.data_receiver
        if receiver is not None and receiver is not before and reply.code != 354:
            # a handler set up a receiver but refused DATA after all
            receiver.abort()
            session.data_receiver = before
        return reply

    async def _bdat(self, chain, command) -> Reply | None:
        """A BDAT command (RFC 3030), before its chunk is read: None when the chunk goes to
        the session's data receiver, else the reply (the chunk is then read and dropped)."""
        session = self.session
        metrics.command("BDAT")
        try:
            reply = await chain.dispatch(session, command)
        except trio.TooSlowError:
            log.error("%s: a handler of BDAT overran its time budget", session)
            reply = R.unable_to_process
        except Exception:
            log.exception("%s: handler failed on BDAT", session)
            reply = R.unable_to_process
        if reply is None and session.data_receiver is None:
            log.error("%s: a BDAT handler took a chunk without a data receiver", session)
            reply = R.unable_to_process
        return reply

    async def _end_of_chunk(self, end) -> "Reply | list[Reply]":
        """The reply to a BDAT command once its chunk is read.  After the LAST chunk, or a
        refused one, the transaction is over (RFC 3030 §2)."""
        session = self.session
        refusal, self.chunk_refusal = self.chunk_refusal, None
        if refusal is not None:
            if session.data_receiver is not None:
                session.reset_transaction()   # a refused chunk fails its transaction
            return refusal
        receiver: Any = session.data_receiver
        if receiver is None:   # pragma: no cover - a taken chunk always has a receiver
            return R.unable_to_process
        try:
            reply = await receiver.end_chunk(end)
        except trio.TooSlowError:
            log.error("%s: a message handler overran its time budget", session)
            reply = R.unable_to_process
        except Exception:
            log.exception("%s: message handling failed", session)
            reply = R.unable_to_process
        last = reply[-1] if type(reply) is list else reply
        if end.last or not last.is_positive:
            if session.data_receiver is receiver:
                session.data_receiver = None
            if not end.last or not last.is_positive:
                receiver.abort()
            session.reset_transaction()
        return reply

    async def _end_of_data(self, end) -> "Reply | list[Reply]":
        session = self.session
        receiver = session.data_receiver
        session.data_receiver = None
        if receiver is None:  # pragma: no cover - data mode is only entered with a receiver
            return R.unable_to_process
        try:
            return await receiver.finish(end)
        except trio.TooSlowError:
            log.error("%s: a message handler overran its time budget", session)
            receiver.abort()
            return R.unable_to_process
        except Exception:
            log.exception("%s: message handling failed", session)
            receiver.abort()
            return R.unable_to_process
        finally:
            session.reset_transaction()
