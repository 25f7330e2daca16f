"""Outgoing TLS by policy: opportunistic STARTTLS, the James overrides, MTA-STS and DANE.

Everything is on loopback: a DNS server that flags its answers as DNSSEC-validated (AD), an
HTTPS server for MTA-STS policies with a certificate from a throwaway CA that chainmail is
told to trust, and scripted exchangers with certificates from throwaway CAs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import ssl

import dns.flags
import dns.message
import dns.rcode
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chainmail.remote.config import RemoteDeliveryConfig
from chainmail.remote.dane import Tlsa, match_chain
from chainmail.remote.delivery import SUCCESS, TEMPORARY, deliver
from chainmail.remote.dns import DnsService, DnsServiceConfig
from chainmail.remote.mtasts import MtaSts, PolicyError, mx_matches, parse_policy, parse_txt
from chainmail.remote.tlspolicy import TlsPolicy
from chainmail.testing.fakedns import FakeDns

from .peers import (
    BrokenTlsPeer, Peer, PolicyServer, ehlo, start_peer_at, starttls_peer, tls_server_context,
)

MESSAGE = b"Subject: out\r\n\r\nhello\r\n"
DOMAIN = "example.test"
POLICY_HOST = "127.0.0.9"


class ValidatingDns(FakeDns):
    """A :class:`FakeDns` answering as a DNSSEC-validating resolver: the AD flag is set on
    every answer except for names in ``insecure``; names in ``servfail`` get SERVFAIL."""

    def __init__(self) -> None:
        super().__init__()
        self.insecure: set[str] = set()
        self.servfail: set[str] = set()

    def answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        names = {q.name.to_text().rstrip(".").lower() for q in query.question}
        if names & self.servfail:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        response = dns.message.from_wire(super().answer(data))
        if not names & self.insecure:
            response.flags |= dns.flags.AD
        return response.to_wire()


@pytest.fixture
def vdns():
    server = ValidatingDns()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def stranger():
    """A CA nobody trusts: its certificates are what self-signed ones are to chainmail."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def policy_server(ca):
    server = PolicyServer(tls_server_context(ca, f"mta-sts.{DOMAIN}"), POLICY_HOST, 0)
    yield server
    server.close()


def service(server: FakeDns) -> DnsService:
    return DnsService(DnsServiceConfig(servers=(("127.0.0.1", server.port),), autodiscover=False,
                                       timeout=1.0, max_cache_size=0), rng=random.Random(5))


def settings(port: int, **params) -> RemoteDeliveryConfig:
    return RemoteDeliveryConfig.from_params({
        "mail.smtp.port": str(port), "heloName": "out.test", "timeout": "3000",
        "connectiontimeout": "2000", **params})


def mx(server: FakeDns, *hosts: tuple[int, str, str]) -> None:
    for pref, name, address in hosts:
        server.add(DOMAIN, "MX", (pref, name)).add(name, "A", address)


async def send(config, svc, policy=None, recipients=("x@example.test",), **kwargs):
    return await deliver("a@out.test", list(recipients), MESSAGE, config=config, dns=svc,
                         tls_policy=policy or TlsPolicy(config, svc), **kwargs)


def over_tls(peer: Peer) -> bool:
    """The message reached ``peer`` after a STARTTLS on the same connection."""
    got = peer.received
    return b"STARTTLS" in got and any(r.startswith(b"DATA:") for r in got[got.index(b"STARTTLS"):])


def mails(peer: Peer) -> int:
    return sum(1 for r in peer.received if r.startswith(b"MAIL"))


# ------------------------------------------------------------------ opportunistic and James's

async def test_opportunistic_tls_takes_a_self_signed_certificate(nursery, vdns, stranger):
    peer = await start_peer_at(nursery, starttls_peer(tls_server_context(stranger, "other.test")),
                               "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    config = settings(peer.port, startTLS="true")
    out = await send(config, service(vdns))
    assert out.kind == SUCCESS and out.delivered == ["x@example.test"]
    assert over_tls(peer) and b"DATA:" + MESSAGE in peer.received


async def test_verify_server_identity_false_no_longer_checks_the_chain(nursery, vdns, stranger):
    peer = await start_peer_at(nursery, starttls_peer(tls_server_context(stranger, "other.test")),
                               "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    out = await send(settings(peer.port, startTLS="true", verifyServerIdentity="false"),
                     service(vdns))
    assert out.kind == SUCCESS and over_tls(peer)


async def test_failed_handshake_falls_back_to_clear_text_once(nursery, vdns, caplog):
    peer = await start_peer_at(nursery, BrokenTlsPeer(), "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    with caplog.at_level(logging.WARNING, "chainmail.remote"):
        out = await send(settings(peer.port, startTLS="true"), service(vdns))
    assert out.kind == SUCCESS
    assert peer.connections == 2 and peer.tls_attempts == 1
    assert peer.received.count(b"STARTTLS") == 1 and mails(peer) == 1
    assert "trying once more without TLS" in caplog.text


async def test_explicit_verify_server_identity_refuses_an_unknown_ca(nursery, vdns, stranger):
    peer = await start_peer_at(nursery, starttls_peer(tls_server_context(stranger, "mx.example.test")),
                               "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    out = await send(settings(peer.port, startTLS="true", verifyServerIdentity="true"),
                     service(vdns))
    assert out.kind == TEMPORARY and "TLS handshake" in out.message
    assert peer.connections == 1 and mails(peer) == 0     # never in clear text


async def test_explicit_verification_with_the_operators_ca_file(nursery, vdns, ca, ca_file):
    peer = await start_peer_at(nursery, starttls_peer(tls_server_context(ca, "mx.example.test")),
                               "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    out = await send(settings(peer.port, startTLS="true", verifyServerIdentity="true",
                              caFile=ca_file), service(vdns))
    assert out.kind == SUCCESS and over_tls(peer)


async def test_requiretls_still_needs_a_verified_certificate(nursery, vdns, stranger):
    peer = await start_peer_at(nursery, starttls_peer(tls_server_context(stranger, "mx.example.test"),
                                                      "REQUIRETLS"), "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    out = await send(settings(peer.port, startTLS="true"), service(vdns), require_tls=True)
    assert out.kind != SUCCESS and "5.7.30" in out.message and mails(peer) == 0


def test_config_knows_what_was_set():
    assert settings(25).verify_explicit is None
    assert settings(25, verifyServerIdentity="true").verify_explicit is True
    assert settings(25, **{"mail.smtp.ssl.checkserveridentity": "false"}).verify_explicit is False
    c = settings(25)
    assert c.mta_sts and c.dane and not c.dnssec and c.ca_file is None


def test_a_missing_ca_file_is_a_configuration_error(tmp_path):
    from chainmail.config.errors import ConfigError
    with pytest.raises(ConfigError, match="caFile"):
        settings(25, caFile=str(tmp_path / "none.pem"))


# ------------------------------------------------------------------ MTA-STS: parsing

def test_policy_parsing():
    policy = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\n"
                          "mx: *.example.net\r\nmax_age: 86400\r\n", ident="abc", now=1000.0)
    assert policy.mode == "enforce" and policy.mx == ("mail.example.test", "*.example.net")
    assert policy.max_age == 86400 and policy.expires == 87400.0 and policy.id == "abc"
    assert policy.matches("MAIL.example.test.") and policy.matches("a.example.net")
    assert not policy.matches("a.b.example.net") and not policy.matches("example.net")
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n").max_age == 31557600
    for bad in ("mode: enforce\nmx: a\nmax_age: 1\n", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: testing\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmx: a\n",
                "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n"):
        with pytest.raises(PolicyError):
            parse_policy(bad)


def test_txt_parsing_and_mx_patterns():
    assert parse_txt(["v=STSv1; id=20240101T000000;"]) == "20240101T000000"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None      # two records: none
    assert parse_txt(["v=STSv1; id=bad-id!"]) is None and parse_txt([]) is None
    assert mx_matches("*.example.com", "mx.example.com")
    assert not mx_matches("*.example.com", "example.com")


# ------------------------------------------------------------------ MTA-STS: fetch and cache

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 86400\n"


def publish(vdns: FakeDns, ident: str = "one") -> None:
    vdns.add(f"_mta-sts.{DOMAIN}", "TXT", f"v=STSv1; id={ident}")
    vdns.add(f"mta-sts.{DOMAIN}", "A", POLICY_HOST)


def sts(svc, policy_server, ca_file, tmp_path=None) -> MtaSts:
    cache = str(tmp_path / "mta-sts.json") if tmp_path is not None else None
    return MtaSts(svc, cache_file=cache, cafile=ca_file, port=policy_server.port, timeout=3)


async def test_policy_fetched_cached_refreshed_and_kept_across_restarts(vdns, policy_server,
                                                                          ca_file, tmp_path):
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    resolver = sts(svc, policy_server, ca_file, tmp_path)
    policy = await resolver.policy(DOMAIN)
    assert policy is not None and policy.mode == "enforce" and policy.id == "one"
    assert policy_server.requests == [(f"mta-sts.{DOMAIN}:{policy_server.port}",
                                       "/.well-known/mta-sts.txt")]
    assert (await resolver.policy(DOMAIN)) == policy and resolver.fetches == 1   # same id
    saved = json.loads((tmp_path / "mta-sts.json").read_text())
    assert saved[DOMAIN]["mx"] == ["mx1.example.test"] and saved[DOMAIN]["id"] == "one"
    # a new id: fetched again
    vdns.records[f"_mta-sts.{DOMAIN}"] = []
    publish(vdns, "two")
    policy_server.policy(ENFORCE.replace("mode: enforce", "mode: testing"))
    assert (await resolver.policy(DOMAIN)).mode == "testing" and resolver.fetches == 2
    # restarted, with the TXT record gone (a downgrade attempt): the cached policy holds
    del vdns.records[f"_mta-sts.{DOMAIN}"]
    again = sts(svc, policy_server, ca_file, tmp_path)
    kept = await again.policy(DOMAIN)
    assert kept is not None and kept.id == "two" and again.fetches == 0


@pytest.mark.parametrize("serve, why", [
    (dict(status=301, headers={"Location": "https://elsewhere.test/"}), "status 301"),
    (dict(ctype="text/html"), "content type"),
    (dict(text="x" * 70000), "over"),
    (dict(text="version: STSv1\nmode: enforce\nmax_age: 60\n"), "no mx line"),
])
async def test_bad_policies_are_no_policy(vdns, policy_server, ca_file, caplog, serve, why):
    publish(vdns)
    text = serve.pop("text", ENFORCE)
    policy_server.policy(text, **serve)
    with caplog.at_level(logging.WARNING, "chainmail.remote"):
        assert await sts(service(vdns), policy_server, ca_file).policy(DOMAIN) is None
    assert why in caplog.text


async def test_policy_server_with_an_untrusted_certificate_is_no_policy(vdns, policy_server):
    publish(vdns)
    policy_server.policy(ENFORCE)
    resolver = MtaSts(service(vdns), port=policy_server.port, timeout=3)   # system CAs only
    assert await resolver.policy(DOMAIN) is None and resolver.fetches == 1


# ------------------------------------------------------------------ MTA-STS: delivery

async def sts_world(nursery, vdns, ca, stranger, *, mx1_ctx=None):
    """mx0 (preferred, not in the policy, self-signed) and mx1 (in the policy)."""
    mx0 = starttls_peer(tls_server_context(stranger, "mx0.example.test"))
    mx1 = starttls_peer(mx1_ctx or tls_server_context(ca, "mx1.example.test"))
    await start_peer_at(nursery, mx0, "127.0.0.2", 0)
    await start_peer_at(nursery, mx1, "127.0.0.3", mx0.port)
    mx(vdns, (5, "mx0.example.test", "127.0.0.2"), (10, "mx1.example.test", "127.0.0.3"))
    return mx0, mx1


def sts_policy(config, svc, policy_server, ca_file) -> TlsPolicy:
    return TlsPolicy(config, svc, mta_sts=sts(svc, policy_server, ca_file))


async def test_enforce_uses_only_listed_mx_hosts_with_verified_tls(nursery, vdns, ca, stranger,
                                                                    policy_server, ca_file):
    mx0, mx1 = await sts_world(nursery, vdns, ca, stranger)
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    config = settings(mx0.port, caFile=ca_file)       # startTLS not even set
    out = await send(config, svc, sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == SUCCESS and out.remote_mta == "mx1.example.test"
    assert mx0.connections == 0 and over_tls(mx1)


async def test_enforce_with_a_bad_certificate_defers_and_never_sends_in_clear(
        nursery, vdns, ca, stranger, policy_server, ca_file):
    mx0, mx1 = await sts_world(nursery, vdns, ca, stranger,
                               mx1_ctx=tls_server_context(ca, "wrong.example.test"))
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    config = settings(mx0.port, caFile=ca_file, startTLS="true")
    out = await send(config, svc, sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == TEMPORARY and out.pending == ["x@example.test"]
    assert "4.7.5" in out.message and "mx0.example.test" in out.message and out.code == 451
    assert mx0.connections == 0 and mx1.connections == 1 and mails(mx1) == 0


async def test_enforce_without_starttls_defers(nursery, vdns, ca, stranger, policy_server, ca_file):
    plain = await start_peer_at(nursery, Peer(replies={"EHLO": ehlo("PIPELINING")}), "127.0.0.3", 0)
    mx(vdns, (10, "mx1.example.test", "127.0.0.3"))
    publish(vdns)
    policy_server.policy(ENFORCE)
    svc = service(vdns)
    config = settings(plain.port, caFile=ca_file)
    out = await send(config, svc, sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == TEMPORARY and "STARTTLS" in out.message and mails(plain) == 0


async def test_testing_mode_logs_and_delivers_anyway(nursery, vdns, ca, stranger, policy_server,
                                                     ca_file, caplog):
    mx0, mx1 = await sts_world(nursery, vdns, ca, stranger)
    publish(vdns)
    policy_server.policy(ENFORCE.replace("mode: enforce", "mode: testing"))
    svc = service(vdns)
    config = settings(mx0.port, caFile=ca_file, startTLS="true")
    with caplog.at_level(logging.WARNING, "chainmail.remote"):
        out = await send(config, svc, sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == SUCCESS and out.remote_mta == "mx0.example.test" and over_tls(mx0)
    assert "mx0.example.test is not listed by the policy" in caplog.text


async def test_testing_mode_failed_check_falls_back(nursery, vdns, ca, stranger, policy_server,
                                                    ca_file, caplog):
    bad = starttls_peer(tls_server_context(stranger, "mx1.example.test"))
    await start_peer_at(nursery, bad, "127.0.0.3", 0)
    mx(vdns, (10, "mx1.example.test", "127.0.0.3"))
    publish(vdns)
    policy_server.policy(ENFORCE.replace("mode: enforce", "mode: testing"))
    svc = service(vdns)
    config = settings(bad.port, caFile=ca_file, startTLS="true")
    with caplog.at_level(logging.WARNING, "chainmail.remote"):
        out = await send(config, svc, sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == SUCCESS and bad.connections == 2 and over_tls(bad)
    assert "mode testing) not satisfied" in caplog.text


# ------------------------------------------------------------------ DANE

def spki_sha256(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_sha512(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha512(cert.public_bytes(Encoding.DER)).hexdigest()


def issued(issuer, *names: str):
    leaf = issuer.issue_cert(*names)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return leaf, ctx


async def dane_peer(nursery, vdns, ctx):
    peer = await start_peer_at(nursery, starttls_peer(ctx), "127.0.0.2", 0)
    mx(vdns, (10, "mx.example.test", "127.0.0.2"))
    return peer


async def test_dane_ee_match_delivers_without_any_ca(nursery, vdns, stranger):
    leaf, ctx = issued(stranger, "unrelated.test")        # names and CA do not matter for DANE-EE
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {spki_sha256(leaf.cert_chain_pems[0].bytes())}")
    svc = service(vdns)
    config = settings(peer.port, dnssec="true")            # startTLS not set: DANE asks for it
    out = await send(config, svc, require_tls=False)
    assert out.kind == SUCCESS and over_tls(peer)
    assert ("_25._tcp.mx.example.test", "TLSA") in vdns.queries


async def test_dane_mismatch_defers(nursery, vdns, stranger, ca):
    _, ctx = issued(stranger, "mx.example.test")
    other, _ = issued(ca, "mx.example.test")
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {spki_sha256(other.cert_chain_pems[0].bytes())}")
    out = await send(settings(peer.port, dnssec="true", startTLS="true"), service(vdns))
    assert out.kind == TEMPORARY and "4.7.5" in out.message and "TLSA" in out.message
    assert peer.connections == 1 and mails(peer) == 0


async def test_dane_ta_matches_the_issuer_in_the_chain(nursery, vdns, ca):
    sub = ca.create_child_ca()
    _, ctx = issued(sub, "mx.example.test")               # the chain: leaf, then sub
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.add("_25._tcp.mx.example.test", "TLSA", f"2 0 2 {cert_sha512(sub.cert_pem.bytes())}")
    out = await send(settings(peer.port, dnssec="true"), service(vdns))
    assert out.kind == SUCCESS and over_tls(peer)


def test_dane_ta_needs_the_mx_name(ca):
    sub = ca.create_child_ca()
    leaf = sub.issue_cert("other.test")
    chain = [x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER)
             for p in leaf.cert_chain_pems]
    record = Tlsa(2, 0, 2, bytes.fromhex(cert_sha512(sub.cert_pem.bytes())))
    assert match_chain(chain, [record], ["mx.example.test"]) is not None
    assert match_chain(chain, [record], ["other.test"]) is None
    assert match_chain(chain, [Tlsa(2, 0, 2, b"\0" * 64)], ["other.test"]) is not None


async def test_dane_ignored_without_a_validating_resolver_or_secure_mx(nursery, vdns, stranger, ca):
    _, ctx = issued(stranger, "mx.example.test")
    other, _ = issued(ca, "mx.example.test")
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {spki_sha256(other.cert_chain_pems[0].bytes())}")
    svc = service(vdns)
    # the operator did not say the resolver validates: the AD bit means nothing
    out = await send(settings(peer.port, startTLS="true"), svc)
    assert out.kind == SUCCESS and ("_25._tcp.mx.example.test", "TLSA") not in vdns.queries
    # a validating resolver, but the MX records are not signed: DANE does not apply
    vdns.insecure.add(DOMAIN)
    out = await send(settings(peer.port, startTLS="true", dnssec="true"), svc)
    assert out.kind == SUCCESS and mails(peer) == 2
    # signed, but a validated "no TLSA record": opportunistic TLS
    vdns.insecure.clear()
    del vdns.records["_25._tcp.mx.example.test"]
    out = await send(settings(peer.port, startTLS="true", dnssec="true"), svc)
    assert out.kind == SUCCESS and mails(peer) == 3
    assert ("_25._tcp.mx.example.test", "TLSA") in vdns.queries


async def test_dane_tlsa_lookup_failure_defers(nursery, vdns, stranger):
    _, ctx = issued(stranger, "mx.example.test")
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.servfail.add("_25._tcp.mx.example.test")
    out = await send(settings(peer.port, startTLS="true", dnssec="true"), service(vdns))
    assert out.kind == TEMPORARY and "DANE" in out.message and peer.connections == 0


async def test_dane_takes_precedence_over_mta_sts(nursery, vdns, stranger, policy_server, ca_file):
    leaf, ctx = issued(stranger, "mx.example.test")       # not valid for MTA-STS (unknown CA)
    peer = await dane_peer(nursery, vdns, ctx)
    vdns.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {spki_sha256(leaf.cert_chain_pems[0].bytes())}")
    publish(vdns)
    policy_server.policy(ENFORCE.replace("mx1.", "mx."))
    svc = service(vdns)
    config = settings(peer.port, dnssec="true", caFile=ca_file)
    out = await send(config, svc, sts_policy(config, svc, policy_server, ca_file))
    assert out.kind == SUCCESS and over_tls(peer)
