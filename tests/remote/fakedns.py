"""A fake DNS server on loopback for the routing tests: a trio UDP loop answering with dnslib.

Every record it serves is given by the test (and should point at loopback).  Names not in
``records`` get NXDOMAIN; names listed in ``servfail`` get SERVFAIL; names in ``silent`` get
no answer at all (the resolver times out).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from dnslib import AAAA, MX, QTYPE, RCODE, RR, A, DNSLabel, DNSRecord

__all__ = ["FakeDns", "fake_dns"]


@dataclass
class FakeDns:
    """``records[name]`` is a list of ``("MX", (pref, target))``, ``("A", ip)``, ``("AAAA", ip)``."""

    records: dict[str, list[tuple[str, object]]] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    port: int = 0
    queries: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, rtype: str, value: object) -> "FakeDns":
        self.records.setdefault(name.rstrip(".").lower(), []).append((rtype, value))
        return self

    def answer(self, data: bytes) -> bytes | None:
        request = DNSRecord.parse(data)
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE[q.qtype]
        self.queries.append((name, qtype))
        if name in self.silent:
            return None
        reply = request.reply()
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        for rtype, value in self.records[name]:
            if rtype != qtype:
                continue
            if rtype == "MX":
                pref, target = value
                rdata = MX(DNSLabel(target), pref)
            elif rtype == "A":
                rdata = A(value)
            else:
                rdata = AAAA(value)
            reply.add_answer(RR(q.qname, getattr(QTYPE, rtype), rdata=rdata, ttl=60))
        return reply.pack()

    async def serve(self, sock, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            data, addr = await sock.recvfrom(4096)
            out = self.answer(data)
            if out is not None:
                await sock.sendto(out, addr)


@asynccontextmanager
async def fake_dns(dns: FakeDns | None = None):
    """Run a :class:`FakeDns` on 127.0.0.1 (random UDP port) for the duration of the block."""
    dns = dns or FakeDns()
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    dns.port = sock.getsockname()[1]
    with sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(dns.serve, sock)
            try:
                yield dns
            finally:
                nursery.cancel_scope.cancel()
