"""TLS for a session, driven by the session loop: an ``ssl.SSLObject`` between two memory
BIOs, and the connection's plain socket called directly.

A TLS session reads and writes its socket the way a plain one does (``connection.py``): the
``recv``/``send`` is tried first, and trio's ``wait_readable``/``wait_writable`` is used only
when it would block; a lone session busy-polls before it parks (:mod:`.busypoll`).
``trio.SSLStream`` instead goes through its locks, a conflict detector and a ``SocketStream``
on every call, and hands out one TLS record (16 KiB) per read.

- :meth:`TLSTransport.receive` reads up to 64 KiB of TLS from the socket into the incoming BIO
  and returns everything that decrypts from it, in one ``bytes``: the engine sees whole
  batches of pipelined commands, and a message body in 64 KiB steps, as on plain TCP.
- :meth:`TLSTransport.send_all` encrypts into the outgoing BIO and sends what it holds.
  TLS bytes taken from the BIO and not sent when a wait was cancelled are kept and go out
  first with the next send, so a reply after an idle timeout is still well-formed TLS.
- TLS 1.3 session tickets, which OpenSSL writes as the server's handshake ends, are held
  back and sent with the first reply (as ``trio.SSLStream`` does): one packet fewer, and
  no data a client does not expect before it speaks
  (https://github.com/openssl/openssl/issues/7948).
- Post-handshake messages (a client's KeyUpdate) are handled by ``SSLObject.read``; anything
  OpenSSL writes in answer goes out before the session waits for the client again, and the
  KeyUpdate a client asks for goes with the next reply (OpenSSL sends it on its next write).
- The end of a session: a client's close_notify, or its EOF without one, ends the session
  as a plain EOF does (``receive`` returns ``b""``).  :meth:`TLSTransport.close` sends the
  server's close_notify if the socket takes it at once; it never waits.
- Errors surface as ``trio.SSLStream``'s did: ``trio.BrokenResourceError`` whose
  ``__cause__`` is the ``ssl.SSLError`` or ``OSError``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any, Callable

import trio

from .busypoll import poll_readable

__all__ = ["TLSTransport"]

RECEIVE_SIZE = 65536   # TLS bytes per socket read, as a plain session's reads
YIELD_EVERY = 16       # socket reads that did not block, at most, between two yields

# One buffer for the TLS bytes of a socket read, and one for what they decrypt to, for every
# session of the process (made with the first TLS session): each is filled and emptied with no
# await in between.  Plaintext is never longer than its TLS records; one 64 KiB read plus a
# partial record left from the read before fits in the second with room to spare.
_cipher: memoryview = None  # type: ignore[assignment]
_plain: memoryview = None   # type: ignore[assignment]


def _allocate_buffers() -> None:
    global _cipher, _plain
    _cipher = memoryview(bytearray(RECEIVE_SIZE))
    _plain = memoryview(bytearray(2 * RECEIVE_SIZE))


def _is_eof(exc: ssl.SSLError) -> bool:
    """The connection ended without close_notify (a ragged EOF)."""
    return isinstance(exc, ssl.SSLEOFError) or "UNEXPECTED_EOF_WHILE_READING" in str(exc)


class TLSTransport:
    """Server-side TLS over a non-blocking socket, for one session at a time.

    ``load`` is the process's ``ProcessLoad`` (``lone``: busy polling, and whether to yield
    after a send); ``busy_poll`` is in seconds, 0 for none.  The context is taken when the
    transport is made, so a reloaded keystore (SIGHUP) applies from the next handshake."""

    __slots__ = ("sock", "incoming", "outgoing", "sslobj", "load", "busy_poll", "unyielded",
                 "unsent", "ready", "eof", "broken", "established")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, load, busy_poll: float = 0.0):
        if _plain is None:
            _allocate_buffers()
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.load = load
        self.busy_poll = busy_poll
        self.unyielded = 0
        #: TLS bytes already taken from the outgoing BIO that must go out before anything
        #: else: the rest of a cancelled send, or TLS 1.3 tickets held for the first reply
        self.unsent = b""
        #: the incoming BIO may hold whole records not decrypted yet
        self.ready = False
        #: the client ended the TLS stream (close_notify, or EOF without it)
        self.eof = False
        #: a TLS or socket error: nothing more can be sent
        self.broken = False
        self.established = False

    # -- handshake --------------------------------------------------------------------------
    async def handshake(self) -> None:
        """The server's side of the handshake.  A failure raises ``trio.BrokenResourceError``
        (from the ``ssl.SSLError`` or ``OSError``), after sending OpenSSL's alert if the socket
        takes it at once."""
        do_handshake = self.sslobj.do_handshake
        while True:
            try:
                do_handshake()
                break
            except ssl.SSLWantReadError:   # send our flight, then read more of the client's
                if self.outgoing.pending or self.unsent:
                    await self._send(self._take_outgoing())
                await self._fill()
            except ssl.SSLError as exc:   # CertificateError included
                self.broken = True
                self._send_now()
                raise trio.BrokenResourceError from exc
        self.established = True
        self.ready = self.incoming.pending > 0   # the client may have spoken already
        if self.sslobj.version() == "TLSv1.3":
            self.unsent += self.outgoing.read()   # session tickets: with the first reply
        elif self.outgoing.pending:
            await self._send(self._take_outgoing())   # the last flight, which the client awaits

    # -- receiving --------------------------------------------------------------------------
    async def receive(self) -> bytes:
        """Everything the client has sent that decrypts now, at least one byte; ``b""`` once
        the client has ended the TLS stream (close_notify, or EOF without it)."""
        if self.eof:
            return b""
        if self.ready:
            data = self._decrypt()
            if data or self.eof:
                return data
        while True:
            if self.outgoing.pending:   # answers to post-handshake messages
                await self._send(self._take_outgoing())
            await self._fill()
            data = self._decrypt()
            if data:
                return data
            if self.eof or self.incoming.eof:
                self.eof = True
                return b""

    async def _fill(self) -> None:
        """One socket read into the incoming BIO (EOF marks it ended)."""
        try:
            try:
                n = self.sock.recv_into(_cipher)
                waited = False
            except BlockingIOError:
                n = await self._wait_and_fill()
                waited = True
        except OSError as exc:
            self.broken = True
            raise trio.BrokenResourceError from exc
        self._store(n)
        if not waited:
            self.unyielded += 1
            if self.unyielded >= YIELD_EVERY:
                self.unyielded = 0
                await trio.lowlevel.checkpoint()

    async def _wait_and_fill(self) -> int:
        """Wait until the socket is readable and read it into the shared buffer; the caller
        stores the bytes before anything else can run."""
        sock = self.sock
        if self.busy_poll and self.load.lone and poll_readable(sock, self.busy_poll):
            with contextlib.suppress(BlockingIOError):   # readable can still mean nothing
                return sock.recv_into(_cipher)
        while True:
            self.unyielded = 0
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv_into(_cipher)
            except BlockingIOError:
                continue

    def _store(self, n: int) -> None:
        if n:
            self.incoming.write(_cipher[:n])
            self.ready = True
        else:
            self.incoming.write_eof()

    def _decrypt(self) -> bytes:
        """All the plaintext the incoming BIO holds whole records of (``b""`` for none)."""
        # With a buffer, SSLObject.read returns a count (typeshed says bytes).
        read: Callable[[int, Any], int] = self.sslobj.read   # type: ignore[assignment]
        pending = self.sslobj.pending
        incoming = self.incoming
        size = len(_plain)
        got = 0
        self.ready = False
        while True:
            try:
                n = read(size - got, _plain[got:])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            except ssl.SSLError as exc:
                if _is_eof(exc):
                    self.eof = True
                    break
                self.broken = True
                raise trio.BrokenResourceError from exc
            if not n:             # close_notify
                self.eof = True
                break
            got += n
            if got == size:       # the buffer is full: the rest on the next call
                self.ready = True
                break
            if not incoming.pending and not pending():
                break
        return bytes(_plain[:got]) if got else b""

    # -- sending ----------------------------------------------------------------------------
    async def send_all(self, data: bytes) -> None:
        """Encrypt ``data`` and send it, with anything held back before it."""
        if data:
            try:
                self.sslobj.write(data)
            except ssl.SSLWantReadError:
                await self._write_after_reading(data)
            except ssl.SSLError as exc:
                self.broken = True
                raise trio.BrokenResourceError from exc
        out = self._take_outgoing()
        if not out:
            return
        try:
            sent = self.sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.broken = True
            raise trio.BrokenResourceError from exc
        if sent < len(out):
            await self._send(out, sent)
        elif not self.load.lone:
            # Let the other sessions run before reading the client's answer, as plain
            # sessions do.
            self.unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_after_reading(self, data: bytes) -> None:
        """``SSL_write`` needs the client's part of a handshake first (TLS 1.2
        renegotiation, which OpenSSL 3 refuses by default): send and read until it goes."""
        while True:
            if self.outgoing.pending or self.unsent:
                await self._send(self._take_outgoing())
            if self.incoming.eof:
                self.broken = True
                raise trio.BrokenResourceError("the client closed the connection")
            await self._fill()
            try:
                self.sslobj.write(data)
                return
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLError as exc:
                self.broken = True
                raise trio.BrokenResourceError from exc

    def _take_outgoing(self) -> bytes:
        out = self.outgoing.read()
        if self.unsent:
            out = self.unsent + out
            self.unsent = b""
        return out

    async def _send(self, data: bytes, sent: int = 0) -> None:
        """Send ``data[sent:]``, waiting for the socket as needed (at once when ``sent``:
        a partial send means its buffer is full).  What is left unsent when the wait is
        cancelled is kept for the next send."""
        sock = self.sock
        view = memoryview(data)
        blocked = sent > 0
        try:
            while sent < len(view):
                if blocked:
                    self.unyielded = 0
                    await trio.lowlevel.wait_writable(sock)
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    blocked = True
                    continue
                except OSError as exc:
                    self.broken = True
                    raise trio.BrokenResourceError from exc
                blocked = True
        finally:
            if sent < len(view):
                self.unsent = bytes(view[sent:]) + self.unsent

    def _send_now(self) -> None:
        """Send what is waiting if the socket takes it without blocking; drop it otherwise."""
        out = self._take_outgoing()
        if out:
            with contextlib.suppress(OSError):
                self.sock.send(out)

    # -- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        """Send the server's close_notify, if the connection is still sound and the socket
        takes it at once.  Never waits: the socket is closed right after."""
        if not self.established or self.broken:
            return
        self.broken = True   # nothing more after close_notify
        try:
            self.sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass   # sent; the client's own close_notify is not waited for
        except (ssl.SSLError, ValueError):
            return
        self._send_now()
