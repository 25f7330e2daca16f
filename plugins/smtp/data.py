"""Receiving a message body: streamed into a spool writer, size-checked, then handed to the
``on_message`` hooks."""

from __future__ import annotations

import logging

from chainmail import metrics
from chainmail.message import IncomingMessage
from chainmail.protocol.replies import R
from chainmail.verdict import to_reply

log = logging.getLogger("chainmail.data")

HEAD_LIMIT = 65536  # header bytes kept in memory for on_message hooks


class DataReceiver:
    """Takes the body of one transaction.  Memory stays bounded: chunks go straight to the
    spool writer, which buffers a bounded amount before writing to its file."""

    __slots__ = ("session", "transaction", "writer", "limit", "body_bytes", "over_limit", "head")

    def __init__(self, session, sink=None):
        self.session = session
        self.transaction = session.transaction
        self.writer = sink if sink is not None else session.server.spool.open_writer()
        self.limit = session.config.max_message_size
        self.body_bytes = 0
        self.over_limit = False
        self.head = bytearray()  # the client's header section, kept for header checks (bounded)

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
        head = self.head
        if len(head) < HEAD_LIMIT and b"\r\n\r\n" not in head:
            head += data[: HEAD_LIMIT - len(head)]

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
        end_of_head = self.head.find(b"\r\n\r\n")
        message.head = bytes(self.head if end_of_head < 0 else self.head[: end_of_head + 4])
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
        reply = to_reply(verdict, R.message_received) or R.message_received
        if reply.is_positive:
            metrics.message_received(self.writer.size)
        return reply
