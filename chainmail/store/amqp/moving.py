"""Moving an embedded installation's queued mail onto RabbitMQ.

When ``conf/rabbitmq.properties`` appears on a server that ran with the embedded queues,
the mail still in ``var/spool`` and ``var/outgoing/<name>`` would otherwise wait there for
ever: nothing reads those directories any more.  :func:`move_to_broker` publishes each
message to its queue on the broker (``spool``, ``outgoing.<name>``) and removes it from the
directory only once the broker has confirmed it, so a crash in between leaves it in both
places (processed twice at worst, never lost).  ``chainmail run`` calls it before it starts
serving.
"""

from __future__ import annotations

import logging
from typing import Iterable

import trio

from ..spool import DirectorySpool
from ..spool.record import _encode_meta
from .broker import Broker
from .config import RabbitMQConfig
from .spool import encode

__all__ = ["move_to_broker"]

log = logging.getLogger("chainmail.store.amqp")


async def move_to_broker(config: RabbitMQConfig,
                         spools: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Publish every message of each ``(spool directory, queue name)`` to the queue and
    remove it from the directory; returns how many moved, by queue.  ``BrokerError`` when
    the broker cannot be reached (nothing is removed then)."""
    moved: dict[str, int] = {}
    todo = [(path, queue) for path, queue in spools]
    if not todo:
        return moved
    async with Broker.connect(config) as broker:
        for path, queue in todo:
            spool = DirectorySpool(path)
            try:
                for queued in spool.list():
                    with spool.open_body(queued.id) as fh:
                        content = await trio.to_thread.run_sync(fh.read)
                    meta = _encode_meta(queued.id, queued.envelope, queued.queued_at)
                    await broker.publish(queue, encode(meta, content), {"id": queued.id})
                    await spool.aremove(queued.id)
                    moved[queue] = moved.get(queue, 0) + 1
            finally:
                await spool.aclose()
            if moved.get(queue):
                log.warning("moved %d queued message(s) from %s to RabbitMQ's queue %r",
                            moved[queue], path, queue)
    return moved
