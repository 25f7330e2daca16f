"""LMTP DATA (RFC 2033 §4.2): the body is received once, then each accepted recipient gets
its own delivery and its own complete reply, in RCPT order.

Each message gets a queue id of the spool's form when its body is complete; every log line
about its deliveries is written inside :func:`chainmail.logctx.about_message` and names it,
and mail the container makes of it (bounces, forwards) keeps it.

A recipient delivered here (a ``250``: LMTP's final delivery) that asked for
``NOTIFY=SUCCESS`` (RFC 3461) earns the sender one ``delivered`` report per message, spooled
before the replies are sent."""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any, Callable

from chainmail import logctx, metrics
from chainmail.logctx import about_message
from chainmail.mailet.api import Mail
from chainmail.mailet.dsn import report_delivered, wanted_notifications
from chainmail.message import IncomingMessage
from chainmail.sevenbit import for_line_store
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
            if any(reply.is_positive for reply in replies):
                metrics.message_received(sink.size)
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
        delivered = [str(r) for r, reply in zip(recipients, replies)
                     if reply is not None and reply.code == 250]
        if delivered:
            await _report_delivered(session, message, delivered)
        return replies


def _success_wanted(transaction) -> bool:
    """Did any recipient of a non-null sender ask for ``NOTIFY=SUCCESS``?  (Cheap: no copy
    of the message is made for a report nobody asked for.)"""
    return transaction.sender is not None and any(
        "SUCCESS" in str(p.get("NOTIFY") or "").upper().split(",") for p in transaction.rcpt_params)


async def _report_delivered(session, message, delivered: list[str]) -> None:
    """Spool a ``delivered`` report for the recipients in ``delivered`` that asked for one,
    through the mailet container's context (or the spool alone, without a container).  A
    report that cannot be made is logged; the deliveries stand."""
    if not _success_wanted(message.transaction):
        return
    server = session.server
    try:
        envelope = message.envelope()
        mail = Mail(logctx.queue_id.get(), envelope.sender, delivered, message.read(),
                    attributes=envelope.attributes, mail_params=envelope.mail_params,
                    rcpt_params=dict(zip(envelope.recipients, envelope.rcpt_params)),
                    queued_at=time.time())
        if not wanted_notifications(mail, delivered, "delivered"):
            return
        engine = getattr(server, "mailet_engine", None)
        if engine is not None:
            context = engine.context
        else:
            from chainmail.mailet.context import ContainerContext
            context = ContainerContext(domains=server.domains, users=server.users,
                                       spool=server.spool, hostname=server.hostname,
                                       limiter=server.limiter)
        await report_delivered(context, mail, delivered)
    except Exception:
        log.exception("%s: delivered report for %s not sent", session, ", ".join(delivered))


class LmtpDataCmdHandler(DataCmdHandler):
    parameters: tuple[str, ...] = ()

    receiver: Callable[[Any], LmtpDataReceiver] = LmtpDataReceiver


class MailboxDeliverToRecipientHandler:
    """Delivers into the recipient's Maildir (``<var>/mail/<user>/``), following address
    aliases and domain aliases to local users.  Over quota: ``552 5.2.2``; a store failure:
    ``451 4.3.0`` for that recipient only.  ``NOTIFY=SUCCESS`` reports: see the module."""

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
        content = for_line_store(message.read(), message.transaction.mail_params)
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
