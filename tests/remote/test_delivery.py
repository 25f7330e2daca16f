"""One delivery attempt: MX routing, failover, failure classification, gateways.

Everything is on loopback: a fake DNS server whose records all point at 127.0.0.x, and
scripted peers or a real chainmail server as the mail exchangers.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
from contextlib import contextmanager

import pytest
import trio
import trustme

from chainmail.remote import delivery
from chainmail.remote.client import client_tls_context
from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.delivery import PERMANENT, SUCCESS, TEMPORARY, deliver, targets_for
from chainmail.remote.dns import DnsService, DnsServiceConfig

from .fakedns import FakeDns, fake_dns
from .peers import Peer, ehlo, start_peer

MESSAGE = b"Subject: out\r\n\r\nhello\r\n"


def setup(dns: FakeDns, port: int, **params) -> tuple[RemoteDeliveryConfig, DnsService]:
    params = {"mail.smtp.port": str(port), "heloName": "out.test", "timeout": "2000",
              "connectiontimeout": "2000", **params}
    config = RemoteDeliveryConfig.from_params(params)
    svc = DnsService(DnsServiceConfig(servers=(("127.0.0.1", dns.port),), autodiscover=False,
                                      timeout=1.0), rng=random.Random(3))
    return config, svc


@contextmanager
def patch_targets(targets):
    """Route to ``targets`` as given (peers on several ports, which MX records cannot say)."""
    original = delivery.targets_for

    async def fixed(*args, **kwargs):
        return list(targets)

    delivery.targets_for = fixed
    try:
        yield
    finally:
        delivery.targets_for = original


def mx_records(*mx: tuple[int, str, str]) -> FakeDns:
    dns = FakeDns()
    for pref, name, ip in mx:
        dns.add("example.test", "MX", (pref, name)).add(name, "A", ip)
    return dns


async def test_failover_to_the_second_mx(nursery):
    peer = await start_peer(nursery, Peer())
    # mx1 resolves to 127.0.0.2, where nothing listens: connection refused
    dns = mx_records((10, "mx1.example.test", "127.0.0.2"), (20, "mx2.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        out = await deliver("a@local.test", ["x@example.test", "y@example.test"], MESSAGE,
                            config=config, dns=svc)
    assert out.kind == SUCCESS and out.delivered == ["x@example.test", "y@example.test"]
    assert out.remote_mta == "mx2.example.test"
    assert b"HELO out.test" in peer.received and b"DATA:" + MESSAGE in peer.received


async def test_a_fallback_to_a_real_chainmail(chainmail):
    dns = FakeDns().add("example.test", "A", "127.0.0.1")
    async with fake_dns(dns):
        config, svc = setup(dns, chainmail.port)
        out = await deliver("a@local.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == SUCCESS and out.delivered == ["x@example.test"]
    assert ("example.test", "MX") in dns.queries
    [msg] = chainmail.queued()
    assert msg.envelope.sender == "a@local.test" and msg.envelope.recipients == ["x@example.test"]


async def test_null_mx_is_permanent():
    dns = FakeDns().add("example.test", "MX", (0, "."))
    async with fake_dns(dns):
        config, svc = setup(dns, 25)
        out = await deliver("a@local.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == PERMANENT and "null MX" in out.failed["x@example.test"]


async def test_no_dns_entries_retried_max_dns_problem_retries_times():
    async with fake_dns() as dns:
        config, svc = setup(dns, 25, maxDnsProblemRetries="2")
        out = await deliver("a@local.test", ["x@nowhere.test"], MESSAGE, config=config, dns=svc)
        assert out.kind == TEMPORARY and out.pending == ["x@nowhere.test"]
        assert "There are no DNS entries for the hostname nowhere.test." in out.message
        out = await deliver("a@local.test", ["x@nowhere.test"], MESSAGE, config=config, dns=svc,
                            retry_count=2)
        assert out.kind == PERMANENT
        config, svc = setup(dns, 25)   # maxDnsProblemRetries 0: permanent at once
        assert (await deliver("a@l.test", ["x@nowhere.test"], MESSAGE, config=config, dns=svc)).kind == PERMANENT


async def test_dns_timeout_is_temporary():
    dns = FakeDns(silent={"example.test"})
    async with fake_dns(dns):
        config, svc = setup(dns, 25)
        svc.resolver.lifetime = svc.resolver.timeout = 0.3
        out = await deliver("a@local.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == TEMPORARY


@pytest.mark.parametrize("greeting,kind", [(b"421 4.3.2 busy\r\n", TEMPORARY),
                                            (b"554 5.7.1 no\r\n", PERMANENT)])
async def test_greeting_refusal(nursery, greeting, kind):
    peer = await start_peer(nursery, Peer(greeting=greeting))
    # a refusal ends the attempt: the second MX (the same peer) is not tried
    dns = mx_records((10, "mx1.example.test", "127.0.0.1"), (20, "mx2.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        out = await deliver("a@local.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == kind and out.code == int(greeting[:3])
    assert out.delivered == []


def one_refused(line: bytes) -> bytes:
    return b"550 5.1.1 unknown user\r\n" if b"bad@" in line else b"250 OK\r\n"


async def test_one_recipient_refused_with_sendpartial(nursery):
    peer = await start_peer(nursery, Peer(replies={"RCPT": one_refused}))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port, sendpartial="true")
        out = await deliver("a@local.test", ["ok@example.test", "bad@example.test"], MESSAGE,
                            config=config, dns=svc)
    assert out.delivered == ["ok@example.test"]
    assert list(out.failed) == ["bad@example.test"] and "5.1.1" in out.failed["bad@example.test"]
    assert out.pending == [] and out.kind == PERMANENT and out.code == 550


async def test_one_recipient_refused_without_sendpartial(nursery):
    peer = await start_peer(nursery, Peer(replies={"RCPT": one_refused}))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        out = await deliver("a@local.test", ["ok@example.test", "bad@example.test"], MESSAGE,
                            config=config, dns=svc)
    assert out.delivered == [] and list(out.failed) == ["bad@example.test"]
    assert out.pending == ["ok@example.test"] and out.kind == TEMPORARY
    assert not any(r.startswith(b"DATA:") for r in peer.received)


async def test_temporarily_refused_recipient_is_pending(nursery):
    peer = await start_peer(nursery, Peer(replies={
        "RCPT": lambda line: b"452 4.2.2 mailbox full\r\n" if b"full@" in line else b"250 OK\r\n"}))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port, sendpartial="true")
        out = await deliver("a@l.test", ["ok@example.test", "full@example.test"], MESSAGE,
                            config=config, dns=svc)
    assert out.delivered == ["ok@example.test"] and out.pending == ["full@example.test"]
    assert out.kind == TEMPORARY


@pytest.mark.parametrize("reply,kind", [(b"451 4.3.0 later\r\n", TEMPORARY), (b"554 5.6.0 no\r\n", PERMANENT)])
async def test_data_refused(nursery, reply, kind):
    peer = await start_peer(nursery, Peer(replies={"DATA": reply}))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == kind and out.delivered == []


async def test_every_address_refusing_connections_is_temporary():
    dns = mx_records((10, "mx1.example.test", "127.0.0.2"), (20, "mx2.example.test", "127.0.0.3"))
    dns.add("mx2.example.test", "A", "127.0.0.4")
    async with fake_dns(dns):
        config, svc = setup(dns, 9)
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == TEMPORARY and out.pending == ["x@example.test"]
    assert "127.0.0.4" in out.message   # the last address tried


async def test_stalled_mx_times_out(nursery):
    stalled = await start_peer(nursery, Peer(stall=True))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, stalled.port, timeout="300")
        with trio.fail_after(5):
            out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == TEMPORARY and "did not answer" in out.message


async def test_gateway_with_auth_never_asks_for_mx(nursery):
    ehlo = b"250-gw.test\r\n250-AUTH PLAIN\r\n250 PIPELINING\r\n"
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo}))
    async with fake_dns() as dns:
        config, svc = setup(dns, 25, gateway=f"127.0.0.1:{peer.port}", gatewayUsername="user",
                            gatewayPassword="secret")
        out = await deliver("a@l.test", ["x@example.test", "y@other.test"], MESSAGE,
                            config=config, dns=svc)
    assert out.kind == SUCCESS and out.delivered == ["x@example.test", "y@other.test"]
    assert dns.queries == []
    assert b"AUTH PLAIN AHVzZXIAc2VjcmV0" in peer.received


async def test_gateway_failover_in_order_without_auth(nursery):
    peer = await start_peer(nursery, Peer())
    async with fake_dns() as dns:
        config, svc = setup(dns, 25, gateway="127.0.0.2, 127.0.0.1", gatewayPort=str(peer.port),
                            loadBalancing="false")
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == SUCCESS and out.remote_mta == "127.0.0.1"
    assert not any(r.startswith(b"AUTH") for r in peer.received)


async def test_gateway_by_name_is_resolved_through_the_dns_service(nursery):
    peer = await start_peer(nursery, Peer())
    dns = FakeDns().add("smarthost.test", "A", "127.0.0.1")
    async with fake_dns(dns):
        config, svc = setup(dns, 25, gateway=f"smarthost.test:{peer.port}")
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == SUCCESS and ("smarthost.test", "A") in dns.queries


async def test_starttls_required_but_not_offered_is_temporary(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": b"250-mx\r\n250 PIPELINING\r\n"}))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port, **{"mail.smtp.starttls.required": "true"})
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc)
    assert out.kind == TEMPORARY and "STARTTLS" in out.message
    assert not any(r.startswith(b"MAIL") for r in peer.received)


# ------------------------------------------------------------------ REQUIRETLS (RFC 8689)

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def tls_peer(ca, name: str, *after_tls: str) -> Peer:
    """A peer offering STARTTLS with a certificate for ``name``, then ``after_tls``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return Peer(replies={"EHLO": ehlo("PIPELINING", "STARTTLS")}, tls=ctx,
                ehlo_tls=ehlo("PIPELINING", *after_tls))


def trusting(ca) -> ssl.SSLContext:
    ctx = client_tls_context()
    ca.configure_trust(ctx)
    return ctx


async def test_requiretls_skips_hosts_that_cannot_and_uses_one_that_can(nursery, ca):
    plain = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "REQUIRETLS")}))
    no_ext = await start_peer(nursery, tls_peer(ca, "mx2.example.test"))
    good = await start_peer(nursery, tls_peer(ca, "mx3.example.test", "REQUIRETLS"))
    dns = FakeDns()
    for pref, port in ((10, plain.port), (20, no_ext.port), (30, good.port)):
        dns.add("example.test", "MX", (pref, f"mx{pref // 10}.example.test"))
        dns.add(f"mx{pref // 10}.example.test", "A", "127.0.0.1")
    async with fake_dns(dns):
        config, svc = setup(dns, 25)
        ports = iter((plain.port, no_ext.port, good.port))
        targets = await targets_for("example.test", config, svc)
        routed = [dataclasses.replace(t, port=next(ports)) for t in targets]
        with patch_targets(routed):
            out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc,
                                tls_context=trusting(ca), require_tls=True)
    assert out.kind == SUCCESS and out.remote_mta == "mx3.example.test"
    assert b"MAIL FROM:<a@l.test> REQUIRETLS" in good.received
    assert not any(r.startswith(b"MAIL") for r in plain.received + no_ext.received)


async def test_requiretls_nowhere_is_permanent_5_7_30(nursery, ca):
    wrong_name = await start_peer(nursery, tls_peer(ca, "other.test", "REQUIRETLS"))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, wrong_name.port)
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc,
                            tls_context=trusting(ca), require_tls=True)
        assert out.kind == PERMANENT and "5.7.30" in out.failed["x@example.test"]
        assert "REQUIRETLS support required" in out.message and out.code == 550
        # certificate checks turned off cannot satisfy REQUIRETLS either
        config, svc = setup(dns, wrong_name.port, sslTrustAllCerts="true")
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc,
                            require_tls=True)
    assert out.kind == PERMANENT and "5.7.30" in out.message
    assert not any(r.startswith(b"MAIL") for r in wrong_name.received)


async def test_requiretls_with_an_unreachable_host_is_temporary(nursery):
    no_tls = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}))
    dns = mx_records((10, "mx1.example.test", "127.0.0.1"), (20, "mx2.example.test", "127.0.0.2"))
    async with fake_dns(dns):
        config, svc = setup(dns, no_tls.port)
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc,
                            require_tls=True)
    assert out.kind == TEMPORARY and out.pending == ["x@example.test"]


async def test_without_requiretls_nothing_changes(nursery, ca):
    peer = await start_peer(nursery, tls_peer(ca, "mx.example.test", "REQUIRETLS"))
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        out = await deliver("a@l.test", ["x@example.test"], MESSAGE, config=config, dns=svc,
                            tls_context=trusting(ca))
    assert out.kind == SUCCESS
    assert b"STARTTLS" not in peer.received and b"MAIL FROM:<a@l.test>" in peer.received


# ------------------------------------------------------------------ DSN and MT-PRIORITY

DSN_MAIL = {"RET": "HDRS", "ENVID": "QQ314159+2Bx", "SIZE": "99", "BODY": "8BITMIME"}
DSN_RCPT = {"x@example.test": {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;x+2B@example.test"},
            "y@example.test": {"NOTIFY": "FAILURE"}}


async def send_with_params(peer, **kwargs):
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        return await deliver("a@l.test", ["x@example.test", "y@example.test"], MESSAGE,
                             config=config, dns=svc, **kwargs)


async def test_dsn_parameters_when_offered(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "DSN", "MT-PRIORITY")}))
    out = await send_with_params(peer, mail_params=DSN_MAIL, rcpt_params=DSN_RCPT, priority=3)
    assert out.kind == SUCCESS and out.relayed == []
    assert b"MAIL FROM:<a@l.test> RET=HDRS ENVID=QQ314159+2Bx MT-PRIORITY=3" in peer.received
    assert b"RCPT TO:<x@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2B@example.test" in peer.received
    assert b"RCPT TO:<y@example.test> NOTIFY=FAILURE" in peer.received


async def test_no_dsn_parameters_without_dsn_and_relayed_reported(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}))
    out = await send_with_params(peer, mail_params=DSN_MAIL, rcpt_params=DSN_RCPT, priority=-4)
    assert out.kind == SUCCESS and out.relayed == ["x@example.test"]
    assert b"MAIL FROM:<a@l.test>" in peer.received
    assert b"RCPT TO:<x@example.test>" in peer.received and b"RCPT TO:<y@example.test>" in peer.received


async def test_mt_priority_only_when_offered(nursery):
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("MT-PRIORITY")}))
    await send_with_params(peer, priority=-12)
    assert b"MAIL FROM:<a@l.test> MT-PRIORITY=-9" in peer.received
    peer = await start_peer(nursery, Peer(replies={"EHLO": ehlo("PIPELINING", "DSN")}))
    out = await send_with_params(peer, priority=5)
    assert out.kind == SUCCESS and b"MAIL FROM:<a@l.test>" in peer.received


async def test_requiretls_connection_reused_over_tls(nursery, ca):
    from chainmail.remote.pool import ConnectionPool
    peer = await start_peer(nursery, tls_peer(ca, "mx.example.test", "REQUIRETLS"))
    pool = ConnectionPool()
    dns = mx_records((10, "mx.example.test", "127.0.0.1"))
    async with fake_dns(dns):
        config, svc = setup(dns, peer.port)
        for rcpt in ("x@example.test", "y@example.test"):
            out = await deliver("a@l.test", [rcpt], MESSAGE, config=config, dns=svc,
                                tls_context=trusting(ca), require_tls=True, pool=pool)
            assert out.kind == SUCCESS
    assert peer.connections == 1 and peer.received.count(b"STARTTLS") == 1
    assert peer.received.count(b"MAIL FROM:<a@l.test> REQUIRETLS") == 2
    await pool.aclose()
