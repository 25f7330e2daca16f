"""Spool workers for the spool on RabbitMQ (:class:`chainmail.store.amqp.BrokerSpool`): every
node's container consumes the one ``spool`` queue.

The mail is processed as :class:`~.spooler.MailSpooler` does (same engine, same commits of
what the mailets sent, same failure handling and error repository); what differs is where
the mail comes from and how it leaves:

- a delivery is taken from the queue (at most ``threads`` unacknowledged per node), and is
  **acknowledged only once** what processing made of it is durable (deliveries, mail sent on
  committed to the queue and confirmed).  A node that dies, or loses the broker, before that
  leaves the mail to be delivered again, to itself or another node: **at least once**;
- a mail whose time has not come (a retry after a failure, ``ATTR_RETRY_AT``) or that is
  held goes back through a delay queue (:meth:`BrokerSpool.publish`), confirmed, and only
  then is the delivery acknowledged;
- a delivery no node can read is set aside in ``spool.unreadable``.

When the broker goes away the workers finish the mail they hold (their acknowledgements
fail: it is delivered again later) and consuming starts again once the spool has
reconnected: the container pauses while the broker is gone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from chainmail.store.amqp.broker import BrokerError, Delivery
from chainmail.store.spool import SpoolUnavailable

from .spooler import MailSpooler

__all__ = ["BrokerSpooler", "ERROR_RECHECK", "HOLD_RECHECK"]

log = logging.getLogger("chainmail.spooler")

#: how long a held mail waits in a delay queue before it is looked at again (seconds)
HOLD_RECHECK = 5.0
#: how long a mail whose processing raised unexpectedly waits before it is tried again
ERROR_RECHECK = 30.0


class BrokerSpooler(MailSpooler):
    """:class:`MailSpooler` over a :class:`BrokerSpool`."""

    def __init__(self, spool: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(spool, *args, **kwargs)
        self._deliveries: dict[str, Delivery] = {}   # spool id -> its unacked delivery
        self._intake: trio.CancelScope | None = None

    def notify(self, msg_id: str | None = None) -> None:
        """Nothing to do: the broker hands new mail to a consumer as it is published."""

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.threads <= 0:
            await super().run(task_status=task_status)
            return
        log.info("mailet container: %d spool worker(s) on %s, processors %s", self.threads,
                 self.spool.describe(), ", ".join(self.engine.states))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._consume, name="spool-consumer")
                task_status.started()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Take no more mail; return once the mail being processed is done."""
        self._stopping = True
        self._wake.set()   # threads 0: the idle loop of MailSpooler.run
        if self._intake is not None:
            self._intake.cancel()
        await self._stopped.wait()

    async def _consume(self) -> None:
        pause = 0.5
        while not self._stopping:
            problem: BaseException | None = None
            try:
                async with self.spool.consume(self.threads) as consumer:
                    pause = 0.5
                    slots = trio.Semaphore(self.threads)
                    async with trio.open_nursery() as workers:
                        self._intake = trio.CancelScope()
                        if self._stopping:
                            self._intake.cancel()
                        with self._intake:
                            try:
                                async for delivery in consumer:
                                    await slots.acquire()
                                    workers.start_soon(self._work, delivery, slots)
                            except BrokerError as exc:
                                problem = exc   # the mail in hand is finished first
            except BrokerError as exc:
                problem = exc
            if problem is not None and not self._stopping:
                log.warning("spool consumer stopped (%s); it starts again once RabbitMQ is "
                            "back", problem)
                await trio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _work(self, delivery: Delivery, slots: trio.Semaphore) -> None:
        try:
            await self._handle(delivery)
        except Exception:
            log.exception("unexpected error in the spooler; the mail is looked at again in "
                          "%.0f s", ERROR_RECHECK)
            msg_id = str(delivery.headers.get("id") or "")
            self._deliveries[msg_id] = delivery
            await self._later(msg_id, delivery, ERROR_RECHECK)
        finally:
            slots.release()

    async def _handle(self, delivery: Delivery) -> None:
        unpacked = await self.spool.unpack(delivery)
        if unpacked is None:
            return
        msg_id, queued, content = unpacked
        self._deliveries[msg_id] = delivery
        self.in_flight.add(msg_id)
        try:
            if not await self._run(msg_id, queued, (queued, content)):
                not_before = self.deferred.get(msg_id)
                delay = max(0.0, not_before - time.time()) if not_before is not None else 0.0
                if msg_id in self._held_seen:
                    delay = max(delay, HOLD_RECHECK)
                await self._later(msg_id, delivery, delay)
        finally:
            self._deliveries.pop(msg_id, None)
            self.deferred.pop(msg_id, None)
            self.in_flight.discard(msg_id)

    async def _later(self, msg_id: str, delivery: Delivery, delay: float) -> None:
        """Not to be processed now (held, a retry not due, an unexpected error): back
        through a delay queue, and only then acknowledged."""
        if msg_id not in self._deliveries:
            return   # acknowledged already
        with trio.CancelScope(shield=True):
            try:
                await self.spool.publish(msg_id, delivery.body, delay=delay)
            except SpoolUnavailable as exc:
                log.warning("%s: cannot queue it again (%s); it stays in the queue", msg_id, exc)
                return
            await self._ack(msg_id)   # the same entry waits on: its content stays

    async def _remove(self, msg_id: str, *, durable: bool = True) -> None:
        """Processed: the delivery is acknowledged and the entry's content row deleted."""
        delivery = await self._ack(msg_id)
        if delivery is not None:
            await self.spool.forget(delivery)

    async def _ack(self, msg_id: str) -> Delivery | None:
        """The delivery acknowledged (None when it was not: the broker delivers it again)."""
        delivery = self._deliveries.pop(msg_id, None)
        if delivery is None:
            log.warning("%s: already acknowledged", msg_id)
            return None
        try:
            await delivery.ack()
        except BrokerError as exc:
            log.warning("%s: done, but RabbitMQ did not take the acknowledgement (%s): it will "
                        "be processed again", msg_id, exc)
            return None
        return delivery
