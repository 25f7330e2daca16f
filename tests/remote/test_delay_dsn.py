"""RFC 3461 NOTIFY=DELAY: one "delayed" report when a mail is still undelivered after
``delayWarningTime``, from the outgoing queue, against a scripted MX answering 4xx."""

from __future__ import annotations

import time

import pytest

from chainmail.mailet.api import ATTR_ARRIVAL
from chainmail.remote.queue import ATTR_DELAY_NOTIFIED, ATTR_RETRY_COUNT, asks_for_delay

from .fakedns import fake_dns
from .peers import Peer, ehlo, start_peer
from .test_queue import MESSAGE, make_queue, mx

LATER = {"RCPT": b"451 4.2.1 mailbox busy, try later\r\n"}


def peer_451() -> Peer:
    return Peer(replies={"EHLO": ehlo("PIPELINING"), **LATER})


def test_asks_for_delay():
    assert asks_for_delay({"NOTIFY": "DELAY"}) and asks_for_delay({"notify": "failure,delay"})
    assert not asks_for_delay({"NOTIFY": "FAILURE"}) and not asks_for_delay({"NOTIFY": "NEVER"})
    assert not asks_for_delay({}) and not asks_for_delay(None)      # RFC 3461 §4.1 default


async def queue_with_notices(tmp_path, dns_port, smtp_port, **params):
    notices: list = []
    bounces: list = []
    q = make_queue(tmp_path, dns_port, smtp_port, bounces,
                   **{"delayTime": "1s", "maxRetries": "3", **params})

    async def delayed(notice):
        notices.append(notice)

    q.delayed = delayed
    return q, notices, bounces


async def test_one_delayed_report_once_the_time_has_passed(nursery, tmp_path):
    peer = await start_peer(nursery, peer_451())
    async with fake_dns(mx()) as dns:
        q, notices, bounces = await queue_with_notices(tmp_path, dns.port, peer.port,
                                                       delayWarningTime="1h")
        arrived = time.time() - 30 * 60                  # half an hour ago
        await q.enqueue("a@local.test", ["x@example.test", "y@example.test"], MESSAGE,
                        attributes={ATTR_ARRIVAL: arrived},
                        rcpt_params={"x@example.test": {"NOTIFY": "DELAY,FAILURE"}})
        assert await q.run_once() == 1
        assert notices == []                             # not late yet
        [entry] = q.spool.list()
        assert entry.envelope.attributes[ATTR_ARRIVAL] == arrived
        assert ATTR_DELAY_NOTIFIED not in entry.envelope.attributes
        # an hour and a bit after arrival: the next failure reports the delay
        q.config = _with(q.config, delay_warning_ms=20 * 60 * 1000)
        assert await q.run_once(time.time() + 5) == 1
        [notice] = notices
        assert list(notice.recipients) == ["x@example.test"]          # y did not ask
        assert "451 4.2.1" in notice.recipients["x@example.test"]
        assert notice.content == MESSAGE and notice.outcome.remote_mta == "mx.example.test"
        [entry] = q.spool.list()
        attrs = entry.envelope.attributes
        assert attrs[ATTR_RETRY_COUNT] == 2 and attrs[ATTR_DELAY_NOTIFIED] >= arrived
        # the retries after it report nothing more; the final failure is a bounce
        assert await q.run_once(time.time() + 5) == 1
        assert await q.run_once(time.time() + 5) == 1
    assert len(notices) == 1 and q.spool.list() == []
    [bounce] = bounces
    assert bounce.too_many_retries


@pytest.mark.parametrize("notify, warning, sender", [
    (None, "1s", "a@local.test"),               # no NOTIFY: failures only
    ("FAILURE", "1s", "a@local.test"),
    ("NEVER", "1s", "a@local.test"),
    ("DELAY", "0", "a@local.test"),             # turned off
    ("DELAY", "1s", ""),                        # never to the null sender
])
async def test_no_delayed_report(nursery, tmp_path, notify, warning, sender):
    peer = await start_peer(nursery, peer_451())
    async with fake_dns(mx()) as dns:
        q, notices, _ = await queue_with_notices(tmp_path, dns.port, peer.port,
                                                 delayWarningTime=warning)
        params = {"x@example.test": {"NOTIFY": notify}} if notify else None
        await q.enqueue(sender, ["x@example.test"], MESSAGE,
                        attributes={ATTR_ARRIVAL: time.time() - 3600}, rcpt_params=params)
        assert await q.run_once() == 1
        assert await q.run_once(time.time() + 5) == 1
    assert notices == []
    [entry] = q.spool.list()
    assert ATTR_DELAY_NOTIFIED not in entry.envelope.attributes


async def test_mail_without_arrival_counts_from_its_first_entry(nursery, tmp_path):
    peer = await start_peer(nursery, peer_451())
    async with fake_dns(mx()) as dns:
        q, notices, _ = await queue_with_notices(tmp_path, dns.port, peer.port,
                                                 delayWarningTime="500ms")
        await q.enqueue("a@local.test", ["x@example.test"], MESSAGE,
                        rcpt_params={"x@example.test": {"NOTIFY": "DELAY"}})
        [first] = q.spool.list()
        assert await q.run_once() == 1
        assert notices == []
        [entry] = q.spool.list()
        assert entry.envelope.attributes[ATTR_ARRIVAL] == first.queued_at
        time.sleep(0.6)
        assert await q.run_once(time.time() + 5) == 1
    assert len(notices) == 1


async def test_a_failing_report_keeps_the_entry(nursery, tmp_path):
    peer = await start_peer(nursery, peer_451())
    async with fake_dns(mx()) as dns:
        q, _, _ = await queue_with_notices(tmp_path, dns.port, peer.port, delayWarningTime="1s")

        async def broken(notice):
            raise OSError("disk full")

        q.delayed = broken
        msg_id = await q.enqueue("a@local.test", ["x@example.test"], MESSAGE,
                                 attributes={ATTR_ARRIVAL: time.time() - 60},
                                 rcpt_params={"x@example.test": {"NOTIFY": "DELAY"}})
        await q.run_once()
    assert [e.id for e in q.spool.list()] == [msg_id]    # tried again later, report and all


def _with(config, **changes):
    import dataclasses
    return dataclasses.replace(config, **changes)
