"""Spool workers against a real spool: hand-off, retries, the error repository, one worker per id."""

from __future__ import annotations

import time

import trio

from chainmail.mailet.spooler import MailSpooler

from .helpers import Record, Slow, build, container_xml, mail


def spooler(stores, context, processors: str, **kw) -> MailSpooler:
    engine = build(container_xml(processors), context)
    kw.setdefault("retry_delay", 0)
    kw.setdefault("poll_interval", 0.02)
    return MailSpooler(stores.spool, engine, context, **kw)


async def test_processed_mail_leaves_the_spool_after_its_outputs_are_spooled(stores, context):
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="SendBack">'
                                 '<state>two</state></mailet></processor>'
                                 '<processor state="two"><mailet match="All" class="Null"/></processor>')
    msg_id = await context.commit(mail())
    assert await s.process(msg_id)
    [entry] = stores.spool.list()
    assert entry.id != msg_id and entry.envelope.state == "two"
    assert entry.envelope.attributes["sent_by_mailet"] is True
    assert entry.envelope.attributes["chainmail.hops"] == 1
    with stores.spool.open_body(entry.id) as fh:
        assert fh.read() == mail().content


async def test_failing_mail_is_retried_then_stored_in_the_error_repository(stores, context):
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="Crash">'
                                 '<onMailetException>propagate</onMailetException></mailet></processor>')
    original = mail(["a@local.test", "b@local.test"])
    msg_id = await context.commit(original)
    for attempt in range(1, 5):
        assert await s.process(msg_id)
        [entry] = stores.spool.list()
        env = entry.envelope
        assert (env.error_count, env.state, env.recipients) == (attempt, "root", original.recipients)
        assert "crash test" in env.attributes["chainmail.error_message"]
        msg_id = entry.id
    assert await s.process(msg_id)
    assert stores.spool.ids() == []
    repo = stores.repositories.get("file://var/mail/error/")
    [info] = repo.list()
    assert info.error_message.startswith("processing failed 5 times; last error: PropagatedError")
    assert info.recipients == ("a@local.test", "b@local.test")


async def test_retry_waits_for_its_delay(stores, context):
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="Crash">'
                                 '<onMailetException>propagate</onMailetException></mailet></processor>',
                retry_delay=60)
    await s.process(await context.commit(mail()))
    [entry] = stores.spool.list()
    assert entry.envelope.attributes["chainmail.retry_at"] > time.time() + 50
    assert not await s.process(entry.id)         # not yet: left alone
    assert [e.id for e in stores.spool.list()] == [entry.id]


async def test_workers_run_concurrently_but_never_two_on_one_mail(stores, context):
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="Slow">'
                                 '<delay>0.03</delay></mailet>'
                                 '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>'
                                 '</processor>', threads=4)
    for _ in range(12):
        await context.commit(mail())
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        with trio.fail_after(10):
            while stores.spool.ids():
                await trio.sleep(0.02)
        start = trio.current_time()
        await s.stop()
        assert trio.current_time() - start < 1
    assert Slow.overlap == 0 and Slow.calls == 12 and len(Record.seen) == 12
    assert s.processed == 12


async def test_new_mail_is_noticed_and_zero_threads_leaves_mail_spooled(stores, context):
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="Null"/></processor>',
                threads=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        await context.commit(mail())
        await trio.sleep(0.1)
        assert len(stores.spool.ids()) == 1
        await s.stop()


async def test_mail_committed_in_this_process_starts_at_once(stores, context):
    """The spool's commit listener hands a committed mail (as the SMTP and LMTP servers
    commit it) to a worker at once: the next listing is a minute away."""
    from chainmail.store.spool import Envelope
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="Record"/>'
                                 '<mailet match="All" class="Null"/></processor>', poll_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        await trio.sleep(0.05)                       # the first listing is done
        for n in range(3):
            writer = stores.spool.open_writer()
            writer.write(b"Subject: fresh\r\n\r\nbody\r\n")
            await writer.commit(Envelope(sender="a@remote.test", recipients=[f"u{n}@local.test"]))
        with trio.fail_after(2):
            while stores.spool.ids():
                await trio.sleep(0.01)
        await s.stop()
    assert sorted(r for _, r in Record.seen) == [("u0@local.test",), ("u1@local.test",), ("u2@local.test",)]


async def test_a_flood_of_commits_falls_back_to_a_listing(stores, context, monkeypatch):
    """Past MAX_FRESH ids between two dispatches, the spooler lists the spool instead of
    keeping every id: memory stays bounded and nothing is missed."""
    import chainmail.mailet.spooler as spooler_module
    monkeypatch.setattr(spooler_module, "MAX_FRESH", 2)
    s = spooler(stores, context, '<processor state="root"><mailet match="All" class="Null"/></processor>',
                poll_interval=60)
    for _ in range(5):
        await context.commit(mail())       # no dispatcher yet: ids pile up, then a rescan
    assert len(s._fresh) <= 2
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        with trio.fail_after(2):
            while stores.spool.ids():
                await trio.sleep(0.01)
        await s.stop()
    assert s.processed == 5
