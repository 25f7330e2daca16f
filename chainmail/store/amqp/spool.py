"""The spool on RabbitMQ: what SMTP and LMTP accept, shared by every node.

With ``conf/rabbitmq.properties`` the spool between the servers and the mailet container
is the broker's durable quorum queue ``spool`` instead of ``var/spool``.  The message is
received exactly as for the embedded spool (:class:`~chainmail.store.spool.SpoolWriter`:
in memory up to the buffer limit, then in a node-local temporary file), and its commit
publishes envelope and content as one persistent message and returns only once the broker
has **confirmed** it; a message the broker did not confirm raises
:class:`SpoolUnavailable` (an ``OSError``: SMTP answers ``451 4.3.0`` and nothing is
kept).  The content travels in the queue message itself: one confirmed round trip per
message, and the broker's replicated log is the only copy until the container is done.

Every node's container consumes the same queue and acknowledges a message only once it has
been processed (:class:`chainmail.mailet.broker_spooler.BrokerSpooler`): a node that dies
leaves what it held to the others, at least once.

:meth:`BrokerSpool.run` keeps the connection: a broker that goes away is reconnected to
every :data:`RECONNECT_MAX` seconds at most, and meanwhile commits fail at once.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Callable

import trio

from ..spool.fileio import _close_quietly, _unlink_quietly
from ..spool.ids import new_id
from ..spool.largefiles import _FOOTER_LEN
from ..spool.record import Envelope, QueuedMessage, SpoolFormatError, _decode_meta
from ..spool.writer import BUFFER_LIMIT, SpoolUnavailable, SpoolWriter
from .broker import Broker, BrokerError, Consumer, Delivery, PublishError
from .config import RabbitMQConfig

__all__ = ["BrokerSpool", "SPOOL_QUEUE", "SpoolUnavailable", "blob_key", "decode", "encode",
           "encode_reference"]

log = logging.getLogger("chainmail.store.amqp")

#: the queue SMTP and LMTP publish to and every node's container consumes
SPOOL_QUEUE = "spool"
#: the longest wait between two attempts to reach a broker that went away (seconds)
RECONNECT_MAX = 5.0
#: how often the connection is looked at (seconds)
WATCH_INTERVAL = 0.2
#: how long an entry whose content could not be read from PostgreSQL waits (seconds)
BLOB_RETRY = 5.0

_MAGIC = b"CMQ1"        # the content follows the envelope
_MAGIC_BLOB = b"CMQB"   # the key of the content's row in PostgreSQL follows
_LEN = struct.Struct(">I")


def encode(meta: bytes, content: bytes | bytearray) -> bytes:
    """A queue message: the envelope record (as the embedded spool writes it) and the
    content, behind a four-byte magic and the envelope's length."""
    return b"".join((_MAGIC, _LEN.pack(len(meta)), meta, content))


def encode_reference(meta: bytes, key: str) -> bytes:
    """A queue message whose content is in the blob store under ``key``."""
    return b"".join((_MAGIC_BLOB, _LEN.pack(len(meta)), meta, key.encode("ascii")))


def blob_key(body: bytes) -> str | None:
    """The blob key a queue message refers to; None when it carries its content."""
    if body[:4] != _MAGIC_BLOB or len(body) < 8:
        return None
    (meta_len,) = _LEN.unpack_from(body, 4)
    return body[8 + meta_len:].decode("ascii", "replace")


def decode(msg_id: str, body: bytes,
           fetch: Callable[[str], bytes] | None = None) -> tuple[QueuedMessage, bytes]:
    """The queued message and its content (``fetch(key)`` reads content kept in the blob
    store); ``SpoolFormatError`` for anything else."""
    if body[:4] not in (_MAGIC, _MAGIC_BLOB) or len(body) < 8:
        raise SpoolFormatError(f"{msg_id}: not a chainmail queue message")
    (meta_len,) = _LEN.unpack_from(body, 4)
    if 8 + meta_len > len(body):
        raise SpoolFormatError(f"{msg_id}: queue message cut short")
    queued_at, envelope = _decode_meta(memoryview(body)[8:8 + meta_len], msg_id)
    content = body[8 + meta_len:]
    if body[:4] == _MAGIC_BLOB:
        key = content.decode("ascii", "replace")
        if fetch is None:
            raise SpoolFormatError(f"{msg_id}: its content is in the blob store {key!r}, "
                                   "which is not configured (postgres.properties)")
        try:
            content = fetch(key)
        except KeyError:
            raise SpoolFormatError(f"{msg_id}: its content {key!r} is not in the blob "
                                   "store") from None
    return QueuedMessage(msg_id, envelope, len(content), queued_at, path=""), content


class BrokerSpool:
    """The spool as a RabbitMQ queue.  ``tmp_dir`` (node-local) holds messages larger than
    the buffer limit while they arrive."""

    #: its connection lives on the process's trio-asyncio loop (opened by the server)
    needs_asyncio = True

    def __init__(self, config: RabbitMQConfig, tmp_dir: str | os.PathLike[str], *,
                 queue: str = SPOOL_QUEUE, buffer_limit: int = BUFFER_LIMIT,
                 priority_of: Callable[[Envelope], int | None] | None = None,
                 blobs: Any = None) -> None:
        self.config = config
        #: large content in PostgreSQL (``chainmail.store.postgres.blobs.BlobStore``)
        self.blobs = blobs if config.blob_threshold > 0 else None
        self.queue = queue
        #: the AMQP priority (0-9) of a message, for classic queues (quorum queues of
        #: RabbitMQ before 4.0 ignore priorities)
        self.priority_of = priority_of if not config.quorum_queues else None
        self.tmp_dir = os.path.abspath(os.fspath(tmp_dir))
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        self.root = os.path.dirname(self.tmp_dir)
        self._buffer_limit = buffer_limit
        self.commit_listeners: list[Callable[[str], None]] = []
        self._broker: Broker | None = None
        self._connected = trio.Event()
        self._closed = False

    def describe(self) -> str:
        return f"queue {self.queue!r} on {self.config.describe()}"

    # -- the connection

    @property
    def connected(self) -> bool:
        return self._broker is not None and self._broker.is_open

    async def wait_connected(self) -> Broker:
        """The open connection, once there is one."""
        while True:
            broker = self._broker
            if broker is not None and broker.is_open:
                return broker
            await self._connected.wait()
            if self._broker is None:
                await trio.sleep(WATCH_INTERVAL)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection open until cancelled.  Started before the servers accept; a
        broker that cannot be reached then is not an error: commits fail (``451``) until
        it can."""
        delay = 0.5
        announced_down = False
        started = False
        while True:
            try:
                async with Broker.connect(self.config) as broker:
                    await broker.declare(self.queue)
                    self._broker = broker
                    self._connected.set()
                    if announced_down:
                        log.warning("RabbitMQ is back: %s", self.describe())
                    else:
                        log.info("spool: %s", self.describe())
                    announced_down, delay = False, 0.5
                    if not started:
                        started = True
                        task_status.started()
                    while broker.is_open:
                        await trio.sleep(WATCH_INTERVAL)
                    self._lost()
                    log.error("RabbitMQ connection lost (%s): mail is refused with 451 until "
                              "it is back", self.describe())
                    announced_down = True
            except BrokerError as exc:
                self._lost()
                if not announced_down:
                    log.error("cannot reach RabbitMQ (%s): mail is refused with 451 until "
                              "it is back", exc)
                    announced_down = True
            finally:
                self._lost()
            if not started:
                started = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _lost(self) -> None:
        self._broker = None
        if self._connected.is_set():
            self._connected = trio.Event()

    # -- receiving (the writer's committer)

    def open_writer(self) -> SpoolWriter:
        if self._closed:
            raise RuntimeError("spool is closed")
        return SpoolWriter(self, new_id(), self._buffer_limit)

    def _tmp_path(self, msg_id: str) -> str:
        return os.path.join(self.tmp_dir, msg_id)

    async def _commit_record(self, msg_id: str, meta: bytes, body: bytearray) -> None:
        await self._publish(msg_id, await self._message(msg_id, meta, body),
                            self._priority(msg_id, meta))

    async def _message(self, msg_id: str, meta: bytes, content: bytes | bytearray) -> bytes:
        """The queue message of an entry: its content inline, or in the blob store (stored
        and committed now) when it is large."""
        if self.blobs is None or len(content) < self.config.blob_threshold:
            return encode(meta, content)
        try:
            await trio.to_thread.run_sync(self.blobs.put, msg_id, bytes(content))
        except Exception as exc:   # the database's errors: not accepted, nothing kept
            raise SpoolUnavailable(f"{msg_id}: content not stored in PostgreSQL: "
                                   f"{' '.join(str(exc).split())}") from exc
        return encode_reference(meta, msg_id)

    async def forget(self, delivery: Delivery) -> None:
        """The entry of ``delivery`` has left the queue: its content row goes too."""
        key = blob_key(delivery.body)
        if key is None or self.blobs is None:
            return
        try:
            await trio.to_thread.run_sync(self.blobs.delete, key)
        except Exception as exc:
            log.warning("%s: content row not deleted (%s); the blob sweep removes it", key, exc)

    def _priority(self, msg_id: str, meta: bytes) -> int | None:
        if self.priority_of is None:
            return None
        priority = self.priority_of(_decode_meta(meta, msg_id)[1])
        return None if priority is None else max(0, min(9, priority))

    async def _commit_file(self, msg_id: str, fd: int | None, buf: bytearray, tail: bytes) -> None:
        path = self._tmp_path(msg_id)

        def read() -> bytes:
            try:
                if fd is None:
                    return b""
                with open(path, "rb") as fh:
                    return fh.read()
            finally:
                if fd is not None:
                    _close_quietly(fd)
                _unlink_quietly(path)
        head = await trio.to_thread.run_sync(read)
        meta = tail[:-_FOOTER_LEN]
        await self._publish(msg_id, await self._message(msg_id, meta, head + bytes(buf)),
                            self._priority(msg_id, meta))

    async def _publish(self, msg_id: str, body: bytes, priority: int | None = None) -> None:
        broker = self._broker
        if broker is None or not broker.is_open:
            raise SpoolUnavailable(f"{msg_id}: RabbitMQ is not reachable ({self.describe()})")
        try:
            await broker.publish(self.queue, body, {"id": msg_id}, priority)
        except PublishError as exc:
            raise SpoolUnavailable(f"{msg_id}: {exc}") from exc

    async def publish(self, msg_id: str, body: bytes, *, delay: float = 0.0) -> None:
        """Queue an already encoded message again, after ``delay`` seconds (retries,
        held mail): confirmed when this returns."""
        broker = await self.wait_connected()
        try:
            await broker.publish_delayed(self.queue, body, {"id": msg_id},
                                         delay_bucket(delay))
        except PublishError as exc:
            raise SpoolUnavailable(f"{msg_id}: {exc}") from exc

    async def set_aside(self, msg_id: str, body: bytes) -> None:
        """Keep a message no node can read in ``<queue>.unreadable`` (for the operator),
        out of the way of the rest."""
        broker = await self.wait_connected()
        try:
            await broker.publish(f"{self.queue}.unreadable", body, {"id": msg_id})
        except PublishError as exc:
            raise SpoolUnavailable(f"{msg_id}: {exc}") from exc

    # -- consuming

    async def unpack(self, delivery: Delivery) -> tuple[str, QueuedMessage, bytes] | None:
        """The spool id, entry and content of a delivery; None for one no node can read,
        which is set aside in ``<queue>.unreadable`` and acknowledged."""
        msg_id = str(delivery.headers.get("id") or "")
        try:
            if blob_key(delivery.body) is not None and self.blobs is not None:
                entry, content = await trio.to_thread.run_sync(
                    decode, msg_id, delivery.body, self.blobs.get)
            else:
                entry, content = decode(msg_id, delivery.body)
        except SpoolFormatError as exc:
            log.error("unreadable message %r set aside in %s.unreadable: %s", msg_id,
                      self.queue, exc)
            with trio.CancelScope(shield=True):
                try:
                    await self.set_aside(msg_id, delivery.body)
                    await delivery.ack()
                except (BrokerError, SpoolUnavailable) as again:
                    log.warning("%s: could not set it aside (%s)", msg_id, again)
            return None
        except Exception as exc:   # its content cannot be read now (the database is down)
            log.warning("%s: content not readable now (%s); looked at again in %.0f s",
                        msg_id, ' '.join(str(exc).split()), BLOB_RETRY)
            with trio.CancelScope(shield=True):
                try:
                    await self.publish(msg_id, delivery.body, delay=BLOB_RETRY)
                    await delivery.ack()
                except (BrokerError, SpoolUnavailable) as again:
                    log.warning("%s: not queued again (%s); the broker delivers it again",
                                msg_id, again)
            return None
        return msg_id, entry, content

    @asynccontextmanager
    async def consume(self, prefetch: int) -> AsyncIterator[Consumer]:
        """The queue's deliveries, at most ``prefetch`` unacknowledged (``BrokerError``
        when the connection goes)."""
        broker = await self.wait_connected()
        async with broker.consume(self.queue, prefetch) as consumer:
            yield consumer

    # -- life cycle

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<BrokerSpool {self.describe()}>"


#: the delays a retry or a held mail waits, in seconds: one delay queue each
_BUCKETS = (0.25, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def delay_bucket(delay: float) -> float:
    """The longest bucket not longer than ``delay`` (0 below the shortest): a mail whose
    time has not come when it is delivered is delayed again for the rest, so that a few
    delay queues serve every retry schedule."""
    best = 0.0
    for bucket in _BUCKETS:
        if bucket <= delay:
            best = bucket
    return best
