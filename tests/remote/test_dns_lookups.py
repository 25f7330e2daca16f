"""The resolver's questions for the SMTP handlers (block-list A records, TXT, forward-confirmed
reverse names, negative caching) against the test kit's FakeDns, and the FakeDns failures
(SERVFAIL, no answer) the handlers' tests rely on."""

from __future__ import annotations

import pytest
import trio

from chainmail.remote.dns import DnsService, DnsServiceConfig, DnsTemporaryError, reversed_address
from chainmail.testing import FakeDns


@pytest.fixture
def fake():
    dns = FakeDns()
    yield dns
    dns.close()


def service(dns: FakeDns, *, timeout: float = 2.0, cache: int = 0) -> DnsService:
    return DnsService(DnsServiceConfig(servers=(("127.0.0.1", dns.port),), autodiscover=False,
                                       timeout=timeout, max_cache_size=cache))


def test_reversed_address():
    assert reversed_address("192.0.2.1") == "1.2.0.192"
    assert reversed_address("::ffff:192.0.2.1") == "1.2.0.192"
    assert reversed_address("2001:db8::1") == ".".join("1" + "0" * 23 + "8bd01002")
    with pytest.raises(ValueError):
        reversed_address("mail.example")


async def test_a_records_only_a(fake):
    fake.add("2.0.0.127.bl.test", "A", "127.0.0.2").add("2.0.0.127.bl.test", "AAAA", "::1")
    fake.add("txtonly.test", "TXT", "x")
    svc = service(fake)
    assert await svc.a_records("2.0.0.127.bl.test.") == ["127.0.0.2"]
    assert await svc.a_records("3.0.0.127.bl.test") == []        # NXDOMAIN
    assert await svc.a_records("txtonly.test") == []             # no A record
    assert fake.asked("2.0.0.127.bl.test", "AAAA") == 0


async def test_servfail_and_silence_are_temporary(fake):
    fake.servfail("broken.test").never_answer("slow.test")
    svc = service(fake, timeout=0.3)
    with pytest.raises(DnsTemporaryError):
        await svc.a_records("broken.test")
    with trio.fail_after(3):
        with pytest.raises(DnsTemporaryError):
            await svc.txt("slow.test")
    assert fake.asked("slow.test", "TXT") >= 1


async def test_confirmed_names_follow_ptr_back_to_the_address(fake):
    fake.add("192.0.2.7", "PTR", "good.example").add("good.example", "A", "192.0.2.7")
    fake.add("192.0.2.7", "PTR", "forged.example").add("forged.example", "A", "192.0.2.8")
    fake.add("2001:db8::7", "PTR", "v6.example").add("v6.example", "AAAA", "2001:db8::7")
    svc = service(fake)
    assert sorted(await svc.ptr("192.0.2.7")) == ["forged.example", "good.example"]
    assert await svc.confirmed_names("192.0.2.7") == ["good.example"]
    assert await svc.confirmed_names("2001:db8::7") == ["v6.example"]
    assert await svc.confirmed_names("192.0.2.9") == []


async def test_answers_and_negative_answers_are_cached(fake):
    fake.add("listed.bl.test", "A", "127.0.0.2")
    svc = service(fake, cache=100)
    for _ in range(3):
        assert await svc.a_records("listed.bl.test") == ["127.0.0.2"]
        assert await svc.a_records("clean.bl.test") == []
    assert fake.asked("listed.bl.test") == 1
    assert fake.asked("clean.bl.test") == 1
    uncached = service(fake)
    await uncached.a_records("clean.bl.test")
    await uncached.a_records("clean.bl.test")
    assert fake.asked("clean.bl.test") == 3
