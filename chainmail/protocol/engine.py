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

With ``chunking`` (RFC 3030), a well-formed ``BDAT <size> [LAST]`` line is a
:class:`BdatCommand` and the ``size`` octets after it are handed out as they are, as
:class:`BodyChunk` events and one :class:`EndOfChunk`: no dot-unstuffing, no line rules
(a chunk's content is checked by whoever takes it, knowing the transaction's ``BODY``).

Which reader runs is the session's state (:mod:`chainmail.protocol.states`): the server
tells the engine each reply with :meth:`Connection.send`, and the table moves the state
(a ``354`` to DATA starts the body, a ``220`` to STARTTLS pauses the stream for the
handshake, a closing reply closes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import re

from chainmail.protocol import states
from chainmail.protocol.lineends import Canonicalizer, first_forbidden, has_long_line
from chainmail.protocol.states import CHUNK, CLOSED_STATE, COMMAND, DATA, TLS_HANDSHAKE

__all__ = [
    "Connection", "Command", "BdatCommand", "BodyChunk", "EndOfData", "EndOfChunk",
    "LineTooLong", "BareLineFeed", "ForbiddenOctet", "NEED_DATA", "CLOSED", "PAUSED", "COMMAND",
    "DATA", "CHUNK", "TLS_HANDSHAKE", "CLOSED_STATE",
]

#: ``BDAT`` arguments: a chunk size (RFC 3030 ``1*DIGIT``, bounded here) and ``LAST``.
_BDAT_ARG = re.compile(r"([0-9]{1,18})(?:[ \t]+(LAST))?\Z", re.IGNORECASE)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete event is buffered: receive more bytes."""
CLOSED = _Sentinel("CLOSED")
"""The peer closed its side and everything buffered has been consumed, or the session's
state is closed."""
PAUSED = _Sentinel("PAUSED")
"""Nothing is read as SMTP now: a TLS handshake is due (``TLS_HANDSHAKE``)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command line.  ``verb`` is upper-cased; ``arg`` is the rest (``None`` if absent)."""

    verb: str
    arg: str | None
    line: str


@dataclass(frozen=True, slots=True)
class BdatCommand(Command):
    """A well-formed ``BDAT`` line (RFC 3030): ``size`` octets of message data follow it at
    once, and are read as data whatever the reply to this command."""

    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class EndOfChunk:
    """All ``size`` octets of the chunk announced by the last :class:`BdatCommand` were
    handed out; ``last`` when that command said ``LAST``."""

    size: int
    last: bool


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

    __slots__ = ("max_line_length", "normalize", "chunking", "state", "_buf", "_eof",
                 "_discarding", "_data_size", "_data_long", "_canonicalizer", "_after_crlf",
                 "_last_verb", "_chunk_left", "_chunk_size", "_chunk_last")

    def __init__(self, max_line_length: int = 8192, normalize: bool = False,
                 chunking: bool = False):
        self.max_line_length = max_line_length
        self.normalize = normalize
        self.chunking = chunking
        self._canonicalizer: Canonicalizer | None = None
        self._after_crlf = True   # the buffer starts right after a CRLF (data mode)
        self.state = COMMAND
        self._buf = bytearray()
        self._eof = False
        self._discarding = False   # inside an over-long command line, dropping until LF
        # (b"\r" when the last dropped byte was CR, so a CRLF split across reads is seen)
        self._data_size = 0
        self._data_long = False
        self._last_verb: str | None = None   # the verb of the last command handed out
        self._chunk_left = self._chunk_size = 0
        self._chunk_last = False

    @property
    def mode(self) -> str:
        """The state (an older name of it)."""
        return self.state

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

    # -- the server's side ------------------------------------------------------------------
    def send(self, reply) -> str:
        """Tell the engine the server answered ``reply`` (anything with ``code`` and
        ``close``) to the last command; returns the new state (:mod:`.states`)."""
        previous = self.state
        self.state = states.after_reply(previous, self._last_verb, reply.code, reply.close)
        if self.state is DATA and previous is not DATA:
            self._start_data()
        return self.state

    def start_tls(self) -> None:
        """The TLS handshake is done: read commands again, from a clean slate (RFC 3207
        §4.2: nothing received before it may be used after it)."""
        self._buf.clear()
        self._discarding = False
        self._last_verb = None
        self.state = COMMAND

    def start_data(self) -> None:
        """Switch to data mode, as :meth:`send` does for a ``354`` to ``DATA``."""
        self.state = DATA
        self._start_data()

    def _start_data(self) -> None:
        self._data_size = 0
        self._data_long = False
        self._after_crlf = True
        if self.normalize:
            self._canonicalizer = Canonicalizer()

    # -- output: events -----------------------------------------------------------------
    def next_event(self):
        state = self.state
        if state is COMMAND:
            event = self._next_command_event()
        elif state is DATA:
            event = self._next_data_event()
        elif state is CHUNK:
            return self._next_chunk_event()
        elif state is TLS_HANDSHAKE:
            return PAUSED
        else:
            return CLOSED
        if type(event) is not Command:
            self._after_event(event)
        return event

    def _after_event(self, event) -> None:
        """Move the state on a client event, by the table."""
        if isinstance(event, (_Sentinel, BodyChunk)):
            return
        name = type(event).__name__
        if name == "BareLineFeed" or (name == "ForbiddenOctet" and event.in_data):
            name = states.UNFRAMABLE
        self.state = states.after_client_event(self.state, name)
        if self.state is CLOSED_STATE:
            self._buf.clear()

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
                return BareLineFeed(in_data=False)
            raw = bytes(buf[:nl])
        else:
            raw = bytes(buf[: nl - 1])
        del buf[: nl + 1]
        if b"\r" in raw or b"\0" in raw:
            if self.chunking and raw[:5].upper() == b"BDAT ":
                # Its chunk cannot be found: close rather than read the chunk as commands.
                return ForbiddenOctet(first_forbidden(raw), in_data=True)
            return ForbiddenOctet(first_forbidden(raw), in_data=False)
        line = raw.decode("utf-8", "surrogateescape").strip(" \t")
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip(" \t")
        self._last_verb = verb
        if verb == "BDAT" and self.chunking:
            found = _BDAT_ARG.match(arg)
            if found is not None:
                size, last = int(found.group(1)), found.group(2) is not None
                self._chunk_left = self._chunk_size = size
                self._chunk_last = last
                return BdatCommand(verb, arg, line, size, last)
        return Command(verb, arg or None, line)

    def _next_chunk_event(self):
        left = self._chunk_left
        if not left:
            self.state = states.after_client_event(CHUNK, "EndOfChunk")
            return EndOfChunk(self._chunk_size, self._chunk_last)
        buf = self._buf
        if not buf:
            return CLOSED if self._eof else NEED_DATA
        if len(buf) <= left:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:left])
            del buf[:left]
        self._chunk_left = left - len(data)
        return BodyChunk(data)

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
            if not self._eof:
                return NEED_DATA
            return self._unended_line()
        end = buf.find(_END_OF_DATA, 0, last_nl + 1)
        stop = last_nl + 1 if end < 0 else end + 2
        block = bytes(buf[:stop])
        del buf[:stop]
        self._data_size += len(block)
        if not self._data_long and has_long_line(block, self.max_line_length):
            self._data_long = True
        canonicalizer = self._canonicalizer
        if canonicalizer is not None:
            self._after_crlf = block.endswith(b"\r\n")
            return BodyChunk(_unstuff(canonicalizer.feed(block)))
        octet = first_forbidden(block)
        if octet is not None:
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
                return ForbiddenOctet(octet, in_data=True)
        self._data_size += dropped
        del buf[:dropped]
        # The retained bytes are mid-line: prefix a marker-free filler so the next scan
        # does not mistake them for a line start.
        if buf.startswith(b"."):
            buf[0:0] = b"x"
            self._data_size -= 1
        return NEED_DATA if not self._eof else self._unended_line()

    def _unended_line(self):
        """The peer closed inside a body line: a bare CR or a NUL in it is reported as it
        would have been had the line gone on (so the events do not depend on where the
        reads were cut), then the stream is closed."""
        if self._canonicalizer is None:
            octet = first_forbidden(bytes(self._buf))
            if octet is not None:
                return ForbiddenOctet(octet, in_data=True)
        return CLOSED

    def _finish_data(self) -> EndOfData:
        self._canonicalizer = None
        return EndOfData(self._data_size, self._data_long)


def _unstuff(block: bytes) -> bytes:
    """RFC 5321 §4.5.2: delete the first character of a line that starts with a period."""
    if b"\n." in block:
        block = block.replace(b"\r\n.", b"\r\n")
    if block.startswith(b"."):
        block = block[1:]
    return block
