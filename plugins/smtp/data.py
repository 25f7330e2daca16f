"""Receiving a message body: streamed into a spool writer, size-checked, then handed to the
``on_message`` hooks."""

from __future__ import annotations

import logging

from chainmail.message import IncomingMessage
from chainmail.protocol.replies import R
from chainmail.verdict import to_reply

log = logging.getLogger("chainmail.data")


class DataReceiver:
    """Takes the body of one transaction.  Memory stays bounded: chunks go straight to the
    spool writer, which buffers a bounded amount before writing to its file."""

    __slots__ = ("session", "transaction", "writer", "limit", "body_bytes", "over_limit")

    def __init__(self, session):
        self.session = session
        self.transaction = session.transaction
        self.writer = session.server.spool.open_writer()
        self.limit = session.config.max_message_size
        self.body_bytes = 0
        self.over_limit = False

    def prepend(self, header: bytes) -> None:
        self.writer.write(header)

    def write(self, data: bytes) -> None:
        if self.over_limit:
            return
        self.body_bytes += len(data)
        if self.limit and self.body_bytes > self.limit:
            # Stop storing at once; the rest of the body is read and dropped.
            self.over_limit = True
            self.writer.abort()
            return
        self.writer.write(data)

    def abort(self) -> None:
        self.writer.abort()

    async def finish(self, end):
        session = self.session
        if end.line_too_long:
            self.writer.abort()
            return R.data_line_too_long
        if self.over_limit or (self.limit and end.size > self.limit):
            self.writer.abort()
            return R.size_exceeded
        message = IncomingMessage(session, self.transaction, self.writer, self.writer.size)
        try:
            verdict = await session.server.chain.verdict("on_message", session, message)
        finally:
            if not message.committed:
                self.writer.abort()
        session.messages += 1
        if verdict is None:
            log.error("%s: no on_message handler took the message; is SendMailHandler in the "
                      "chain?", session)
            return R.unable_to_process
        return to_reply(verdict, R.message_received) or R.message_received
