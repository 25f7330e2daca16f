"""The RabbitMQ broker as trio code sees it: durable queues, confirmed publishes, manual
acks and delayed redelivery.

chainmail runs on trio and aio-pika on asyncio: :meth:`Broker.connect` opens a
trio-asyncio loop for the connection's lifetime and every call crosses into it with
``aio_as_trio`` (a server process opens one loop for all its tasks, and the broker uses
it).  The guarantees the shared spool builds on:

- :meth:`Broker.publish` returns only once the broker has confirmed the message
  (publisher confirms, persistent delivery, mandatory routing) and raises
  :class:`PublishError` on a nack, a return, a lost connection or no confirm in time, so
  that a ``250`` is never given for mail the broker does not hold;
- :meth:`Broker.consume` hands out deliveries that stay the consumer's until
  :meth:`Delivery.ack`: a consumer that dies leaves them to be redelivered
  (at-least-once);
- :meth:`Broker.publish_delayed` parks a message in ``<queue>.delay.<ms>``, a queue whose
  message TTL dead-letters it into ``<queue>`` once the delay is over.

Queues are durable quorum queues (``quorum.queues.enable=false``: classic durable
queues with priorities 0-9).  Quorum queues of RabbitMQ before 4.0 ignore priorities.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from .config import RabbitMQConfig

__all__ = ["Broker", "BrokerError", "Consumer", "Delivery", "PublishError", "delay_queue"]

#: how long an unused delay queue is kept beyond its delay (redeclared on every publish)
DELAY_QUEUE_SPARE_MS = 3_600_000
#: the priorities a classic queue keeps apart
MAX_PRIORITY = 9


@asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[None]:
    """The trio-asyncio loop of the calling task, opened for the block when there is none:
    a server process shares one loop between the broker and its asyncio handlers, so that
    every task that publishes reaches the connection's loop."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield


class BrokerError(Exception):
    """The broker could not be reached or refused an operation."""


class PublishError(BrokerError):
    """The broker did not confirm a message: it must be treated as not accepted."""


def _broker_errors() -> tuple[type[BaseException], ...]:
    import aiormq.exceptions
    import aio_pika.exceptions
    return (aio_pika.exceptions.AMQPException, aiormq.exceptions.AMQPError,
            asyncio.TimeoutError, ConnectionError, OSError, RuntimeError)


def delay_queue(queue: str, delay_ms: int) -> str:
    """The name of the queue that holds messages for ``queue`` during ``delay_ms``."""
    return f"{queue}.delay.{delay_ms}"


class Delivery:
    """One message handed to a consumer; it is the consumer's until acked or nacked."""

    def __init__(self, message: Any, queue: str) -> None:
        self._message = message
        self.queue = queue
        self.body: bytes = message.body
        self.headers: dict[str, Any] = dict(message.headers or {})
        self.priority: int | None = message.priority
        #: the broker handed it out before (to a consumer that did not ack it)
        self.redelivered: bool = bool(message.redelivered)

    async def ack(self) -> None:
        """Done with it: the broker forgets the message."""
        try:
            await aio_as_trio(self._message.ack)()
        except _broker_errors() as exc:
            raise BrokerError(f"ack on {self.queue}: {exc!r}") from exc

    async def nack(self, requeue: bool = True) -> None:
        """Not done: back into the queue (``requeue``) or dropped (dead-lettered)."""
        try:
            await aio_as_trio(self._message.nack)(requeue=requeue)
        except _broker_errors() as exc:
            raise BrokerError(f"nack on {self.queue}: {exc!r}") from exc


class Consumer:
    """The deliveries of one queue, at most ``prefetch`` unacked at a time, on a channel of
    their own.  ``async for`` over it; ``async with`` closes the channel on the way out."""

    def __init__(self, broker: Broker, queue: str, prefetch: int) -> None:
        self._broker, self.queue, self.prefetch = broker, queue, prefetch
        self._channel: Any = None
        self._iterator: Any = None

    async def _open(self) -> None:
        try:
            self._channel = await aio_as_trio(self._broker._connection.channel)(
                publisher_confirms=False)
            await aio_as_trio(self._channel.set_qos)(prefetch_count=self.prefetch)
            queue = await aio_as_trio(self._channel.declare_queue)(
                self.queue, durable=True, arguments=self._broker._queue_arguments())
            self._iterator = queue.iterator()
        except _broker_errors() as exc:
            raise BrokerError(f"consume {self.queue}: {exc!r}") from exc

    async def __aenter__(self) -> Consumer:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        if self._iterator is None:
            await self._open()
        try:
            message = await aio_as_trio(self._iterator.__anext__)()
        except StopAsyncIteration:
            raise
        except _broker_errors() as exc:
            raise BrokerError(f"consume {self.queue}: {exc!r}") from exc
        return Delivery(message, self.queue)

    async def aclose(self) -> None:
        """Stop consuming: deliveries not acked yet go back to the queue."""
        channel, self._channel, self._iterator = self._channel, None, None
        if channel is not None and not channel.is_closed:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                try:
                    await aio_as_trio(channel.close)()
                except _broker_errors():
                    pass   # the connection is gone: so are the deliveries it held


class Broker:
    """A connection to RabbitMQ with a publisher-confirm channel."""

    def __init__(self, config: RabbitMQConfig, connection: Any, channel: Any) -> None:
        self.config = config
        self._connection = connection
        self._channel = channel
        self._declared: set[str] = set()

    @classmethod
    @asynccontextmanager
    async def connect(cls, config: RabbitMQConfig) -> AsyncIterator[Broker]:
        """``async with Broker.connect(config) as broker:``; the first of the configured
        endpoints that answers.  ``BrokerError`` when none does."""
        async with _asyncio_loop():
            connection = await cls._open_connection(config)
            try:
                try:
                    channel = await aio_as_trio(connection.channel)(
                        publisher_confirms=True, on_return_raises=True)
                except _broker_errors() as exc:
                    raise BrokerError(f"{config.describe()}: {exc!r}") from exc
                yield cls(config, connection, channel)
            finally:
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    try:
                        await aio_as_trio(connection.close)()
                    except _broker_errors():
                        pass

    @property
    def is_open(self) -> bool:
        """False once the connection or the confirm channel has closed (the broker went
        away, or refused something and closed the channel): connect again."""
        return not (self._connection.is_closed or self._channel.is_closed)

    @staticmethod
    async def _open_connection(config: RabbitMQConfig) -> Any:
        import aio_pika
        context = config.ssl_context()
        problems: list[str] = []
        for uri in config.endpoints():
            try:
                return await aio_as_trio(aio_pika.connect)(
                    uri, ssl_context=context, timeout=config.confirm_timeout,
                    client_properties={"connection_name": "chainmail"})
            except _broker_errors() as exc:
                problems.append(repr(exc))
        raise BrokerError(f"{config.describe()}: cannot connect: {'; '.join(problems)}")

    def _queue_arguments(self, **extra: Any) -> dict[str, Any]:
        if self.config.quorum_queues:
            arguments: dict[str, Any] = {"x-queue-type": "quorum"}
            if self.config.replication_factor:
                arguments["x-quorum-initial-group-size"] = self.config.replication_factor
        else:
            arguments = {"x-max-priority": MAX_PRIORITY}
        arguments.update(extra)
        return arguments

    async def declare(self, queue: str, **arguments: Any) -> None:
        """Make sure the durable queue exists (once per connection and name)."""
        if queue in self._declared:
            return
        try:
            await aio_as_trio(self._channel.declare_queue)(
                queue, durable=True, arguments=self._queue_arguments(**arguments))
        except _broker_errors() as exc:
            raise BrokerError(f"declare {queue}: {exc!r}") from exc
        self._declared.add(queue)

    async def publish(self, queue: str, body: bytes, headers: dict[str, Any],
                      priority: int | None = None) -> None:
        """Put ``body`` into ``queue``; returns once the broker has confirmed it.
        ``PublishError`` otherwise: the message must not be taken as accepted."""
        await self.declare(queue)
        await self._publish(queue, body, headers, priority)

    async def publish_delayed(self, queue: str, body: bytes, headers: dict[str, Any],
                              delay_s: float, priority: int | None = None) -> None:
        """Put ``body`` into ``queue`` once ``delay_s`` seconds have passed (confirmed now,
        delivered then): it waits in ``<queue>.delay.<ms>``, whose message TTL
        dead-letters it into ``queue``."""
        delay_ms = max(0, math.ceil(delay_s * 1000))
        await self.declare(queue)
        if delay_ms == 0:
            await self._publish(queue, body, headers, priority)
            return
        name = delay_queue(queue, delay_ms)
        extra: dict[str, Any] = {"x-message-ttl": delay_ms, "x-dead-letter-exchange": "",
                                 "x-dead-letter-routing-key": queue,
                                 "x-expires": delay_ms + DELAY_QUEUE_SPARE_MS}
        if self.config.quorum_queues:
            # dead-lettered by the broker only once the target queue has confirmed it
            extra.update({"x-dead-letter-strategy": "at-least-once",
                          "x-overflow": "reject-publish"})
        await self.declare(name, **extra)
        await self._publish(name, body, headers, priority)

    async def _publish(self, queue: str, body: bytes, headers: dict[str, Any],
                       priority: int | None) -> None:
        import aio_pika
        message = aio_pika.Message(body, headers=headers, priority=priority,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            confirm = await aio_as_trio(self._channel.default_exchange.publish)(
                message, routing_key=queue, mandatory=True,
                timeout=self.config.confirm_timeout)
        except _broker_errors() as exc:
            raise PublishError(f"{queue}: not confirmed by {self.config.describe()}: "
                               f"{exc!r}") from exc
        from pamqp.commands import Basic
        if not isinstance(confirm, Basic.Ack):
            raise PublishError(f"{queue}: not confirmed by {self.config.describe()}: "
                               f"{confirm!r}")

    async def exists(self, queue: str) -> bool:
        """Whether ``queue`` has been declared (asked on a channel of its own: the broker
        closes the channel that asks for a queue it does not have)."""
        import aiormq.exceptions
        try:
            channel = await aio_as_trio(self._connection.channel)(publisher_confirms=False)
        except _broker_errors() as exc:
            raise BrokerError(f"exists {queue}: {exc!r}") from exc
        try:
            await aio_as_trio(channel.declare_queue)(queue, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        except _broker_errors() as exc:
            raise BrokerError(f"exists {queue}: {exc!r}") from exc
        finally:
            if not channel.is_closed:
                try:
                    await aio_as_trio(channel.close)()
                except _broker_errors():
                    pass   # closed by the broker meanwhile

    def consume(self, queue: str, prefetch: int) -> Consumer:
        """The deliveries of ``queue`` (declared if need be), acked by hand."""
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        return Consumer(self, queue, prefetch)
