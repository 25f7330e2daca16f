"""Outgoing TLS by policy end to end: a real ``chainmail run`` delivers through RemoteDelivery
to scripted exchangers with throwaway certificates, under opportunistic TLS, an MTA-STS
policy in enforce mode, and DANE records.

Everything stays on loopback: conf/dnsservice.xml names only a test DNS server that flags its
answers as DNSSEC-validated (AD), the MTA-STS policy comes from an HTTPS server on 127.0.0.9
port 443 with a certificate from a test CA that RemoteDelivery trusts through ``caFile``.
"""

from __future__ import annotations

import json

import pytest
import trustme

from ..remote.peers import Peer, PolicyServer, ehlo, starttls_peer, tls_server_context
from ..remote.test_tls_policy import ValidatingDns, spki_sha256
from .remote_env import LoopbackWorld, dnsservice_xml
from .test_mailets import wait_for
from .test_remote_delivery import Env, outgoing, submit

DOMAIN = "far.test"


class PolicyWorld(LoopbackWorld):
    """The loopback world, with a validating DNS server in place of the plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.vdns = ValidatingDns()

    def dns_xml(self) -> str:
        return dnsservice_xml(self.vdns.port)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.vdns.close()


@pytest.fixture
def env(tmp_path):
    world = PolicyWorld()
    env = Env(world, tmp_path)
    env.dns = world.vdns           # MX records go to the validating server
    yield env
    env.close()
    world.close()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def peer_at(env: Env, host: str, peer: Peer) -> Peer:
    env.world.exchanger(host, env.port, peer)    # type: ignore[arg-type]
    return peer


def data_over_tls(peer: Peer) -> bool:
    got = list(peer.received)
    return b"STARTTLS" in got and any(r.startswith(b"DATA:") for r in got[got.index(b"STARTTLS"):])


def test_opportunistic_tls_to_a_self_signed_exchanger(env):
    """startTLS true: the exchanger's certificate is from an unknown CA for another name;
    the mail still goes, encrypted."""
    stranger = trustme.CA()
    env.pick_port("127.0.0.3")
    env.mx(DOMAIN, (10, "127.0.0.3"))
    mx = peer_at(env, "127.0.0.3", starttls_peer(tls_server_context(stranger, "other.test")))
    sender = env.sender(startTLS="true")
    submit(sender, ["bob@far.test"], "opportunistic")
    wait_for(lambda: data_over_tls(mx), timeout=15, what="the message over TLS")
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
    assert b"end-of-opportunistic" in b"".join(r for r in mx.received if r.startswith(b"DATA:"))


def test_mta_sts_enforce_skips_the_unlisted_mx_and_verifies_the_listed_one(env, ca, tmp_path):
    """mx10 is preferred but not in the policy (and offers no TLS); mx20 is listed and has
    a certificate from the CA of caFile.  The policy is cached under var/mta-sts."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    env.pick_port("127.0.0.2", "127.0.0.3")
    env.mx(DOMAIN, (10, "127.0.0.2"), (20, "127.0.0.3"))
    env.dns.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=2026120501")
    env.dns.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.9")
    policy = PolicyServer(tls_server_context(ca, f"mta-sts.{DOMAIN}"), "127.0.0.9", 443)
    try:
        policy.policy("version: STSv1\nmode: enforce\nmx: mx20.far.test\nmax_age: 86400\n")
        plain = peer_at(env, "127.0.0.2", Peer(replies={"EHLO": ehlo("PIPELINING")}))
        listed = peer_at(env, "127.0.0.3", starttls_peer(tls_server_context(ca, f"mx20.{DOMAIN}")))
        sender = env.sender(caFile=str(ca_file))
        submit(sender, ["bob@far.test"], "sts-enforce")
        wait_for(lambda: data_over_tls(listed), timeout=15, what="the message at mx20 over TLS")
        assert plain.connections == 0
        assert policy.requests == [(f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")]
        cache = json.loads((sender.var / "mta-sts" / "outgoing.json").read_text())
        assert cache[DOMAIN]["mode"] == "enforce" and cache[DOMAIN]["id"] == "2026120501"
    finally:
        policy.close()


def test_dane_mismatch_defers_until_the_tlsa_record_matches(env):
    """dnssec true: a TLSA record that does not match the exchanger's certificate keeps the
    mail queued (nothing in clear text); once the record matches, the retry delivers it."""
    stranger = trustme.CA()
    leaf = stranger.issue_cert(f"mx10.{DOMAIN}")
    ctx = tls_server_context(stranger, "unused.test")
    leaf.configure_cert(ctx)
    env.pick_port("127.0.0.3")
    env.mx(DOMAIN, (10, "127.0.0.3"))
    tlsa = f"_25._tcp.mx10.{DOMAIN}"
    env.dns.add(tlsa, "TLSA", "3 1 1 " + "00" * 32)
    mx = peer_at(env, "127.0.0.3", starttls_peer(ctx))
    sender = env.sender(dnssec="true", startTLS="false")
    submit(sender, ["bob@far.test"], "dane")
    wait_for(lambda: "TLS policy of far.test not satisfied" in sender.log, timeout=15,
             what="the deferred attempt")
    assert b"STARTTLS" in mx.received and not any(r.startswith(b"MAIL") for r in mx.received)
    assert outgoing(sender)
    env.dns.records[tlsa] = [("TLSA", f"3 1 1 {spki_sha256(leaf.cert_chain_pems[0].bytes())}")]
    wait_for(lambda: data_over_tls(mx), timeout=15, what="the message over DANE-checked TLS")
    wait_for(lambda: not outgoing(sender), what="an empty outgoing queue")
