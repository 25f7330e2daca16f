"""A held queue id stops its outgoing queue entries (every retry of them) until released;
a retry keeps the queue id of the mail it retries."""

from __future__ import annotations

import time

from chainmail.mailet.context import ATTR_QUEUE_ID
from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.delivery import Outcome
from chainmail.remote.dns import DnsService
from chainmail.remote.queue import OutgoingQueue, queue_id
from chainmail.store import holds as holds_module
from chainmail.store.holds import HoldList
from chainmail.store.spool import DirectorySpool

QID = "0190a1b2c3d4-0000a1b2c3d4e5f6a7b8"


def make_queue(tmp_path, deliver_fn=None) -> OutgoingQueue:
    async def bounce(b):
        raise AssertionError("no bounce expected")

    kwargs = {"deliver_fn": deliver_fn} if deliver_fn else {}
    return OutgoingQueue(DirectorySpool(tmp_path / "outgoing"),
                         RemoteDeliveryConfig.from_params({"delayTime": "1s", "maxRetries": "3"}),
                         DnsService(nameservers=[("127.0.0.1", 9)]), bounce=bounce,
                         holds=HoldList(tmp_path), **kwargs)


async def test_held_entries_are_not_due_until_released(tmp_path, monkeypatch):
    monkeypatch.setattr(holds_module, "RECHECK", 0.0)
    q = make_queue(tmp_path)
    await q.enqueue("a@local.test", ["x@example.test"], b"Subject: s\r\n\r\nb\r\n",
                    attributes={ATTR_QUEUE_ID: f"{QID}-3"})
    other = await q.enqueue("a@local.test", ["y@example.test"], b"Subject: s\r\n\r\nb\r\n")
    assert HoldList(tmp_path).hold(QID)    # holding the mail holds the copies made of it
    assert [e.id for e in q.due()] == [other]
    assert not HoldList(tmp_path).hold(QID)
    assert HoldList(tmp_path).release(QID)
    assert {queue_id(e) for e in q.due()} == {f"{QID}-3", other}


async def test_a_retry_keeps_the_queue_id(tmp_path):
    async def busy(sender, recipients, content, **kwargs):
        return Outcome(pending=list(recipients), message="421 4.3.2 busy")

    q = make_queue(tmp_path, busy)
    first = await q.enqueue("a@local.test", ["x@example.test"], b"Subject: s\r\n\r\nb\r\n")
    assert await q.run_once() == 1
    [retry] = q.spool.list()
    assert retry.id != first and queue_id(retry) == first
    assert retry.envelope.attributes["next_attempt"] > time.time()
