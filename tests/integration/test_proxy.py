"""The PROXY protocol: hand-made v1/v2 headers, and HAProxy itself in front of chainmail."""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import time

import pytest

from ..conftest import need, wait_for
from .test_tls import Material, tls_block

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(src: str, dst: str, sport: int, dport: int, command: int = 1) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if a.version == 4 else 0x21
    body = a.packed + b.packed + struct.pack("!HH", sport, dport)
    return V2_SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def talk(port: int, preamble: bytes, commands: bytes, source="127.0.0.1", timeout=5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(preamble)
        out = b""
        if commands:   # (the server may already have reset a bad preamble's connection)
            try:
                s.sendall(commands)
            except (BrokenPipeError, ConnectionResetError):
                return out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


RELAY = b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@far.example>\r\nQUIT\r\n"


@pytest.fixture
def proxied(chainmail_factory):
    # only 203.0.113.0/24 may relay; the TCP peer 127.0.0.1 may not
    return chainmail_factory("<proxyRequired>true</proxyRequired><connectiontimeout>2</connectiontimeout>",
                             authorized="203.0.113.0/24")


def test_v1_header_sets_the_client_address(proxied):
    data = talk(proxied.port, b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n", RELAY)
    assert b"250-mx.test Hello t [203.0.113.7]" in data
    assert b"250 2.1.5 Recipient <x@far.example> OK" in data
    data = talk(proxied.port, b"PROXY TCP4 198.51.100.9 192.0.2.1 40000 25\r\n", RELAY)
    assert b"550 5.7.1 Requested action not taken: relaying denied" in data


def test_v2_header_ipv4_and_ipv6(proxied):
    data = talk(proxied.port, v2("203.0.113.8", "192.0.2.1", 1234, 25), RELAY)
    assert b"Hello t [203.0.113.8]" in data and b"250 2.1.5" in data
    data = talk(proxied.port, v2("2001:db8::5", "2001:db8::1", 1234, 25), RELAY)
    assert b"Hello t [2001:db8::5]" in data and b"550 5.7.1" in data


def test_v2_local_and_v1_unknown_use_the_tcp_peer(proxied):
    for preamble in (v2("0.0.0.0", "0.0.0.0", 0, 0, command=0), b"PROXY UNKNOWN\r\n"):
        data = talk(proxied.port, preamble, b"EHLO t\r\nQUIT\r\n")
        assert b"Hello t [127.0.0.1]" in data


def test_received_header_and_envelope_carry_the_proxied_address(proxied):
    talk(proxied.port, b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\n",
         b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nSubject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
    [msg] = proxied.queued()
    assert msg.envelope.attributes["remote_addr"] == "203.0.113.9"
    assert b"([203.0.113.9])" in proxied.queued_body(msg.id)
    assert "203.0.113.9" in proxied.log


@pytest.mark.parametrize("preamble", [
    b"EHLO t\r\n",                                        # missing
    b"PROXY TCP4 999.1.1.1 192.0.2.1 1 2\r\n",            # malformed
    b"PROXY TCP4 203.0.113.1 192.0.2.1 1\r\n",            # truncated fields
    V2_SIG + b"\x21\x11\x00\x0c\x01\x02",                 # truncated v2, then nothing
    b"PROXY " + b"A" * 200 + b"\r\n",                     # too long
])
def test_bad_headers_are_closed_without_a_session(proxied, preamble):
    start = time.monotonic()
    data = talk(proxied.port, preamble, b"", timeout=6)
    assert b"250" not in data and b"220" not in data
    assert time.monotonic() - start < 5


def test_slow_header_gets_a_bounded_wait_and_others_are_served(proxied):
    slow = socket.create_connection(("127.0.0.1", proxied.port))
    slow.sendall(b"PROXY TCP4 203.0.113.1")
    data = talk(proxied.port, b"PROXY TCP4 203.0.113.2 192.0.2.1 1 25\r\n", b"EHLO t\r\nQUIT\r\n")
    assert b"Hello t [203.0.113.2]" in data
    slow.settimeout(5)
    start = time.monotonic()
    try:                                  # closed by the server after connectiontimeout (2 s)
        assert slow.recv(100) == b""
    except ConnectionResetError:          # unread bytes make the close a reset
        pass
    assert time.monotonic() - start < 4.5
    slow.close()


def test_per_ip_limit_counts_the_proxied_client(chainmail_factory):
    server = chainmail_factory("<proxyRequired>true</proxyRequired><connectionLimitPerIP>1</connectionLimitPerIP>")
    a = socket.create_connection(("127.0.0.1", server.port))
    a.sendall(b"PROXY TCP4 203.0.113.1 192.0.2.1 1 25\r\n")
    assert a.recv(100).startswith(b"220 ")
    # same TCP peer (the balancer), other client: served
    data = talk(server.port, b"PROXY TCP4 203.0.113.2 192.0.2.1 1 25\r\n", b"QUIT\r\n")
    assert data.startswith(b"220 ")
    # same client again: refused
    data = talk(server.port, b"PROXY TCP4 203.0.113.1 192.0.2.1 2 25\r\n", b"")
    assert data.startswith(b"421 4.7.0")
    a.close()


def test_proxy_first_with_implicit_tls(chainmail_factory, tmp_path):
    import ssl
    material = Material(tmp_path)
    ks = material.keystore("ks.p12", "mx.test")
    first = chainmail_factory(tls_block(ks, "socketTLS", "") + "<proxyRequired>true</proxyRequired>")
    inner = chainmail_factory(tls_block(ks, "socketTLS", "") +
                              "<proxyRequired>true</proxyRequired><proxyFirst>false</proxyFirst>")
    ctx = material.client_context()
    with socket.create_connection(("127.0.0.1", first.port)) as raw:
        raw.sendall(b"PROXY TCP4 203.0.113.5 192.0.2.1 1 465\r\n")
        with ctx.wrap_socket(raw, server_hostname="mx.test") as tls:
            f = tls.makefile("rwb")
            assert f.readline().startswith(b"220 ")
            f.write(b"EHLO t\r\n"); f.flush()
            assert f.readline() == b"250-mx.test Hello t [203.0.113.5]\r\n"
    with socket.create_connection(("127.0.0.1", inner.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="mx.test") as tls:
            tls.sendall(b"PROXY TCP4 203.0.113.6 192.0.2.1 1 465\r\nEHLO t\r\n")
            f = tls.makefile("rb")
            assert f.readline().startswith(b"220 ")
            assert f.readline() == b"250-mx.test Hello t [203.0.113.6]\r\n"


HAPROXY_CFG = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{p1}
    default_backend chainmail_v1
frontend v2
    bind 127.0.0.1:{p2}
    default_backend chainmail_v2
backend chainmail_v1
    server mx 127.0.0.1:{target} send-proxy
backend chainmail_v2
    server mx 127.0.0.1:{target} send-proxy-v2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_haproxy_send_proxy_v1_and_v2_decide_relaying(chainmail_factory, tmp_path):
    haproxy = need("haproxy")
    server = chainmail_factory("<proxyRequired>true</proxyRequired>", authorized="127.0.0.2/32")
    p1, p2 = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(p1=p1, p2=p2, target=server.port))
    proc = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening(port: int) -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True
        wait_for(lambda: listening(p1) and listening(p2), what="haproxy's two frontends")
        for port in (p1, p2):
            allowed = talk(port, b"", RELAY, source="127.0.0.2")
            assert b"Hello t [127.0.0.2]" in allowed, allowed
            assert b"250 2.1.5 Recipient <x@far.example> OK" in allowed
            denied = talk(port, b"", RELAY, source="127.0.0.3")
            assert b"Hello t [127.0.0.3]" in denied
            assert b"550 5.7.1 Requested action not taken: relaying denied" in denied
    finally:
        proc.terminate()
        proc.wait(10)
