"""LMTP DATA (RFC 2033 §4.2): the body is received once, then each accepted recipient gets
its own delivery and its own complete reply, in RCPT order.

Each message gets a queue id of the spool's form when its body is complete; every log line
about its deliveries is written inside :func:`chainmail.logctx.about_message` and names it,
and mail the container makes of it (bounces, forwards) keeps it."""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Callable

from chainmail.logctx import about_message
from chainmail.message import IncomingMessage
from chainmail.store.spool import new_id
from chainmail.protocol.replies import R
from chainmail.verdict import Action, to_reply
from chainmail_plugins.smtp.commands import DataCmdHandler
from chainmail_plugins.smtp.data import DataReceiver

log = logging.getLogger("chainmail.lmtp")

MEMORY_LIMIT = 256 * 1024  # larger bodies spill to a private temporary file


class _TempSink:
    """Where an LMTP body goes while it is received: memory, then a private temp file."""

    def __init__(self):
        self.file = tempfile.SpooledTemporaryFile(max_size=MEMORY_LIMIT)
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def abort(self) -> None:
        self.file.close()


class LmtpDataReceiver(DataReceiver):
    def __init__(self, session):
        super().__init__(session, sink=_TempSink())

    async def finish(self, end):
        session = self.session
        recipients = list(self.transaction.recipients)
        sink = self.writer
        try:
            if end.line_too_long:
                return [R.data_line_too_long for _ in recipients]
            if self.over_limit or (self.limit and end.size > self.limit):
                # Delivered to nobody (James delivers a truncated copy; we don't).
                return [R.size_exceeded for _ in recipients]
            message = IncomingMessage(session, self.transaction, None, sink.size)
            message.body_file = sink.file
            end_of_head = self.head.find(b"\r\n\r\n")
            message.head = bytes(self.head if end_of_head < 0 else self.head[: end_of_head + 4])
            queue_id = new_id()
            with about_message(queue_id):
                log.info("%s: message %s from <%s> for %d recipient(s), %d bytes", session,
                         queue_id, self.transaction.sender_text, len(recipients), sink.size)
                replies = await self.deliver(message, recipients)
            session.messages += 1
            return replies
        finally:
            sink.abort()

    async def deliver(self, message, recipients):
        """One reply per recipient, in RCPT order: the ``deliver_to_recipient`` hooks."""
        session = self.session
        replies = []
        chain = session.server.chain
        for rcpt in recipients:
            try:
                verdict = await chain.verdict("deliver_to_recipient", session, rcpt, message)
            except Exception:
                log.exception("%s: delivery to %s failed", session, rcpt)
                replies.append(R.lmtp_temporary_failure(str(rcpt)))
                continue
            if verdict is None:
                replies.append(R.lmtp_temporary_failure(str(rcpt)))
            elif verdict.action is Action.OK and verdict.code is None:
                replies.append(R.lmtp_delivered(str(rcpt)))
            else:
                replies.append(to_reply(verdict, R.lmtp_delivered(str(rcpt))))
        return replies


class LmtpDataCmdHandler(DataCmdHandler):
    parameters: tuple[str, ...] = ()

    receiver: Callable[[Any], LmtpDataReceiver] = LmtpDataReceiver


class MailboxDeliverToRecipientHandler:
    """Delivers into the recipient's Maildir (``<var>/mail/<user>/``), following address
    aliases and domain aliases to local users.  Over quota: ``552 5.2.2``; a store failure:
    ``451 4.3.0`` for that recipient only."""

    parameters = ()

    async def deliver_to_recipient(self, session, recipient, message):
        from chainmail.verdict import HookResult
        server = session.server
        mailboxes = getattr(server, "mailboxes", None)
        if mailboxes is None:
            log.error("%s: no mailbox store configured", session)
            return HookResult.reply(R.lmtp_store_failure(str(recipient)))
        users, rrt = server.users, server.rrt
        address = str(recipient)
        targets = [address]
        if rrt is not None:
            try:
                targets = rrt.resolve(address)
            except Exception:
                log.warning("%s: alias loop for %s", session, address)
                return HookResult.reply(R.lmtp_store_failure(address))
        names = []
        for target in targets:
            name = users.username_for(target) if users is not None else target.lower()
            if server.is_local_domain(name.rpartition("@")[2]):
                names.append(name)
        if not names:
            names = [users.username_for(address) if users is not None else address.lower()]
        content = message.read()
        from chainmail.store.mailbox import QuotaExceededError
        unique = list(dict.fromkeys(names))
        # One group with every other session's deliveries: their directory fsyncs are shared.
        results = await mailboxes.adeliver_many([(name, content) for name in unique],
                                                limiter=server.limiter)
        for result in results:
            if isinstance(result, QuotaExceededError):
                return HookResult.reply(R.lmtp_over_quota(address))
            if isinstance(result, Exception):
                log.error("%s: mailbox write for %s failed: %s", session, address, result)
                return HookResult.reply(R.lmtp_store_failure(address))
        log.info("%s: delivered to %s", session, ", ".join(dict.fromkeys(names)))
        return HookResult.ok()
