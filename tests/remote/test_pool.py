"""Connection reuse: idle connections kept per target, replaced when dead, expired when idle."""

from __future__ import annotations

from chainmail.remote.client import SmtpClient
from chainmail.remote.delivery import SUCCESS, TEMPORARY, deliver
from chainmail.remote.pool import ConnectionPool, PoolKey

from .fakedns import fake_dns
from .peers import Peer, ehlo, start_peer
from .test_delivery import MESSAGE, mx_records
from .test_delivery import setup as configure

ESMTP = ehlo("PIPELINING", "8BITMIME")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def send_twice(peer, pool, **params):
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = configure(dns, peer.port, **params)
        first = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc, pool=pool)
        second = await deliver("a@l.test", ["y@example.test"], MESSAGE, config=config, dns=svc, pool=pool)
    return first, second


async def test_two_mails_over_one_connection(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    pool = ConnectionPool()
    first, second = await send_twice(peer, pool)
    assert first.kind == second.kind == SUCCESS and second.delivered == ["y@example.test"]
    assert peer.connections == 1 and len(pool) == 1
    assert b"QUIT" not in peer.received
    assert sum(r.startswith(b"DATA:") for r in peer.received) == 2
    await pool.aclose()
    assert peer.received[-1] == b"QUIT" and len(pool) == 0


async def test_two_mails_to_a_real_chainmail_over_one_connection(chainmail):
    pool = ConnectionPool()
    first, second = await send_twice(chainmail, pool)
    assert first.kind == second.kind == SUCCESS and len(pool) == 1
    await pool.aclose()
    assert sorted(m.envelope.recipients[0] for m in chainmail.queued()) == ["x@example.test", "y@example.test"]


async def test_domains_sharing_an_exchanger_share_its_connection(nursery):
    """The pool is keyed by the session's shape, not by the recipient domain: a second
    domain hosted on the same MX reuses the first domain's connection."""
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    pool = ConnectionPool()
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    dns.add("other.test", "MX", (10, "mx.example.test"))
    async with fake_dns(dns):
        config, svc = configure(dns, peer.port)
        first = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc, pool=pool)
        second = await deliver("a@l.test", ["y@other.test"], MESSAGE, config=config, dns=svc, pool=pool)
    assert first.kind == second.kind == SUCCESS
    assert peer.connections == 1 and len(pool) == 1
    await pool.aclose()


async def test_without_a_pool_every_mail_quits(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    await send_twice(peer, None)
    assert peer.connections == 2 and peer.received.count(b"QUIT") == 2


async def test_connection_dead_before_the_first_reply_is_replaced_once(nursery):
    mails = []

    def mail(line):
        mails.append(line)
        return None if len(mails) == 2 else b"250 OK\r\n"   # dies on the reused connection

    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP, "MAIL": mail}))
    pool = ConnectionPool()
    first, second = await send_twice(peer, pool)
    assert first.kind == second.kind == SUCCESS and second.remote_mta == "mx.example.test"
    assert peer.connections == 2 and len(mails) == 3
    await pool.aclose()


async def test_idle_timeout_421_is_noticed_before_reuse(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    pool = ConnectionPool()
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = configure(dns, peer.port)
        await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc, pool=pool)
        await peer.kick()
        out = await deliver("a@l.test", ["y@example.test"], MESSAGE, config=config, dns=svc, pool=pool)
    assert out.kind == SUCCESS and peer.connections == 2
    assert sum(r.startswith(b"MAIL") for r in peer.received) == 2   # nothing sent on the dead one
    await pool.aclose()


async def test_421_to_mail_on_a_reused_connection_is_replaced(nursery):
    mails = []

    def mail(line):
        mails.append(line)
        return b"421 4.7.0 too many messages\r\n" if len(mails) == 2 else b"250 OK\r\n"

    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo(), "MAIL": mail}))
    pool = ConnectionPool()
    first, second = await send_twice(peer, pool)
    assert second.kind == SUCCESS and peer.connections == 2
    await pool.aclose()


async def test_failure_after_a_reply_is_not_retried(nursery):
    rcpts = []

    def rcpt(line):
        rcpts.append(line)
        return None if len(rcpts) == 2 else b"250 OK\r\n"

    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo(), "RCPT": rcpt}))
    pool = ConnectionPool()
    first, second = await send_twice(peer, pool)
    assert first.kind == SUCCESS and second.kind == TEMPORARY
    assert peer.connections == 1 and len(pool) == 0


async def test_connection_closed_after_an_error(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP, "DATA": b"451 4.3.0 later\r\n"}))
    pool = ConnectionPool()
    first, second = await send_twice(peer, pool)
    assert first.kind == TEMPORARY and peer.connections == 2 and len(pool) == 0
    assert peer.received.count(b"QUIT") == 2


async def test_max_messages_per_connection(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    pool = ConnectionPool(max_messages=2)
    await send_twice(peer, pool)
    assert len(pool) == 0 and peer.received.count(b"QUIT") == 1
    await send_twice(peer, pool)
    assert peer.connections == 2
    await pool.aclose()


async def test_sessions_of_different_shape_are_not_shared(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    pool = ConnectionPool()
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        for helo in ("one.test", "two.test"):
            config, svc = configure(dns, peer.port, heloName=helo)
            await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc, pool=pool)
    assert peer.connections == 2 and len(pool) == 2
    await pool.aclose()


async def test_expire_quits_idle_connections(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ESMTP}))
    clock = Clock()
    pool = ConnectionPool(idle_timeout=10, clock=clock)
    key = PoolKey("127.0.0.1", peer.port, False, "peer.test")
    for _ in range(2):
        await pool.give_back(key, await SmtpClient.connect("127.0.0.1", peer.port, timeout=5))
    clock.now += 5
    assert await pool.expire() == 0 and len(pool) == 2
    fresh = await pool.take(key)
    await pool.give_back(key, fresh)
    clock.now += 6
    assert await pool.expire() == 1 and len(pool) == 1
    assert peer.received.count(b"QUIT") == 1
    clock.now += 20
    assert await pool.take(key) is None       # too old: QUIT, not handed out
    assert peer.received.count(b"QUIT") == 2 and len(pool) == 0
    await pool.aclose()
    await pool.give_back(key, await SmtpClient.connect("127.0.0.1", peer.port, timeout=5))
    assert len(pool) == 0 and peer.received.count(b"QUIT") == 3   # closed pool: QUIT at once
