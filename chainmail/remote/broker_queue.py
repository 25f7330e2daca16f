"""RemoteDelivery's outgoing queue on RabbitMQ (``conf/rabbitmq.properties``), shared by the
nodes: James's ``outgoing`` MailQueue as a durable quorum queue ``outgoing.<name>``.

Entries are published and read as the spool's (:class:`chainmail.store.amqp.BrokerSpool`);
scheduling and delivery are :class:`~.queue.OutgoingQueue`'s, unchanged (destinations,
per-destination workers, ``maxConcurrentDeliveries``, priorities among the entries at hand).
What differs:

- every node consumes the queue, at most ``maxConcurrentDeliveries`` entries unacknowledged
  each;
- an entry is **acknowledged once its outcome is durable** (retry queued and confirmed,
  bounce committed, ``onSuccess`` copy committed): a node that dies during an attempt leaves
  the entry to another, which tries it again (at least once);
- a retry is a new entry published at once; whoever takes it before its ``next_attempt``
  parks it in a delay queue for the rest of the wait (as a held entry is parked for
  :data:`HOLD_RECHECK`), so retries cost no polling;
- ``chainmail queue flush`` and ``remove`` act on the embedded queues only (the broker
  cannot pick one message out of a queue).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from chainmail.logctx import about_message
from chainmail.store.amqp.broker import BrokerError, Delivery
from chainmail.store.amqp.spool import BrokerSpool
from chainmail.store.spool import QueuedMessage, SpoolUnavailable

from .queue import ATTR_NEXT_ATTEMPT, OutgoingQueue, queue_id

__all__ = ["BrokerOutgoingQueue", "ERROR_RECHECK", "HOLD_RECHECK"]

log = logging.getLogger("chainmail.remote.queue")

HOLD_RECHECK = 5.0
ERROR_RECHECK = 30.0


class BrokerOutgoingQueue(OutgoingQueue):
    """:class:`OutgoingQueue` over a :class:`BrokerSpool` (``queue="outgoing.<name>"``)."""

    spool: BrokerSpool   # type: ignore[assignment]

    def __init__(self, spool: BrokerSpool, *args: Any, **kwargs: Any) -> None:
        super().__init__(spool, *args, **kwargs)   # type: ignore[arg-type]
        self._deliveries: dict[str, tuple[Delivery, bytes]] = {}

    async def run(self, *, poll_interval: float = 1.0,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection and consume until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.spool.run)
                nursery.start_soon(self._expire_pool, poll_interval)
                task_status.started()
                await self._consume(nursery)
        finally:
            if self.pool is not None:
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    await self.pool.aclose()

    async def _expire_pool(self, interval: float) -> None:
        while self.pool is not None:
            await self.pool.expire()
            await trio.sleep(interval)

    async def _consume(self, nursery: trio.Nursery) -> None:
        pause = 0.5
        while True:
            try:
                async with self.spool.consume(self.max_parallel) as consumer:
                    log.info("outgoing queue %s on %s", self.config.outgoing,
                             self.spool.describe())
                    pause = 0.5
                    async for delivery in consumer:
                        await self._take(delivery, nursery)
            except BrokerError as exc:
                log.warning("outgoing queue %s: consumer stopped (%s); it starts again once "
                            "RabbitMQ is back", self.config.outgoing, exc)
            await trio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _take(self, delivery: Delivery, nursery: trio.Nursery) -> None:
        unpacked = await self.spool.unpack(delivery)
        if unpacked is None:
            return
        msg_id, entry, content = unpacked
        if msg_id in self._deliveries:   # redelivered while this node still holds it
            return
        self._deliveries[msg_id] = (delivery, content)
        delay = float(entry.envelope.attributes.get(ATTR_NEXT_ATTEMPT) or 0) - time.time()
        if self.holds is not None and self.holds.is_held(queue_id(entry)):
            delay = max(delay, HOLD_RECHECK)
        if delay > 0:
            nursery.start_soon(self._later, entry, delay)
            return
        self._dispatch([entry], nursery)

    async def _later(self, entry: QueuedMessage, delay: float) -> None:
        """Back through a delay queue (confirmed), then acknowledged."""
        held = self._deliveries.pop(entry.id, None)
        if held is None:
            return
        delivery, _ = held
        with trio.CancelScope(shield=True):
            try:
                await self.spool.publish(entry.id, delivery.body, delay=delay)
                await delivery.ack()
            except (BrokerError, SpoolUnavailable) as exc:
                log.warning("%s: not queued again (%s); the broker delivers it again",
                            queue_id(entry), exc)

    # -- the hooks of OutgoingQueue

    def _read(self, entry: QueuedMessage) -> bytes | None:
        held = self._deliveries.get(entry.id)
        return held[1] if held is not None else None

    async def attempt(self, entry: QueuedMessage) -> Any:
        try:
            return await super().attempt(entry)
        finally:
            if entry.id in self._deliveries:   # raised before its outcome was applied
                with about_message(queue_id(entry)):
                    log.warning("%s: tried again in %.0f s", queue_id(entry), ERROR_RECHECK)
                await self._later(entry, ERROR_RECHECK)

    def _removed_meanwhile(self, entry: QueuedMessage) -> bool:
        return False

    async def _finished(self, entry: QueuedMessage) -> None:
        held = self._deliveries.pop(entry.id, None)
        if held is None:
            return
        try:
            await held[0].ack()
        except BrokerError as exc:
            log.warning("%s: done, but RabbitMQ did not take the acknowledgement (%s): it "
                        "will be tried again", queue_id(entry), exc)
            return
        await self.spool.forget(held[0])
