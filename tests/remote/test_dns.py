"""dnsservice.xml and MX routing, against a fake DNS server on 127.0.0.1 (never the system's)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from chainmail.config.errors import ConfigError
from chainmail.remote.dns import (
    DnsService, DnsServiceConfig, DnsTemporaryError, MxHost, NoDnsEntries, NullMx,
    load_dnsservice, system_nameservers,
)

from .fakedns import FakeDns, fake_dns


def write(tmp_path, text: str):
    p = tmp_path / "dnsservice.xml"
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- dnsservice.xml

def test_servers_with_and_without_port(tmp_path):
    c = load_dnsservice(write(tmp_path, """<dnsservice>
  <servers>
    <server>127.0.0.1:5353</server>
    <server>127.0.0.2</server>
    <server>[::1]:5300</server>
    <server>::1</server>
    <server></server>
  </servers>
  <autodiscover>false</autodiscover>
  <maxcachesize>10</maxcachesize>
  <singleIPperMX>true</singleIPperMX>
  <timeout>0.5</timeout>
</dnsservice>"""))
    assert c.servers == (("127.0.0.1", 5353), ("127.0.0.2", 53), ("::1", 5300), ("::1", 53))
    assert c.autodiscover is False and c.max_cache_size == 10 and c.single_ip_per_mx is True
    assert c.timeout == 0.5
    assert c.nameservers(resolv_conf="/nonexistent") == list(c.servers)


def test_bad_server_names_file_and_line(tmp_path):
    p = write(tmp_path, "<dnsservice>\n<servers>\n<server>dns.example:53</server>\n</servers>\n</dnsservice>")
    with pytest.raises(ConfigError) as err:
        load_dnsservice(p)
    assert str(err.value).startswith(f"{p}:3: server:")
    p = write(tmp_path, "<dnsservice><servers><server>127.0.0.1:99999</server></servers></dnsservice>")
    with pytest.raises(ConfigError):
        load_dnsservice(p)


def test_unknown_elements_warn(tmp_path):
    c = load_dnsservice(write(tmp_path, "<dnsservice><autodiscover>false</autodiscover><bogus/></dnsservice>"))
    assert any("bogus" in str(w) for w in c.warnings)


def test_defaults_and_autodiscover(tmp_path):
    c = load_dnsservice(tmp_path / "missing.xml")
    assert c.autodiscover is True and c.servers == ()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nsearch example\nnameserver 127.0.0.9\nnameserver fe80::1%eth0\nnameserver bogus\n")
    assert system_nameservers(str(resolv)) == ["127.0.0.9", "fe80::1"]
    c = DnsServiceConfig(servers=(("127.0.0.1", 5353),), autodiscover=True)
    assert c.nameservers(str(resolv)) == [("127.0.0.1", 5353), ("127.0.0.9", 53), ("fe80::1", 53)]
    # nothing configured, nothing discovered: 127.0.0.1 as in James
    assert DnsServiceConfig(autodiscover=False).nameservers() == [("127.0.0.1", 53)]


def test_the_resolver_never_reads_the_system_configuration_when_told_not_to():
    svc = DnsService(DnsServiceConfig(servers=(("127.0.0.1", 5353),), autodiscover=False))
    assert [(ns.address, ns.port) for ns in svc.resolver.nameservers] == [("127.0.0.1", 5353)]


# -------------------------------------------------------------------------------- resolving

def service(dns: FakeDns, **kw) -> DnsService:
    cfg = DnsServiceConfig(servers=(("127.0.0.1", dns.port),), autodiscover=False,
                           timeout=kw.pop("timeout", 2.0), **kw)
    return DnsService(cfg, rng=random.Random(1))


async def test_mx_sorted_by_preference():
    dns = (FakeDns().add("example.test", "MX", (20, "mx2.example.test"))
           .add("example.test", "MX", (10, "mx1.example.test"))
           .add("mx1.example.test", "A", "127.0.0.11")
           .add("mx2.example.test", "A", "127.0.0.12")
           .add("mx2.example.test", "AAAA", "::1"))
    async with fake_dns(dns):
        svc = service(dns)
        assert await svc.find_mx("Example.TEST.") == [(10, "mx1.example.test"), (20, "mx2.example.test")]
        assert await svc.route("example.test") == [
            MxHost("mx1.example.test", 10, ("127.0.0.11",)),
            MxHost("mx2.example.test", 20, ("127.0.0.12", "::1")),
        ]


async def test_equal_preferences_in_random_order():
    dns = FakeDns()
    for i in range(4):
        dns.add("example.test", "MX", (10, f"mx{i}.example.test"))
    dns.add("example.test", "MX", (5, "first.example.test"))
    async with fake_dns(dns):
        svc = DnsService(DnsServiceConfig(servers=(("127.0.0.1", dns.port),), autodiscover=False,
                                          max_cache_size=0), rng=random.Random(7))
        orders = Counter()
        for _ in range(40):
            mx = await svc.find_mx("example.test")
            assert mx[0] == (5, "first.example.test")
            assert sorted(n for _, n in mx[1:]) == [f"mx{i}.example.test" for i in range(4)]
            orders[tuple(n for _, n in mx[1:])] += 1
        assert len(orders) > 3   # shuffled, not a fixed order


async def test_no_mx_falls_back_to_the_domain_address():
    dns = FakeDns().add("plain.test", "A", "127.0.0.5").add("plain.test", "AAAA", "::1")
    async with fake_dns(dns):
        svc = service(dns)
        assert await svc.find_mx("plain.test") == []
        assert await svc.route("plain.test") == [MxHost("plain.test", 0, ("127.0.0.5", "::1"), implicit=True)]


async def test_null_mx_is_permanent():
    dns = FakeDns().add("nomail.test", "MX", (0, ".")).add("nomail.test", "A", "127.0.0.5")
    async with fake_dns(dns):
        with pytest.raises(NullMx) as err:
            await service(dns).route("nomail.test")
        assert err.value.permanent


async def test_null_mx_among_others_is_skipped():
    dns = (FakeDns().add("odd.test", "MX", (0, ".")).add("odd.test", "MX", (10, "mx.odd.test"))
           .add("mx.odd.test", "A", "127.0.0.6"))
    async with fake_dns(dns):
        assert await service(dns).find_mx("odd.test") == [(10, "mx.odd.test")]


async def test_nxdomain():
    async with fake_dns() as dns:
        with pytest.raises(NoDnsEntries) as err:
            await service(dns).route("nowhere.test")
        assert err.value.nxdomain is True
        assert "There are no DNS entries for the hostname nowhere.test." in str(err.value)
        assert not isinstance(err.value, DnsTemporaryError)


async def test_no_mx_and_no_address():
    dns = FakeDns().add("empty.test", "TXT", "x")
    async with fake_dns(dns):
        with pytest.raises(NoDnsEntries) as err:
            await service(dns).route("empty.test")
        assert err.value.nxdomain is False


async def test_mx_without_addresses_are_left_out():
    dns = (FakeDns().add("d.test", "MX", (10, "gone.d.test")).add("d.test", "MX", (20, "mx.d.test"))
           .add("mx.d.test", "A", "127.0.0.7"))
    async with fake_dns(dns):
        assert await service(dns).route("d.test") == [MxHost("mx.d.test", 20, ("127.0.0.7",))]
    dns = FakeDns().add("e.test", "MX", (10, "gone.e.test"))
    async with fake_dns(dns):
        with pytest.raises(NoDnsEntries):
            await service(dns).route("e.test")


async def test_single_ip_per_mx():
    dns = (FakeDns().add("s.test", "MX", (10, "mx.s.test"))
           .add("mx.s.test", "A", "127.0.0.8").add("mx.s.test", "A", "127.0.0.9"))
    async with fake_dns(dns):
        assert (await service(dns, single_ip_per_mx=True).route("s.test"))[0].addresses == ("127.0.0.8",)


async def test_servfail_is_temporary():
    dns = FakeDns(servfail={"broken.test"})
    async with fake_dns(dns):
        with pytest.raises(DnsTemporaryError):
            await service(dns).route("broken.test")


async def test_timeout_is_temporary():
    dns = FakeDns(silent={"slow.test"})
    async with fake_dns(dns):
        with trio.fail_after(5):
            with pytest.raises(DnsTemporaryError):
                await service(dns, timeout=0.3).route("slow.test")


async def test_closed_port_is_temporary():
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    svc = DnsService(DnsServiceConfig(servers=(("127.0.0.1", port),), autodiscover=False, timeout=0.5))
    with trio.fail_after(5):
        with pytest.raises(DnsTemporaryError):
            await svc.route("example.test")


async def test_ip_literal_needs_no_lookup():
    svc = DnsService(DnsServiceConfig(servers=(("127.0.0.1", 9),), autodiscover=False))
    assert await svc.addresses("127.0.0.1") == ["127.0.0.1"]
    assert await svc.addresses("[::1]") == ["::1"]
