"""RFC 8689 §5: ``TLS-Required: No`` in the header relaxes the recipient domain's DANE and
MTA-STS requirements to opportunistic TLS; REQUIRETLS and the operator's own requirement
still hold.  The loopback world of test_tls_policy.py: a validating fake DNS, an MTA-STS
policy server and scripted exchangers with throwaway CAs."""

from __future__ import annotations

import logging

from chainmail.remote.delivery import SUCCESS, TEMPORARY, deliver
from chainmail.remote.tlspolicy import TlsPolicy, tls_required_no

from .peers import Peer, ehlo, start_peer_at
from .test_tls_policy import (  # noqa: F401 (fixtures)
    ENFORCE, ca, ca_file, dane_peer, issued, mails, mx, over_tls, policy_server, publish,
    service, settings, spki_sha256, stranger, sts_policy, sts_world, vdns,
)

RELAXED = b"Subject: out\r\nTLS-Required: No\r\n\r\nhello\r\n"


async def send(config, svc, content=RELAXED, policy=None, **kwargs):
    return await deliver("a@out.test", ["x@example.test"], content, config=config, dns=svc,
                         tls_policy=policy or TlsPolicy(config, svc), **kwargs)


def test_the_header_is_recognised():
    assert tls_required_no(RELAXED)
    assert tls_required_no(b"tls-required:no\r\n\r\n")
    assert tls_required_no(b"Subject: x\r\nTLS-Required:\r\n  No \r\n\r\nbody")      # folded
    assert not tls_required_no(b"Subject: x\r\n\r\nTLS-Required: No\r\n")         # the body
    assert not tls_required_no(b"TLS-Required: Yes\r\n\r\n")
    assert not tls_required_no(b"X-TLS-Required: No\r\n\r\n")
    assert not tls_required_no(b"TLS-Required: No thanks\r\n\r\n")


async def test_mta_sts_enforce_is_relaxed(nursery, vdns, ca, stranger, policy_server, ca_file,
                                          caplog):
    # mx0 is not in the policy and has a self-signed certificate: enforce would skip it
    mx0, mx1 = await sts_world(nursery, vdns, ca, stranger)
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    config = settings(mx0.port, caFile=ca_file)
    with caplog.at_level(logging.INFO, "chainmail.remote"):
        out = await send(config, svc, policy=sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == SUCCESS and out.remote_mta == "mx0.example.test"
    assert over_tls(mx0) and mx1.connections == 0          # still encrypted when offered
    assert "TLS-Required: No: the mta-sts policy of example.test is not applied" in caplog.text
    # without the header the same mail goes to mx1 only, verified
    out = await send(config, svc, b"Subject: out\r\n\r\nhello\r\n",
                     policy=sts_policy(config, svc, policy_server, ca_file))
    assert out.remote_mta == "mx1.example.test" and mails(mx0) == 1


async def test_mta_sts_enforce_without_starttls_goes_in_clear(nursery, vdns, ca, policy_server,
                                                               ca_file):
    plain = await start_peer_at(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}),
                                "127.0.0.3", 0)
    mx(vdns, (10, "mx1.example.test", "127.0.0.3"))
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    config = settings(plain.port, caFile=ca_file)
    out = await send(config, svc, policy=sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == SUCCESS and mails(plain) == 1


async def test_dane_mismatch_is_relaxed(nursery, vdns, stranger, ca):
    _, ctx = issued(stranger, "mx.example.test")
    other, _ = issued(ca, "mx.example.test")
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.add("_25._tcp.mx.example.test", "TLSA",
             f"3 1 1 {spki_sha256(other.cert_chain_pems[0].bytes())}")
    config = settings(peer.port, dnssec="true")
    out = await send(config, service(vdns), b"Subject: out\r\n\r\nhello\r\n")
    assert out.kind == TEMPORARY and mails(peer) == 0          # DANE holds without the header
    out = await send(config, service(vdns))
    assert out.kind == SUCCESS and over_tls(peer)


async def test_dane_lookup_failure_is_relaxed(nursery, vdns, stranger):
    _, ctx = issued(stranger, "mx.example.test")
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.servfail.add("_25._tcp.mx.example.test")
    out = await send(settings(peer.port, dnssec="true"), service(vdns))
    assert out.kind == SUCCESS and over_tls(peer)


async def test_the_operators_own_requirement_stays(nursery, vdns, ca, policy_server, ca_file):
    plain = await start_peer_at(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}),
                                "127.0.0.3", 0)
    mx(vdns, (10, "mx1.example.test", "127.0.0.3"))
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    config = settings(plain.port, caFile=ca_file, **{"mail.smtp.starttls.required": "true"})
    out = await send(config, svc, policy=sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == TEMPORARY and "STARTTLS" in out.message and mails(plain) == 0


async def test_requiretls_wins_over_the_header(nursery, vdns, stranger, caplog):
    _, ctx = issued(stranger, "mx.example.test")
    peer = await dane_peer(nursery, vdns, ctx)
    with caplog.at_level(logging.INFO, "chainmail.remote"):
        out = await send(settings(peer.port, startTLS="true"), service(vdns), require_tls=True)
    assert out.kind != SUCCESS and "5.7.30" in out.message and mails(peer) == 0
    assert "TLS-Required: No ignored for example.test: the mail asks for REQUIRETLS" in caplog.text
