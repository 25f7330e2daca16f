"""A DNS server on loopback that answers only what the test told it.

``chainmail_server`` points ``dnsservice.xml`` at it, so outgoing mail (RemoteDelivery)
never asks the system resolver.  Names with no records get NXDOMAIN.  It runs in a thread,
so it answers whatever the test itself is blocked on.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["FakeDns"]


class FakeDns:
    """``add("example.org", "MX", (10, "mx.example.org"))``, ``add("mx.example.org", "A",
    "127.0.0.2")``; also ``AAAA`` and ``TXT``.  ``queries`` lists ``(name, type)`` asked."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.records: dict[str, list[tuple[str, object]]] = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="chainmail-fakedns", daemon=True)
        self._thread.start()

    def add(self, name: str, rtype: str, value: object) -> "FakeDns":
        with self._lock:
            self.records.setdefault(_key(name), []).append((rtype.upper(), value))
        return self

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = _key(question.name.to_text())
            rtype = dns.rdatatype.to_text(question.rdtype)
            with self._lock:
                self.queries.append((name, rtype))
                records = list(self.records.get(name, ()))
            if not records:
                response.set_rcode(dns.rcode.NXDOMAIN)
                continue
            texts = [_rdata_text(t, v) for t, v in records if t == rtype]
            if texts:
                response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rtype,
                                                                texts))
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            try:
                self._sock.sendto(self.answer(data), peer)
            except Exception:   # a malformed query: no answer, as a real server might
                continue

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        self._sock.close()


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _rdata_text(rtype: str, value: object) -> str:
    if rtype == "MX":
        pair: tuple[int, object] = value  # type: ignore[assignment]   # (preference, name)
        return f"{pair[0]} {str(pair[1]).rstrip('.')}."
    if rtype == "TXT":
        return '"' + str(value).replace('"', '\\"') + '"'
    return str(value)
