"""The durable outgoing queue: retries on the delayTime schedule, bounces, nothing lost."""

from __future__ import annotations

import random
import time

import pytest

from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.delivery import Outcome
from chainmail.remote.dns import DnsService, DnsServiceConfig
from chainmail.remote.queue import (ATTR_LAST_ERROR, ATTR_PRIORITY, ATTR_RETRY_COUNT, OutgoingQueue,
                                    queue_priority)
from chainmail.remote.slots import PrioritySlots
from chainmail.store.spool import DirectorySpool

from .fakedns import FakeDns, fake_dns
from .peers import Peer, start_peer

MESSAGE = b"Subject: queued\r\n\r\nbody\r\n"


def make_queue(tmp_path, dns_port: int, smtp_port: int, bounces: list, **params) -> OutgoingQueue:
    params = {"mail.smtp.port": str(smtp_port), "timeout": "2000", "connectiontimeout": "2000",
              **params}
    config = RemoteDeliveryConfig.from_params(params)
    svc = DnsService(DnsServiceConfig(servers=(("127.0.0.1", dns_port),), autodiscover=False,
                                      timeout=1.0), rng=random.Random(5))

    async def bounce(b):
        bounces.append(b)

    return OutgoingQueue(DirectorySpool(tmp_path / "outgoing"), config, svc, bounce=bounce)


def mx() -> FakeDns:
    return FakeDns().add("example.test", "MX", (10, "mx.example.test")).add("mx.example.test", "A", "127.0.0.1")


async def test_delivered_and_removed(nursery, tmp_path):
    peer = await start_peer(nursery, Peer())
    bounces: list = []
    async with fake_dns(mx()) as dns:
        q = make_queue(tmp_path, dns.port, peer.port, bounces)
        await q.enqueue("a@local.test", ["x@example.test"], MESSAGE, name="m1-to-example.test")
        # durable: another instance on the same directory sees it
        assert len(DirectorySpool(tmp_path / "outgoing").list()) == 1
        assert await q.run_once() == 1
    assert b"DATA:" + MESSAGE in peer.received
    assert q.spool.list() == [] and bounces == []


async def test_retries_on_schedule_then_bounce(nursery, tmp_path):
    peer = await start_peer(nursery, Peer(greeting=b"421 4.3.2 busy\r\n"))
    bounces: list = []
    async with fake_dns(mx()) as dns:
        q = make_queue(tmp_path, dns.port, peer.port, bounces, delayTime="10s, 20s", maxRetries="2")
        await q.enqueue("a@local.test", ["x@example.test"], MESSAGE)
        now = time.time()
        assert await q.run_once(now) == 1
        [entry] = q.spool.list()
        attrs = entry.envelope.attributes
        assert attrs[ATTR_RETRY_COUNT] == 1 and "421" in attrs[ATTR_LAST_ERROR]
        assert 9 <= attrs["next_attempt"] - now <= 12
        assert await q.run_once(now) == 0              # not due yet
        assert await q.run_once(now + 11) == 1
        [entry] = q.spool.list()
        assert entry.envelope.attributes[ATTR_RETRY_COUNT] == 2
        assert 19 <= entry.envelope.attributes["next_attempt"] - now <= 23
        assert await q.run_once(now + 100) == 1        # third attempt = maxRetries + 1
    assert q.spool.list() == []
    [b] = bounces
    assert b.too_many_retries and b.content == MESSAGE
    assert b.recipients["x@example.test"].startswith("Too many retries failure. Bouncing after 2 retries.")
    assert sum(1 for r in peer.received if r.startswith(b"EHLO")) == 0   # refused at greeting


async def test_partial_success_bounces_only_the_refused(nursery, tmp_path):
    peer = await start_peer(nursery, Peer(replies={
        "RCPT": lambda line: b"550 5.1.1 unknown\r\n" if b"bad@" in line else b"250 OK\r\n"}))
    bounces: list = []
    async with fake_dns(mx()) as dns:
        q = make_queue(tmp_path, dns.port, peer.port, bounces, sendpartial="true")
        await q.enqueue("a@local.test", ["ok@example.test", "bad@example.test"], MESSAGE)
        await q.run_once()
    [b] = bounces
    assert list(b.recipients) == ["bad@example.test"] and not b.too_many_retries
    assert b.outcome.delivered == ["ok@example.test"]
    assert q.spool.list() == []


async def test_only_pending_recipients_are_requeued(tmp_path):
    async def fake_deliver(sender, recipients, content, **kw):
        return Outcome(delivered=["a@x.test"], failed={"b@x.test": "550 no"}, pending=["c@x.test"],
                       message="452 later")

    bounces: list = []
    q = make_queue(tmp_path, 9, 9, bounces, delayTime="1s")
    q.deliver_fn = fake_deliver
    await q.enqueue("s@l.test", ["a@x.test", "b@x.test", "c@x.test"], MESSAGE)
    await q.run_once()
    [entry] = q.spool.list()
    assert entry.envelope.recipients == ["c@x.test"]
    assert list(bounces[0].recipients) == ["b@x.test"]


async def test_failed_bounce_keeps_the_entry(tmp_path):
    async def fake_deliver(sender, recipients, content, **kw):
        return Outcome(failed={r: "550 no" for r in recipients})

    async def broken_bounce(b):
        raise OSError("disk full")

    q = make_queue(tmp_path, 9, 9, [])
    q.bounce = broken_bounce
    q.deliver_fn = fake_deliver
    msg_id = await q.enqueue("s@l.test", ["a@x.test"], MESSAGE)
    await q.run_once()
    assert [e.id for e in q.spool.list()] == [msg_id]   # still there: nothing lost


@pytest.mark.parametrize("count", [3])
async def test_parallel_runs(nursery, tmp_path, count):
    peer = await start_peer(nursery, Peer())
    bounces: list = []
    async with fake_dns(mx()) as dns:
        q = make_queue(tmp_path, dns.port, peer.port, bounces)
        for i in range(count):
            await q.enqueue("a@local.test", [f"u{i}@example.test"], MESSAGE)
        assert await q.run_once() == count
    assert q.spool.list() == [] and bounces == []
    assert sum(1 for r in peer.received if r.startswith(b"DATA:")) == count


async def test_run_loop_delivers_what_is_queued(nursery, tmp_path):
    import trio

    peer = await start_peer(nursery, Peer())
    bounces: list = []
    async with fake_dns(mx()) as dns:
        q = make_queue(tmp_path, dns.port, peer.port, bounces)
        async with trio.open_nursery() as inner:
            await inner.start(lambda task_status: q.run(poll_interval=30, task_status=task_status))
            await q.enqueue("a@local.test", ["x@example.test"], MESSAGE)   # wakes the loop
            with trio.fail_after(5):
                while q.spool.list():
                    await trio.sleep(0.02)
            inner.cancel_scope.cancel()
    assert any(r.startswith(b"DATA:") for r in peer.received)


class Gate:
    """A scripted deliver() that records concurrency per domain and waits to be released."""

    def __init__(self, hold: set[str] = frozenset()):
        import trio
        self.hold = set(hold)
        self.release = trio.Event()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.done: list[str] = []
        self.kwargs: list[dict] = []

    async def __call__(self, sender, recipients, content, **kw):
        import trio
        domain = recipients[0].rpartition("@")[2]
        self.kwargs.append(kw)
        self.active[domain] = self.active.get(domain, 0) + 1
        self.peak[domain] = max(self.peak.get(domain, 0), self.active[domain])
        try:
            if domain in self.hold:
                await self.release.wait()
            else:
                await trio.sleep(0.01)
        finally:
            self.active[domain] -= 1
        self.done.extend(recipients)
        return Outcome(delivered=list(recipients), remote_mta=f"mx.{domain}")


async def test_per_destination_limit_and_a_stalled_domain_does_not_block_others(tmp_path):
    import trio
    gate = Gate(hold={"slow.test"})
    q = make_queue(tmp_path, 9, 9, [])
    q.deliver_fn, q.per_destination = gate, 2
    for i in range(6):
        await q.enqueue("s@l.test", [f"u{i}@slow.test"], MESSAGE)
    for i in range(6):
        await q.enqueue("s@l.test", [f"u{i}@fast.test"], MESSAGE)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: q.run(poll_interval=0.05, task_status=task_status))
        with trio.fail_after(5):    # fast.test is served while slow.test hangs
            while sum(1 for r in gate.done if r.endswith("@fast.test")) < 6:
                await trio.sleep(0.01)
        assert gate.active.get("slow.test") == 2          # two workers, both stuck
        gate.release.set()
        with trio.fail_after(5):
            while q.spool.list():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert gate.peak == {"slow.test": 2, "fast.test": 2}


async def test_envelope_parameters_reach_the_delivery(tmp_path):
    gate = Gate()
    q = make_queue(tmp_path, 9, 9, [], usePriority="true")
    q.deliver_fn = gate
    await q.enqueue("s@l.test", ["a@x.test", "b@x.test"], MESSAGE,
                    mail_params={"RET": "HDRS", "REQUIRETLS": None, "MT-PRIORITY": "3"},
                    rcpt_params={"b@x.test": {"NOTIFY": "SUCCESS"}})
    await q.run_once()
    [kw] = gate.kwargs
    assert kw["mail_params"] == {"RET": "HDRS", "REQUIRETLS": None, "MT-PRIORITY": "3"}
    assert kw["rcpt_params"] == {"b@x.test": {"NOTIFY": "SUCCESS"}}
    assert kw["require_tls"] is True and kw["priority"] == 3


async def test_flush_request_makes_waiting_entries_due(tmp_path):
    from chainmail.remote.control import request_flush
    gate = Gate()
    q = make_queue(tmp_path, 9, 9, [])
    q.deliver_fn = gate
    later = time.time() + 3600
    await q.enqueue("s@l.test", ["a@one.test"], MESSAGE, next_attempt=later)
    await q.enqueue("s@l.test", ["b@two.test"], MESSAGE, next_attempt=later)
    assert await q.run_once() == 0
    request_flush(q.spool.root, "two.test")
    assert await q.run_once() == 1 and gate.done == ["b@two.test"]
    assert await q.run_once() == 0                     # the request is spent
    request_flush(q.spool.root)
    assert await q.run_once() == 1 and gate.done == ["b@two.test", "a@one.test"]


async def test_entry_removed_during_its_attempt_is_neither_retried_nor_bounced(tmp_path):
    async def fake_deliver(sender, recipients, content, **kw):
        other = DirectorySpool(q.spool.root)   # `chainmail queue remove`: another process
        [entry] = other.list()
        other.remove(entry.id)
        return Outcome(pending=list(recipients), message="421 busy")

    bounces: list = []
    q = make_queue(tmp_path, 9, 9, bounces)
    q.deliver_fn = fake_deliver
    await q.enqueue("s@l.test", ["a@x.test"], MESSAGE)
    await q.run_once()
    assert q.spool.list() == [] and bounces == []


async def _order_tried(tmp_path, **params) -> list[str]:
    """Queue six mails of different priorities for one destination (one worker) and return
    the order in which they were tried."""
    gate = Gate()
    q = make_queue(tmp_path, 9, 9, [], **params)
    q.deliver_fn, q.per_destination = gate, 1
    await q.enqueue("s@l.test", ["normal@x.test"], MESSAGE)
    await q.enqueue("s@l.test", ["low@x.test"], MESSAGE, attributes={ATTR_PRIORITY: 1})
    await q.enqueue("s@l.test", ["mt-negative@x.test"], MESSAGE, mail_params={"MT-PRIORITY": "-4"})
    await q.enqueue("s@l.test", ["high@x.test"], MESSAGE, attributes={ATTR_PRIORITY: 9})
    await q.enqueue("s@l.test", ["mt-seven@x.test"], MESSAGE, mail_params={"MT-PRIORITY": "7"})
    await q.enqueue("s@l.test", ["normal-later@x.test"], MESSAGE)
    await q.run_once()
    return gate.done


async def test_use_priority_tries_higher_priority_first(tmp_path):
    assert await _order_tried(tmp_path, usePriority="true") == [
        "high@x.test", "mt-seven@x.test", "normal@x.test", "normal-later@x.test",
        "low@x.test", "mt-negative@x.test"]


async def test_without_use_priority_queue_order(tmp_path):
    assert await _order_tried(tmp_path) == [
        "normal@x.test", "low@x.test", "mt-negative@x.test", "high@x.test", "mt-seven@x.test",
        "normal-later@x.test"]


@pytest.mark.parametrize("use_priority, after", [("true", 1), ("false", 9)])
async def test_a_retry_drops_to_low_priority_with_use_priority(tmp_path, use_priority, after):
    async def fake_deliver(sender, recipients, content, **kw):
        return Outcome(pending=list(recipients), message="451 later")

    q = make_queue(tmp_path, 9, 9, [], usePriority=use_priority, delayTime="1s")
    q.deliver_fn = fake_deliver
    await q.enqueue("s@l.test", ["a@x.test"], MESSAGE, attributes={ATTR_PRIORITY: 9},
                    mail_params={"MT-PRIORITY": "6"})
    await q.run_once()
    [entry] = q.spool.list()
    assert entry.envelope.attributes[ATTR_PRIORITY] == after
    assert queue_priority(entry.envelope) == after
    assert entry.envelope.mail_params == {"MT-PRIORITY": "6"}   # still asked of the next server


@pytest.mark.parametrize("use_priority, expected", [
    ("true", ["hold@held.test", "h@high.test", "l@low.test"]),
    ("false", ["hold@held.test", "l@low.test", "h@high.test"]),
])
async def test_a_freed_attempt_slot_goes_to_the_highest_priority(tmp_path, use_priority, expected):
    """One attempt at a time (max_parallel 1): while held.test holds the slot, low.test
    waits for it, then high priority mail for another destination arrives.  With
    usePriority the freed slot goes to the high priority mail."""
    import trio
    gate = Gate(hold={"held.test"})
    q = make_queue(tmp_path, 9, 9, [], usePriority=use_priority)
    q.deliver_fn = gate
    q._slots = PrioritySlots(1)
    await q.enqueue("s@l.test", ["hold@held.test"], MESSAGE, attributes={ATTR_PRIORITY: 9})
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: q.run(poll_interval=0.05, task_status=task_status))
        with trio.fail_after(5):
            while gate.active.get("held.test") != 1:
                await trio.sleep(0.01)
        await q.enqueue("s@l.test", ["l@low.test"], MESSAGE, attributes={ATTR_PRIORITY: 1})
        with trio.fail_after(5):
            while q._slots.waiting < 1:
                await trio.sleep(0.01)
        await q.enqueue("s@l.test", ["h@high.test"], MESSAGE, attributes={ATTR_PRIORITY: 9})
        with trio.fail_after(5):
            while q._slots.waiting < 2:
                await trio.sleep(0.01)
        gate.release.set()
        with trio.fail_after(5):
            while q.spool.list():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert gate.done == expected
