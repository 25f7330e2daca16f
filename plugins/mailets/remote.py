"""RemoteDelivery: mail for other servers leaves through the outgoing queue (James's
``org.apache.james.transport.mailets.RemoteDelivery``).

:meth:`RemoteDelivery.service` only queues: without a gateway it splits the mail by
recipient domain (one entry ``<name>-to-<domain>`` per domain), with one it queues the mail
whole; then the mail is finished (``ghost``).  The queue entry is durable before the mail
leaves the spool, so a crash between the two delivers twice rather than never.

:meth:`RemoteDelivery.run` is the delivery loop (:class:`chainmail.remote.queue.OutgoingQueue`),
started by ``chainmail run`` next to the spool workers.  It turns each attempt's outcome
into the mailet's side effects:

- failed recipients (permanent errors, or ``maxRetries`` exhausted): with ``bounceProcessor``
  the original mail goes to that processor with James's attributes ``delivery-error``,
  ``delivery-error-code`` and ``is-delivery-permanent-error`` (and chainmail's per-recipient
  reasons, which ``DSNBounce`` uses); without it the sender gets an RFC 3464 report from the
  postmaster.  Never for the null sender;
- delivered recipients: with ``onSuccess`` a copy goes to that processor; recipients whose
  RFC 3461 ``NOTIFY=SUCCESS`` could not be passed on (the remote server lacks DSN) get a
  ``relayed`` report;
- recipients still being retried ``delayWarningTime`` after the mail arrived, that asked
  ``NOTIFY=DELAY``: one ``delayed`` report (status 4.x.x, the header section attached),
  straight to the sender, not through ``bounceProcessor`` (it is not a failure).

The parameters are James's (``chainmail.remote.config``), plus chainmail's:
``maxConcurrentDeliveries`` (default 20), ``maxConcurrentDeliveriesPerDomain`` (default 4),
``chunking`` (default true: BDAT to servers offering CHUNKING), ``delayWarningTime``
(default 4 hours, 0 for never), and the TLS policy ones (``caFile``, ``mtaSts``, ``dnssec``, ``dane``:
:mod:`chainmail.remote.tlspolicy`).
``conf/dnsservice.xml`` names the DNS servers.  See docs/delivery.md.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from chainmail.mailet.api import ATTR_ARRIVAL, ATTR_SENT_BY_MAILET, GHOST, GenericMailet, Mail
from chainmail.mailet.dsn import status_of
from chainmail.mailet.spoolcodec import ATTR_QUEUE_ID, mail_from_queued
from chainmail.store.holds import HoldList
from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.control import outgoing_root
from chainmail.remote.delivery import deliver
from chainmail.remote.dns import DnsService, load_dnsservice
from chainmail.remote.tlspolicy import TlsPolicy
from chainmail.remote.queue import (
    ATTR_DELAY_NOTIFIED, ATTR_LAST_ERROR, ATTR_NAME, ATTR_NEXT_ATTEMPT, ATTR_PRIORITY, Bounce,
    DelayNotice, Delivered, OutgoingQueue, queue_priority,
)

from .mailets import _check_processor

__all__ = ["RemoteDelivery", "ATTR_DELIVERY_ERROR", "ATTR_DELIVERY_ERROR_CODE",
           "ATTR_PERMANENT_ERROR", "ATTR_DELIVERY_ERRORS", "ATTR_REMOTE_MTA"]

log = logging.getLogger("chainmail.remote")

#: James's bounce attributes (``org.apache.james.transport.mailets.remote.delivery.Bouncer``)
ATTR_DELIVERY_ERROR = "delivery-error"
ATTR_DELIVERY_ERROR_CODE = "delivery-error-code"
ATTR_PERMANENT_ERROR = "is-delivery-permanent-error"
#: chainmail's: each failed recipient's own reason, and the server that gave it
ATTR_DELIVERY_ERRORS = "chainmail.delivery-errors"
ATTR_REMOTE_MTA = "chainmail.remote-mta"

_QUEUE_ATTRIBUTES = (ATTR_NEXT_ATTEMPT, ATTR_LAST_ERROR, ATTR_NAME, ATTR_DELAY_NOTIFIED)
DNSSERVICE_FILE = "dnsservice.xml"
#: ``<var>/mta-sts/<outgoing>.json``: the MTA-STS policies seen, kept across restarts
MTA_STS_DIR = "mta-sts"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class RemoteDelivery(GenericMailet):
    parameters = ("outgoing", "maxRetries", "delayTime", "maxDnsProblemRetries", "timeout",
                  "connectiontimeout", "connectionTimeout", "deliveryThreads", "sendpartial",
                  "bounceProcessor", "onSuccess", "gateway", "gatewayPort", "gatewayUsername",
                  "gatewayusername", "gatewayPassword", "loadBalancing", "startTLS", "sslEnable",
                  "verifyServerIdentity", "sslTrustAllCerts", "heloName", "bind", "usePriority",
                  "debug", "maxConcurrentDeliveries", "maxConcurrentDeliveriesPerDomain",
                  "caFile", "mtaSts", "dnssec", "dane", "chunking", "delayWarningTime", "mail.*")

    def configure(self, config):
        context = self.context
        settings = RemoteDeliveryConfig.from_mailet_config(config)
        for warning in settings.warnings:
            log.warning("%s", warning)
        for key, state in (("bounceProcessor", settings.bounce_processor),
                           ("onSuccess", settings.on_success)):
            if state:
                _check_processor(self, key, state)
        self.settings = settings
        claim = ("outgoing", settings.outgoing)
        owner = context.claims.get(claim)
        if owner is not None and owner is not config:
            raise config.error("outgoing", f"queue {settings.outgoing!r} is already used by the "
                                           f"RemoteDelivery at {owner.file}:{owner.line}; give "
                                           "each RemoteDelivery its own outgoing queue")
        context.claims[claim] = config
        try:
            self.root = outgoing_root(context.var_dir, settings.outgoing)
        except ValueError as exc:
            raise config.error("outgoing", f"{exc}; expected a plain name") from None
        dns_file = os.path.join(context.conf_dir, DNSSERVICE_FILE)
        dns_config = load_dnsservice(dns_file)
        for warning in dns_config.warnings:
            log.warning("%s", warning)
        self.dns = DnsService(dns_config)
        self.tls_policy = TlsPolicy(settings, self.dns,
                                    cache_file=os.path.join(context.var_dir, MTA_STS_DIR,
                                                            f"{settings.outgoing}.json"))
        self.max_parallel = config.get_int("maxConcurrentDeliveries", 20, minimum=1)
        self.per_destination = config.get_int("maxConcurrentDeliveriesPerDomain", 4, minimum=1)
        self._queue: OutgoingQueue | None = None

    @property
    def queue(self) -> OutgoingQueue:
        """Opened on first use, so that ``chainmail check-config`` creates nothing."""
        if self._queue is None:
            from chainmail.remote.pool import ConnectionPool
            from chainmail.store.amqp import load_rabbitmq
            from chainmail.store.spool import DirectorySpool
            rabbitmq = load_rabbitmq(self.context.conf_dir)
            queue_class: type[OutgoingQueue] = OutgoingQueue
            spool: Any = None
            if rabbitmq is None:
                spool = DirectorySpool(self.root)
            else:   # shared by the nodes: outgoing.<name> on the broker (docs/cluster.md)
                from chainmail.remote.broker_queue import BrokerOutgoingQueue
                from chainmail.store.amqp.spool import BrokerSpool
                from chainmail.store.postgres.blobs import open_blobs
                spool = BrokerSpool(rabbitmq, os.path.join(self.root, "tmp"),
                                    queue=f"outgoing.{self.settings.outgoing}",
                                    blobs=open_blobs(self.context.conf_dir),
                                    priority_of=queue_priority if self.settings.use_priority
                                    else None)
                queue_class = BrokerOutgoingQueue
            self._queue = queue_class(
                spool, self.settings, self.dns, bounce=self._bounce,
                delivered=self._delivered, delayed=self._delayed, max_parallel=self.max_parallel,
                per_destination=self.per_destination, pool=ConnectionPool(),
                deliver_fn=functools.partial(deliver, tls_policy=self.tls_policy),
                holds=HoldList(self.context.var_dir))
        return self._queue

    # -- queueing

    async def service(self, mail: Mail) -> None:
        if not self.settings.use_priority:
            mail.attributes.pop(ATTR_PRIORITY, None)
        if mail.recipients:
            if self.settings.gateways:
                groups = {"": list(mail.recipients)}
            else:
                groups = {}
                for rcpt in mail.recipients:
                    groups.setdefault(_domain(rcpt), []).append(rcpt)
            for domain, rcpts in groups.items():
                name = f"{mail.name}-to-{domain}" if domain else str(mail.name)
                attributes = dict(mail.attributes)
                attributes.setdefault(ATTR_ARRIVAL, mail.queued_at or time.time())
                attributes[ATTR_QUEUE_ID] = mail.name   # retries and bounces keep naming it
                entry = await self.queue.enqueue(
                    mail.sender, rcpts, mail.content, name=name, attributes=attributes,
                    mail_params=mail.mail_params, rcpt_params=mail.rcpt_params)
                log.info("%s: queued for remote delivery to %s (entry %s)", mail.name,
                         ", ".join(rcpts), entry)
        mail.state = GHOST

    async def run(self, task_status) -> None:
        await self.queue.run(task_status=task_status)

    # -- outcomes

    def _mail(self, entry, content: bytes, recipients: list[str]) -> Mail:
        """The mail of a queue entry again, for its bounce or its onSuccess copy: named by
        its queue id, which the bounce report quotes."""
        mail = mail_from_queued(entry, content)
        for key in _QUEUE_ATTRIBUTES:
            mail.attributes.pop(key, None)
        mail.recipients = list(recipients)
        return mail

    async def _bounce(self, bounce: Bounce) -> None:
        outcome = bounce.outcome
        mail = self._mail(bounce.entry, bounce.content, list(bounce.recipients))
        message = outcome.message or next(iter(bounce.recipients.values()))
        processor = self.settings.bounce_processor
        if processor:
            mail.attributes.update({
                ATTR_DELIVERY_ERROR: message,
                ATTR_PERMANENT_ERROR: not bounce.too_many_retries,
                ATTR_DELIVERY_ERRORS: dict(bounce.recipients),
                ATTR_SENT_BY_MAILET: True,
            })
            if outcome.code:
                mail.attributes[ATTR_DELIVERY_ERROR_CODE] = outcome.code
            if outcome.remote_mta:
                mail.attributes[ATTR_REMOTE_MTA] = outcome.remote_mta
            mail.error_message = message
            mail.state = processor
            await self.context.commit(mail)
            return
        await self.context.bounce(mail, message, details=bounce.recipients,
                                  remote_mta=outcome.remote_mta)

    async def _delivered(self, delivered: Delivered) -> None:
        processor = self.settings.on_success
        if processor:
            mail = self._mail(delivered.entry, delivered.content, delivered.recipients)
            mail.attributes[ATTR_SENT_BY_MAILET] = True
            mail.state = processor
            await self.context.commit(mail)
        relayed = [r for r in getattr(delivered.outcome, "relayed", ()) if r in delivered.recipients]
        if relayed:
            mail = self._mail(delivered.entry, delivered.content, relayed)
            await self.context.bounce(
                mail, f"relayed to {delivered.outcome.remote_mta}, which does not send "
                      "delivery notifications", status="2.0.0", attachment="heading",
                action="relayed", remote_mta=delivered.outcome.remote_mta)

    async def _delayed(self, notice: DelayNotice) -> None:
        """RFC 3461 ``NOTIFY=DELAY``: tell the sender the mail is late, not lost."""
        mail = self._mail(notice.entry, notice.content, list(notice.recipients))
        outcome = notice.outcome
        status = status_of(outcome.message, "4.0.0")
        status = "4" + status[1:]
        await self.context.bounce(
            mail, outcome.message or "delivery is being retried", status=status,
            attachment="heading", details=notice.recipients, remote_mta=outcome.remote_mta,
            action="delayed")

    @property
    def info(self) -> str:
        return "RemoteDelivery: SMTP delivery to other servers, with retries and bounces"
