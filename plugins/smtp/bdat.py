"""CHUNKING and BINARYMIME (RFC 3030): the message in ``BDAT <size> [LAST]`` chunks.

The engine reads each chunk as data, whatever this handler answers (``chainmail.protocol
.states``); this handler decides whether the chunk is taken, and the message goes to the same
receiver DATA would use (the chain's DATA handler's ``open_receiver``), so every
``on_message`` hook, size limit and spool write is the same for both.

Line rules: with ``BODY=7BIT`` or ``8BITMIME`` (or no BODY) the content must be lines ending
in CRLF, as in DATA: a bare CR, bare LF or NUL refuses the message (``550 5.6.0``) but,
framing being by length, the session goes on; with the server's ``normalize`` line-end mode
the content is put in canonical form instead.  ``BODY=BINARYMIME`` content is taken byte for
byte.
"""

from __future__ import annotations

import logging

from chainmail.protocol.engine import BdatCommand, EndOfData
from chainmail.protocol.lineends import ChunkLines
from chainmail.protocol.replies import R

log = logging.getLogger("chainmail.data")

__all__ = ["BdatCmdHandler", "ChunkedReceiver"]


class ChunkedReceiver:
    """Feeds the chunks of one message to a DATA receiver, checking lines across chunk
    boundaries unless the message is binary."""

    __slots__ = ("inner", "lines", "size")

    def __init__(self, inner, lines: ChunkLines | None):
        self.inner = inner
        self.lines = lines
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        lines = self.lines
        if lines is not None:
            data = lines.feed(data)
            if not data:
                return
        self.inner.write(data)

    def abort(self) -> None:
        self.inner.abort()

    def _refusal(self):
        lines = self.lines
        if lines is not None and lines.refused is not None:
            return R.bdat_nul if lines.refused == b"\0" else R.bdat_bare_line_end
        if getattr(self.inner, "over_limit", False):
            return R.size_exceeded
        return None

    async def end_chunk(self, end):
        """The reply to one BDAT command, its chunk read: ``250 2.0.0`` for a chunk before
        the last; for the last, the DATA receiver's reply (one per recipient in LMTP)."""
        lines = self.lines
        if end.last and lines is not None:
            rest = lines.close()
            if rest:
                self.inner.write(rest)
        refusal = self._refusal()
        if refusal is not None:
            self.inner.abort()
            return refusal
        if not end.last:
            return R.chunk_received(end.size)
        too_long = lines is not None and lines.line_too_long
        return await self.inner.finish(EndOfData(self.size, too_long))


class BdatCmdHandler:
    """``BDAT <size> [LAST]``: announces CHUNKING and BINARYMIME; takes each chunk into the
    transaction's message, which ends with the LAST chunk."""

    parameters = ()

    commands = ("BDAT",)

    def ehlo_keywords(self, session):
        return ("CHUNKING", "BINARYMIME")

    async def on_command(self, session, command):
        if not isinstance(command, BdatCommand):
            return R.bdat_syntax   # its chunk's length is unknown: the session ends
        receiver = session.data_receiver
        if isinstance(receiver, ChunkedReceiver):
            return None
        tx = session.transaction
        if not tx.has_sender:
            return R.no_sender
        if not tx.recipients:
            return R.no_recipients
        data = _data_handler(session)
        if data is None:
            log.error("%s: BDAT without a DATA handler in the chain", session)
            return R.unable_to_process
        binary = str(tx.mail_params.get("BODY") or "").upper() == "BINARYMIME"
        cfg = session.config
        lines = None if binary else ChunkLines(cfg.max_line_length,
                                               normalize=cfg.bare_newline == "normalize")
        session.data_receiver = ChunkedReceiver(await data.open_receiver(session), lines)
        return None


def _data_handler(session):
    """The chain's first DATA handler that can open a receiver."""
    for impl in session.server.chain.commands.get("DATA", ()):
        if hasattr(impl.owner, "open_receiver"):
            return impl.owner
    return None
