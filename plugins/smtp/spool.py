"""The hand-off to the durable spool: the last ``on_message`` hook of the core chain."""

from __future__ import annotations

import logging

from chainmail.logctx import about_message
from chainmail.protocol.replies import R
from chainmail.store.spool import SpoolUnavailable
from chainmail.verdict import HookResult

log = logging.getLogger("chainmail.spool")


class SendMailHandler:
    """``250 2.6.0 Message received, queued as <id>`` only once envelope and body are fsynced
    in the queue, or confirmed by RabbitMQ (``451 4.3.0`` when it did not).  The id follows
    the message through the container, the outgoing queue, its retries and bounces, and the
    log."""

    parameters = ()

    async def on_message(self, session, message):
        try:
            queue_id = await message.commit()
        except SpoolUnavailable as exc:
            log.error("%s: not accepted: %s", session, exc)
            return HookResult.reply(R.queue_unavailable)
        except OSError as exc:
            log.error("%s: spooling failed: %s", session, exc)
            return HookResult.reply(R.spool_error)
        with about_message(queue_id):
            log.info("%s: queued %s from <%s> to %d recipient(s), %d bytes", session, queue_id,
                     message.transaction.sender_text, len(message.recipients), message.size)
        return HookResult.reply(R.message_queued(queue_id))
