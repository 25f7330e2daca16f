"""LMTP into the mailet container (James's ``org.apache.james.lmtpserver.MailetContainerHandler``).

After the final dot the mail runs through the mailet container **synchronously**, from the
``root`` processor, without going through the spool:

- by default with all recipients at once: the container finishing gives every recipient
  ``250 2.6.0 Message received <r>``; an exception coming out of the container (a mailet or
  matcher with ``onMailetException``/``onMatchException`` ``propagate``, or a container
  failure) gives every recipient ``451 4.0.0 Temporary error deliver message <r>``;
- with ``<splitExecution>true</splitExecution>`` on the handler element: one execution per
  recipient (the mail duplicated with that recipient alone), one after another, each with
  its own reply, so one recipient's failure does not fail the others.

Errors the container handles itself (a mailet failing with the default
``onMailetException``, the mail going to the ``error`` processor) still answer ``250``, as
James does: the container took responsibility for the mail.

Mail that mailets send while the container runs (bounces, forwards, ``ToProcessor`` into a
later state through ``send_mail``) is committed to the spool before the reply, so a ``250``
still means that everything the mail became is on disk.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from chainmail import logctx
from chainmail.mailet.api import ROOT, Mail
from chainmail.protocol.replies import R

from .delivery import LmtpDataCmdHandler, LmtpDataReceiver

__all__ = ["MailetContainerHandler"]

log = logging.getLogger("chainmail.lmtp")


class MailetContainerReceiver(LmtpDataReceiver):
    def __init__(self, session, handler: "MailetContainerHandler"):
        super().__init__(session)
        self.handler = handler

    async def deliver(self, message, recipients):
        session = self.session
        engine = getattr(session.server, "mailet_engine", None)
        addresses = [str(r) for r in recipients]
        if engine is None:   # only when the server was built without ``chainmail run``
            log.error("%s: no mailet container is configured", session)
            return [R.lmtp_container_failure(a) for a in addresses]
        mail = _mail_of(message, addresses)
        if not self.handler.split_execution:
            ok = await _execute(session, engine, mail)
            return [(R.lmtp_delivered if ok else R.lmtp_container_failure)(a) for a in addresses]
        replies = []
        for address in addresses:
            ok = await _execute(session, engine, mail.duplicate([address]))
            replies.append((R.lmtp_delivered if ok else R.lmtp_container_failure)(address))
        return replies


def _mail_of(message, recipients: list[str]) -> Mail:
    envelope = message.envelope()
    rcpt_params = {r: p for r, p in zip(envelope.recipients, envelope.rcpt_params) if p}
    return Mail(logctx.queue_id.get(), envelope.sender, recipients, message.read(), state=ROOT,
                attributes=envelope.attributes, mail_params=envelope.mail_params,
                rcpt_params=rcpt_params, queued_at=time.time())


async def _execute(session, engine, mail: Mail) -> bool:
    """Run ``mail`` through the container and commit what it sent; False if it raised."""
    recipients = ", ".join(mail.recipients)
    start = time.monotonic()
    try:
        result = await engine.service(mail)
        for out in result.outputs:
            await engine.context.commit(out)
    except Exception as exc:
        log.warning("%s: mailet container failed for %s: %s: %s", session, recipients,
                    type(exc).__name__, exc)
        return False
    trails = sorted({" -> ".join(m.trace) for m in result.finished})
    log.info("%s: processed for %s in %.1f ms: %s%s", session, recipients,
             (time.monotonic() - start) * 1000, "; ".join(trails) or "nothing to do",
             f", {len(result.outputs)} mail(s) spooled" if result.outputs else "")
    return True


class MailetContainerHandler(LmtpDataCmdHandler):
    """LMTP DATA whose delivery is the mailet container.  Parameter ``splitExecution``
    (default ``false``): one container execution per recipient."""

    parameters = ("splitExecution",)

    #: ``chainmail run`` refuses to start when no mailet container is configured.
    needs_mailet_container = True
    split_execution = False
    config = None

    def configure(self, config) -> None:
        self.config = config
        self.split_execution = config.get_bool("splitExecution", False)
        self.receiver = partial(MailetContainerReceiver, handler=self)
