"""The operator's view of a queue on RabbitMQ: what ``chainmail queue`` and WebAdmin list,
remove, flush and hold when the spool and the outgoing queues are on the broker.

RabbitMQ cannot look into a queue: :class:`BrokerQueue` takes every waiting message of the
queue, its delay queues (retries waiting for their time) and its ``.held`` queue on a channel
of its own with ``basic.get``, and gives back (closing the channel requeues them) all but
those it removes or moves.  So every node's view is the same, and:

- a listing shows the mail **waiting**; mail a node is processing at that moment is not
  in it (the broker counts it as unacknowledged);
- a removal takes the message out for good (acknowledged on the browsing channel);
- a flush moves waiting retries into the queue itself (published and confirmed first);
- a hold moves the mail into ``<queue>.held``, which nobody consumes, and a release moves
  it back: held mail is held for every node.

Each call opens a connection of its own (operator commands are rare) and runs its own trio
loop: call it from a thread, never from inside a trio run.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Awaitable, BinaryIO, Callable, List

import trio
from trio_asyncio import aio_as_trio

from ..spool.record import Envelope, QueuedMessage, SpoolFormatError, _encode_meta
from .broker import Broker, _broker_errors, delay_queue
from .config import RabbitMQConfig
from .spool import _BUCKETS, blob_key, decode, encode, encode_reference

__all__ = ["BrokerQueue", "HELD_SUFFIX", "MAX_BROWSE"]

#: the queue that holds ``<queue>``'s held mail
HELD_SUFFIX = ".held"
#: the most messages one browse takes out of one queue
MAX_BROWSE = 100_000

Pick = Callable[[QueuedMessage], bool]


class _Taken:
    """One message taken on the browsing channel: requeued unless acked."""

    def __init__(self, message: Any, source: str, fetch: Callable[[str], bytes] | None) -> None:
        self.message, self.source = message, source
        self.id = str((message.headers or {}).get("id") or "")
        self.blob = blob_key(message.body)   # its content is in the blob store
        self.entry, self.content = decode(self.id, message.body, fetch)


class BrokerQueue:
    """``queue`` on the broker of ``config``, as the admin operations see a queue
    (``list``, ``ids``, ``get``, ``open_body``, ``remove``) plus :meth:`flush`,
    :meth:`hold`, :meth:`release` and :meth:`held`."""

    root = None   # no directory: flush requests are not files

    def __init__(self, config: RabbitMQConfig, queue: str, *,
                 blobs: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.queue = queue
        self._open_blobs = blobs   # the blob store (PostgreSQL), opened when one is needed
        self._blobs: Any = None

    def _blob_store(self) -> Any:
        if self._blobs is None and self._open_blobs is not None:
            self._blobs = self._open_blobs()
        return self._blobs

    def _fetch(self, key: str) -> bytes:
        store = self._blob_store()
        if store is None:
            raise KeyError(key)
        return bytes(store.get(key))

    def describe(self) -> str:
        return f"queue {self.queue!r} on {self.config.describe()}"

    # -- reading

    def list(self) -> List[QueuedMessage]:
        """The waiting mail, oldest first (held mail aside: :meth:`held`)."""
        return sorted((t.entry for t in self._browse(self._sources())), key=_age)

    def held(self) -> List[QueuedMessage]:
        return sorted((t.entry for t in self._browse([self.queue + HELD_SUFFIX])), key=_age)

    def ids(self) -> List[str]:
        return [e.id for e in self.list()]

    def get(self, msg_id: str) -> QueuedMessage:
        return self._one(msg_id).entry

    def open_body(self, msg_id: str) -> BinaryIO:
        return io.BytesIO(self._one(msg_id).content)

    def _one(self, msg_id: str) -> _Taken:
        for taken in self._browse([*self._sources(), self.queue + HELD_SUFFIX]):
            if taken.id == msg_id:
                return taken
        raise KeyError(msg_id)

    # -- changing

    def remove(self, msg_id: str) -> None:
        """Take the message out for good; ``KeyError`` if it is not waiting."""
        if not self.remove_where(lambda e: e.id == msg_id):
            raise KeyError(msg_id)

    def remove_where(self, pick: Pick) -> int:
        """Remove every waiting (or held) message ``pick`` accepts; how many."""
        return self._run(self._change([*self._sources(), self.queue + HELD_SUFFIX], pick, None))

    def flush(self, pick: Pick, make_due: Callable[[Envelope], None]) -> int:
        """Move the retries ``pick`` accepts out of the delay queues into the queue, each
        envelope changed by ``make_due`` (which clears its time to wait): they are tried
        at once."""
        return self._run(self._change(self._delays(), pick, self.queue, make_due))

    def hold(self, pick: Pick) -> int:
        """Park the waiting mail ``pick`` accepts in ``<queue>.held``."""
        return self._run(self._change(self._sources(), pick, self.queue + HELD_SUFFIX))

    def release(self, pick: Pick) -> int:
        """Move the held mail ``pick`` accepts back into the queue."""
        return self._run(self._change([self.queue + HELD_SUFFIX], pick, self.queue))

    # -- the browsing channel

    def _sources(self) -> List[str]:
        return [self.queue, *self._delays()]

    def _delays(self) -> List[str]:
        return [delay_queue(self.queue, int(bucket * 1000)) for bucket in _BUCKETS]

    def _browse(self, queues: List[str]) -> List[_Taken]:
        async def look(broker: Broker, taken: List[_Taken]) -> List[_Taken]:
            return list(taken)
        return self._run(self._with_taken(queues, look))

    def _change(self, queues: List[str], pick: Pick, to: str | None,
                edit: Callable[[Envelope], None] | None = None) -> Callable[[], Awaitable[int]]:
        async def change(broker: Broker, taken: List[_Taken]) -> int:
            done = 0
            for each in taken:
                if not pick(each.entry):
                    continue
                if to is not None:
                    body = each.message.body
                    if edit is not None:
                        entry = each.entry
                        edit(entry.envelope)
                        meta = _encode_meta(entry.id, entry.envelope, entry.queued_at)
                        body = encode_reference(meta, each.blob) if each.blob is not None \
                            else encode(meta, each.content)
                    await broker.publish(to, body, {"id": each.id}, each.message.priority)
                await aio_as_trio(each.message.ack)()
                if to is None and each.blob is not None and self._blob_store() is not None:
                    await trio.to_thread.run_sync(self._blob_store().delete, each.blob)
                done += 1
            return done
        return self._with_taken(queues, change)

    def _with_taken(self, queues: List[str],
                    work: Callable[[Broker, List[_Taken]], Awaitable[Any]]
                    ) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            async with Broker.connect(self.config) as broker:
                channel = await aio_as_trio(broker._connection.channel)(publisher_confirms=False)
                try:
                    taken: List[_Taken] = []
                    for name in queues:
                        taken += await self._take_all(broker, channel, name)
                    return await work(broker, taken)
                finally:
                    with trio.CancelScope(shield=True):
                        with contextlib.suppress(*_broker_errors()):
                            # what was not acked goes back to its queue
                            await aio_as_trio(channel.close)()
        return run

    async def _take_all(self, broker: Broker, channel: Any, name: str) -> List[_Taken]:
        """Every message waiting in ``name`` (none if there is no such queue)."""
        exists = await broker.exists(name)
        if not exists:
            return []
        queue = await aio_as_trio(channel.declare_queue)(name, passive=True)
        taken: List[_Taken] = []
        for _ in range(MAX_BROWSE):
            message = await aio_as_trio(queue.get)(no_ack=False, fail=False)
            if message is None:
                break
            try:
                taken.append(_Taken(message, name, self._fetch))
            except SpoolFormatError:
                continue   # not chainmail's: left alone (requeued with the rest)
        return taken

    def _run(self, afn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return trio.run(afn)
        except BaseException as exc:   # through the asyncio loop's nursery: maybe a group
            first: BaseException = exc
            while isinstance(first, BaseExceptionGroup) and first.exceptions:
                first = first.exceptions[0]
            if first is exc:
                raise
            raise first from exc
        finally:
            if self._blobs is not None:
                self._blobs.close()
                self._blobs = None


def _age(entry: QueuedMessage) -> tuple[float, str]:
    return entry.queued_at, entry.id
