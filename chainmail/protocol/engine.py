"""Sans-I/O SMTP/LMTP framing: bytes in, events out.

Modelled on h11: the server feeds whatever it received with :meth:`Connection.receive_data`
and drains :meth:`Connection.next_event` until it returns :data:`NEED_DATA`.  The engine never
awaits and never touches a socket, so a whole pipelined batch is parsed in one pass and the
same bytes give the same events however they are chunked.

Two modes:

* command mode: CRLF-terminated lines of at most ``max_line_length`` octets (CRLF excluded);
  a bare LF is refused, as Postfix does, because ambiguous line endings are how SMTP
  smuggling works.  A command line holding a bare CR or a NUL is refused on its own
  (:class:`ForbiddenOctet`): its framing is intact, so the session goes on.
* data mode (entered with :meth:`Connection.start_data` after a ``354``): the body is handed
  out as :class:`BodyChunk` events, dot-unstuffed, in pieces no larger than what was received,
  so memory stays bounded whatever the message size.  The only end of data is
  ``CRLF . CRLF``.  A bare LF (as James does), a bare CR or a NUL in the body ends the
  session (:class:`BareLineFeed`, :class:`ForbiddenOctet`): nothing of the message is kept,
  and no later byte is read as a command, so nothing smuggled after it can start a
  transaction.

With ``normalize`` (Postfix's ``smtpd_forbid_bare_newline = normalize``) a bare LF ends a
command line like a CRLF, and message data is handed out in the canonical form of
:mod:`chainmail.protocol.lineends` (NUL removed, bare LF and CR made CRLF, a bare CR in the
header section a space); the end of data is still only ``CRLF . CRLF``.
"""

from __future__ import annotations

from dataclasses import dataclass

from chainmail.protocol.lineends import Canonicalizer, first_forbidden

__all__ = [
    "Connection", "Command", "BodyChunk", "EndOfData", "LineTooLong", "BareLineFeed",
    "ForbiddenOctet", "NEED_DATA", "CLOSED", "COMMAND", "DATA",
]

COMMAND = "command"
DATA = "data"


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete event is buffered: receive more bytes."""
CLOSED = _Sentinel("CLOSED")
"""The peer closed its side and everything buffered has been consumed."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command line.  ``verb`` is upper-cased; ``arg`` is the rest (``None`` if absent)."""

    verb: str
    arg: str | None
    line: str


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Message content, already dot-unstuffed, with its CRLFs."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The final ``.`` was received.  ``size`` counts the raw octets received between the
    ``354`` and the final dot line (CRLFs and stuffed dots included, as RFC 1870 sizes are
    declared).  ``line_too_long`` is set if any body line exceeded the line limit."""

    size: int
    line_too_long: bool = False


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A command line exceeded the limit; it has been discarded."""


@dataclass(frozen=True, slots=True)
class BareLineFeed:
    """A line ended in LF without CR.  The stream can no longer be framed safely."""

    in_data: bool


@dataclass(frozen=True, slots=True)
class ForbiddenOctet:
    """A bare CR (``b"\\r"``) or a NUL (``b"\\0"``) in a command line or in message data.
    In data it ends the session as a bare LF does; a command line is refused on its own."""

    octet: bytes
    in_data: bool


_END_OF_DATA = b"\r\n.\r\n"


class Connection:
    """Framing state of one SMTP or LMTP connection (server side)."""

    __slots__ = ("max_line_length", "normalize", "mode", "_buf", "_eof", "_discarding",
                 "_data_size", "_data_long", "_broken", "_canonicalizer", "_after_crlf")

    def __init__(self, max_line_length: int = 8192, normalize: bool = False):
        self.max_line_length = max_line_length
        self.normalize = normalize
        self._canonicalizer: Canonicalizer | None = None
        self._after_crlf = True   # the buffer starts right after a CRLF (data mode)
        self.mode = COMMAND
        self._buf = bytearray()
        self._eof = False
        self._discarding = False   # inside an over-long command line, dropping until LF
        # (b"\r" when the last dropped byte was CR, so a CRLF split across reads is seen)
        self._data_size = 0
        self._data_long = False
        self._broken = False

    # -- input ----------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; ``b""`` means the peer closed its side."""
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events (STARTTLS injection checks)."""
        return len(self._buf)

    def discard_buffer(self) -> int:
        n = len(self._buf)
        self._buf.clear()
        return n

    def start_data(self) -> None:
        """Switch to data mode; call right after queueing the ``354`` reply."""
        self.mode = DATA
        self._data_size = 0
        self._data_long = False
        self._after_crlf = True
        if self.normalize:
            self._canonicalizer = Canonicalizer()

    # -- output: events -----------------------------------------------------------------
    def next_event(self):
        if self._broken:
            return CLOSED
        if self.mode is DATA:
            return self._next_data_event()
        return self._next_command_event()

    def _next_command_event(self):
        buf = self._buf
        limit = self.max_line_length
        nl = buf.find(b"\n")
        if self._discarding:
            if nl < 0:
                if buf:
                    self._discarding = b"\r" if buf.endswith(b"\r") else True
                    buf.clear()
                return CLOSED if self._eof else NEED_DATA
            ends_in_cr = buf[nl - 1] == 13 if nl > 0 else self._discarding == b"\r"
            del buf[: nl + 1]
            self._discarding = False
            if not ends_in_cr and not self.normalize:
                self._broken = True
                buf.clear()
                return BareLineFeed(in_data=False)
            return self._next_command_event()
        if nl < 0:
            if len(buf) > limit + 1:
                self._discarding = b"\r" if buf.endswith(b"\r") else True
                buf.clear()
                return LineTooLong()
            return CLOSED if self._eof else NEED_DATA
        if nl > limit + 1:
            # Over-long: report it exactly as when the line arrives in pieces (see the
            # streaming case above), then judge its terminator like any other.
            self._discarding = b"\r" if buf[nl - 1] == 13 else True
            del buf[:nl]
            return LineTooLong()
        if nl == 0 or buf[nl - 1] != 13:
            if not self.normalize:
                self._broken = True
                buf.clear()
                return BareLineFeed(in_data=False)
            raw = bytes(buf[:nl])
        else:
            raw = bytes(buf[: nl - 1])
        del buf[: nl + 1]
        if b"\r" in raw or b"\0" in raw:
            return ForbiddenOctet(first_forbidden(raw), in_data=False)
        line = raw.decode("utf-8", "surrogateescape").strip(" \t")
        verb, _, arg = line.partition(" ")
        arg = arg.strip(" \t")
        return Command(verb.upper(), arg or None, line)

    def _next_data_event(self):
        buf = self._buf
        # The buffer always starts at the beginning of a body line (only whole lines are
        # consumed), so a leading ".\r\n" is the end-of-data line -- if that line start is a
        # CRLF's: with ``normalize`` a line may also have ended in a bare LF.
        if buf.startswith(b".\r\n") and self._after_crlf:
            del buf[:3]
            return self._finish_data()
        last_nl = buf.rfind(b"\n")
        if last_nl < 0:
            if len(buf) > self.max_line_length + 1:
                return self._overlong_partial_line()
            return CLOSED if self._eof else NEED_DATA
        end = buf.find(_END_OF_DATA, 0, last_nl + 1)
        stop = last_nl + 1 if end < 0 else end + 2
        block = bytes(buf[:stop])
        del buf[:stop]
        self._data_size += len(block)
        if not self._data_long and _has_long_line(block, self.max_line_length):
            self._data_long = True
        canonicalizer = self._canonicalizer
        if canonicalizer is not None:
            self._after_crlf = block.endswith(b"\r\n")
            return BodyChunk(_unstuff(canonicalizer.feed(block)))
        octet = first_forbidden(block)
        if octet is not None:
            self._broken = True
            buf.clear()
            if octet == b"\n":
                return BareLineFeed(in_data=True)
            return ForbiddenOctet(octet, in_data=True)
        return BodyChunk(_unstuff(block))

    def _overlong_partial_line(self):
        """A body line longer than the limit with no LF yet: keep memory bounded by
        dropping it, but keep its last bytes so the end marker is still found."""
        self._data_long = True
        buf = self._buf
        keep = 2  # a trailing CR may pair with the next LF
        dropped = len(buf) - keep
        if self._canonicalizer is None:
            # What is dropped has no LF, so any CR in it is bare: refused here as it would
            # be had the line arrived whole.
            octet = first_forbidden(bytes(buf[:dropped]))
            if octet is not None:
                self._broken = True
                buf.clear()
                return ForbiddenOctet(octet, in_data=True)
        self._data_size += dropped
        del buf[:dropped]
        # The retained bytes are mid-line: prefix a marker-free filler so the next scan
        # does not mistake them for a line start.
        if buf.startswith(b"."):
            buf[0:0] = b"x"
            self._data_size -= 1
        return NEED_DATA if not self._eof else CLOSED

    def _finish_data(self) -> EndOfData:
        self.mode = COMMAND
        self._canonicalizer = None
        return EndOfData(self._data_size, self._data_long)


def _unstuff(block: bytes) -> bytes:
    """RFC 5321 §4.5.2: delete the first character of a line that starts with a period."""
    if b"\n." in block:
        block = block.replace(b"\r\n.", b"\r\n")
    if block.startswith(b"."):
        block = block[1:]
    return block


def _has_long_line(block: bytes, limit: int) -> bool:
    """Whether a line (CRLF excluded) in ``block`` is longer than ``limit``, without splitting
    the block into lines: a line longer than ``limit`` covers a whole aligned window of
    ``limit // 2`` octets, so only windows with no LF need a closer look."""
    n = len(block)
    if n <= limit + 2:
        return n - 2 > limit
    step = max(limit // 2, 1)
    for start in range(0, n, step):
        stop = min(start + step, n)
        if block.find(b"\n", start, stop) < 0:
            line_start = block.rfind(b"\n", 0, start) + 1
            line_end = block.find(b"\n", stop)
            if line_end < 0:
                line_end = n
            if line_end - line_start - 1 > limit:
                return True
    return False
