"""One connection: the loop between a trio stream and the sans-I/O engine.

Reads are large (64 KiB); every complete command in a read is handled before anything is
sent, and the replies of a pipelined batch go out in one write (RFC 2920).  No task is spawned
per command.  One cancel scope per connection carries the idle deadline, moved forward only
while waiting for the client, so handlers are never cut short by the idle timeout.
"""

from __future__ import annotations

import logging
import math

import trio

from ..protocol import engine
from ..protocol.replies import R, Reply
from ..session import Session
from ..verdict import Action, to_reply

__all__ = ["serve_connection", "SessionRunner"]

log = logging.getLogger("chainmail.session")

RECEIVE_SIZE = 65536
FLUSH_AT = 65536          # send pending replies once this many bytes are queued
SHUTDOWN_SEND_TIMEOUT = 2.0


def _address(sockaddr) -> tuple[str, int]:
    host, port = sockaddr[0], sockaddr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


async def serve_connection(ctx, stream: trio.SocketStream) -> None:
    """Entry point for each accepted connection: limits first, then the session."""
    try:
        remote = _address(stream.socket.getpeername())
        local = _address(stream.socket.getsockname())
    except OSError:
        return
    cfg = ctx.config
    ip = remote[0]
    refusal = None
    if ctx.draining:
        refusal = R.shutting_down(ctx.hostname)
    elif cfg.connection_limit and ctx.active >= cfg.connection_limit:
        refusal = R.too_many_connections(ctx.hostname)
    elif cfg.connection_limit_per_ip and ctx.per_ip[ip] >= cfg.connection_limit_per_ip:
        refusal = R.too_many_connections_from_ip(ctx.hostname)
    if refusal is not None:
        log.info("refused %s:%s: %s", ip, remote[1], refusal)
        with trio.move_on_after(SHUTDOWN_SEND_TIMEOUT):
            try:
                await stream.send_all(refusal.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        return
    ctx.active += 1
    ctx.per_ip[ip] += 1
    session = Session(ctx, remote, local, lmtp=ctx.lmtp)
    runner = SessionRunner(ctx, stream, session)
    ctx.sessions.add(runner)
    try:
        await runner.run()
    finally:
        ctx.sessions.discard(runner)
        ctx.active -= 1
        ctx.per_ip[ip] -= 1
        if not ctx.per_ip[ip]:
            del ctx.per_ip[ip]
        # trio.serve_listeners closes the stream after this handler returns.


class SessionRunner:
    """Drives one session.  ``idle`` is true while waiting for the client between
    transactions: the state in which a graceful shutdown may end the session at once."""

    def __init__(self, ctx, stream, session: Session):
        self.ctx = ctx
        self.stream = stream
        self.session = session
        self.conn = engine.Connection(ctx.config.max_line_length)
        self.out: list[bytes] = []
        self.out_size = 0
        self.scope = trio.CancelScope()
        self.idle = False
        self.shutdown_requested = False
        self.timeout = float(ctx.config.connection_timeout or 0) or math.inf

    # -- shutdown -------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        """Called on SIGTERM: end now if idle, else after the current transaction."""
        self.shutdown_requested = True
        if self.idle:
            self.scope.cancel()

    # -- output -----------------------------------------------------------------------------
    def queue(self, reply: Reply) -> None:
        data = reply.encode()
        self.out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if not self.out:
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        self.out_size = 0
        self.scope.deadline = trio.current_time() + self.timeout
        try:
            await self.stream.send_all(data)
        finally:
            self.scope.deadline = math.inf

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        chain = self.ctx.chain
        session = self.session
        try:
            with self.scope:
                try:
                    await self._greet(chain)
                    await self._loop(chain)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if self.scope.cancelled_caught:
                await self._say_goodbye()
        finally:
            receiver = session.data_receiver
            if receiver is not None:
                session.data_receiver = None
                receiver.abort()
            with trio.CancelScope(shield=True):
                try:
                    await chain.collect("on_disconnect", session)
                except Exception:
                    log.exception("on_disconnect handler failed for %s", session)

    async def _say_goodbye(self) -> None:
        host = self.ctx.hostname
        reply = R.shutting_down(host) if self.shutdown_requested else R.idle_timeout(host)
        log.info("%s: closing: %s", self.session, reply)
        with trio.move_on_after(SHUTDOWN_SEND_TIMEOUT):
            try:
                await self.stream.send_all(b"".join(self.out) + reply.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
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
        stream = self.stream
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
                self.scope.deadline = trio.current_time() + self.timeout
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                finally:
                    self.scope.deadline = math.inf
                    self.idle = False
                conn.receive_data(data)
                continue
            if type(event) is BodyChunk:
                receiver = session.data_receiver
                if receiver is not None:
                    receiver.write(event.data)
                continue
            if type(event) is Command:
                reply = await self._command(chain, event)
            elif type(event) is EndOfData:
                reply = await self._end_of_data(event)
            elif event is CLOSED:
                return
            elif type(event) is engine.LineTooLong:
                reply = R.line_too_long
            elif type(event) is engine.BareLineFeed:
                reply = R.data_bare_lf if event.in_data else R.bare_lf
            else:  # pragma: no cover - the engine has no other events
                raise AssertionError(event)
            self.queue(reply)
            if reply.close:
                await self.flush()
                return
            if self.out_size >= FLUSH_AT:
                await self.flush()

    async def _command(self, chain, command) -> Reply:
        session = self.session
        try:
            reply = await chain.dispatch(session, command)
        except trio.TooSlowError:
            log.error("%s: a handler of %s overran its time budget", session, command.verb)
            reply = R.unable_to_process
        except Exception:
            log.exception("%s: handler failed on %s", session, command.verb)
            reply = R.unable_to_process
        if reply is None:
            reply = R.unrecognized(command.verb)
        if session.data_receiver is not None:
            if reply.code == 354:
                self.conn.start_data()
            else:  # a handler set up a receiver but refused DATA after all
                session.data_receiver.abort()
                session.data_receiver = None
        return reply

    async def _end_of_data(self, end) -> Reply:
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
