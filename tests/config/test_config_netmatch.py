"""authorizedAddresses matching (NetworkSet)."""

import socket
import time

import pytest

from chainmail.config.netmatch import NetworkSet


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("DNS lookup attempted")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, boom)


def test_single_ipv4_is_slash_32():
    n = NetworkSet("192.168.0.1")
    assert n.contains("192.168.0.1")
    assert not n.contains("192.168.0.2")
    assert str(n) == "192.168.0.1/32"


def test_cidr_and_netmask_are_equivalent():
    a = NetworkSet("10.0.0.0/8")
    b = NetworkSet("10.0.0.0/255.0.0.0")
    assert a == b
    assert a.contains("10.255.1.2") and b.contains("10.255.1.2")
    assert not a.contains("11.0.0.1")


def test_cidr_host_bits_are_masked():
    assert str(NetworkSet("127.0.0.1/8")) == "127.0.0.0/8"


@pytest.mark.parametrize(
    "entry,inside,outside",
    [
        ("127.*", "127.3.4.5", "128.0.0.1"),
        ("10.1.*", "10.1.200.3", "10.2.0.1"),
        ("10.1.*.*", "10.1.200.3", "10.2.0.1"),
        ("192.168.1.*", "192.168.1.77", "192.168.2.1"),
    ],
)
def test_wildcards(entry, inside, outside):
    n = NetworkSet(entry)
    assert n.contains(inside)
    assert not n.contains(outside)


def test_star_alone_is_everything():
    n = NetworkSet("*")
    assert n.contains("1.2.3.4") and n.contains("2001:db8::1") and n.matches_all
    assert str(n) == "*"
    assert not n.contains("not-an-ip")


def test_james_equivalent_forms_of_loopback():
    # "127.*, 127.0.0.0/8, 127.0.0.0/255.0.0.0 and localhost/8 are all the same"
    forms = ["127.*", "127.0.0.0/8", "127.0.0.0/255.0.0.0", "localhost/8"]
    for form in forms:
        n = NetworkSet(form)
        assert n.contains("127.0.0.1"), form
        assert n.contains("127.200.0.9"), form
        assert not n.contains("128.0.0.1"), form


def test_localhost_static_table_adds_v4_and_v6():
    n = NetworkSet("localhost")
    assert n.contains("127.0.0.1")
    assert not n.contains("127.0.0.2")
    assert n.contains("::1")
    assert n.warnings == []


def test_other_hostnames_dropped_with_warning_and_no_dns():
    n = NetworkSet("mail.example.com, 10.0.0.0/8", file="smtpserver.xml", line=12)
    assert n.contains("10.1.1.1")
    assert len(n.warnings) == 1
    w = n.warnings[0]
    assert (w.file, w.line, w.element) == ("smtpserver.xml", 12, "authorizedAddresses")
    assert "mail.example.com" in w.message and "not resolved" in w.message
    assert str(n) == "10.0.0.0/8"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "1.2.3.4/255.0.255.0", "300.1.1.1", "1.2.*.4", "1*", "2001:db8::/129", "fe80::1%eth0", "::g", "10.0.0.0/"])
def test_bad_entries_are_warnings(bad):
    n = NetworkSet(f"{bad} 127.0.0.1")
    assert len(n.warnings) == 1, n.warnings
    assert bad in n.warnings[0].message
    assert n.contains("127.0.0.1")


def test_separators_comma_and_whitespace():
    n = NetworkSet("127.0.0.1,10.0.0.0/8 192.168.0.0/16 ,\n\t 172.16.0.0/12")
    assert [str(x) for x in n.networks] == ["127.0.0.1/32", "10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12"]


def test_ipv6_forms():
    n = NetworkSet("2001:db8::/32 fd00::%8 ::1")
    assert n.contains("2001:db8:1::5")
    assert n.contains("fd12::1")
    assert n.contains("::1")
    assert not n.contains("2001:db9::1")
    assert not n.contains("127.0.0.1")
    assert str(n) == "2001:db8::/32, fd00::/8, ::1/128"


def test_ipv6_client_forms_bracketed_and_zone():
    n = NetworkSet("fe80::/10")
    assert n.contains("[fe80::1]")
    assert n.contains("fe80::1%eth0")


def test_ipv4_mapped_client_matches_ipv4_entries():
    n = NetworkSet("127.0.0.0/8")
    assert n.contains("::ffff:127.0.0.1")
    assert not n.contains("::ffff:10.0.0.1")


def test_ipv4_mapped_entry_matches_ipv4_client():
    n = NetworkSet("::ffff:10.0.0.0/104")
    assert n.contains("10.1.2.3")
    assert str(n) == "10.0.0.0/8"


def test_empty_set():
    for text in (None, "", "   ", ",,"):
        n = NetworkSet(text)
        assert n.empty and not n
        assert not n.contains("127.0.0.1")
        assert str(n) == ""
    assert NetworkSet("127.0.0.1")


def test_garbage_client_address_never_matches():
    n = NetworkSet("0.0.0.0/0")
    assert n.contains("8.8.8.8")
    assert not n.contains("")
    assert not n.contains("unix:/tmp/sock")


def test_duplicates_collapsed_and_hashable():
    n = NetworkSet("10.0.0.0/8 10.0.0.0/255.0.0.0 10.*")
    assert len(n.networks) == 1
    assert hash(n) == hash(NetworkSet("10.0.0.0/8"))
    assert {n, NetworkSet("10.*")} == {n}


def test_contains_is_cached_and_fast():
    n = NetworkSet(" ".join(f"10.{i}.0.0/16" for i in range(200)) + " 2001:db8::/32")
    assert n.contains("10.199.3.4")
    start = time.perf_counter()
    for _ in range(20000):
        n.contains("10.199.3.4")
        n.contains("192.0.2.1")
    assert time.perf_counter() - start < 0.5
    assert "192.0.2.1" in n._cache


def test_in_operator():
    assert "127.0.0.1" in NetworkSet("127.0.0.0/8")


from hypothesis import given, settings, strategies as st  # noqa: E402
import ipaddress  # noqa: E402

_v4 = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(nets=st.lists(st.tuples(_v4, st.integers(min_value=0, max_value=32)), min_size=1, max_size=6), probes=st.lists(_v4, min_size=1, max_size=10))
def test_contains_agrees_with_ipaddress(nets, probes):
    networks = [ipaddress.IPv4Network((addr, prefix), strict=False) for addr, prefix in nets]
    n = NetworkSet(", ".join(str(x) for x in networks))
    assert n.warnings == []
    for p in probes:
        a = ipaddress.IPv4Address(p)
        expected = any(a in x for x in networks)
        assert n.contains(str(a)) is expected
        assert n.contains(f"::ffff:{a}") is expected
