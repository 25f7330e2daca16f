"""A DNS server on loopback that answers only what the test told it.

``chainmail_server`` points ``dnsservice.xml`` at it, so outgoing mail (RemoteDelivery)
never asks the system resolver.  Names with no records get NXDOMAIN; names given to
:meth:`FakeDns.servfail` get SERVFAIL and names given to :meth:`FakeDns.never_answer` no
answer at all, so that a resolver times out.  It runs in a thread, so it answers whatever the
test itself is blocked on.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset

__all__ = ["FakeDns"]


class FakeDns:
    """``add("example.org", "MX", (10, "mx.example.org"))``, ``add("mx.example.org", "A",
    "127.0.0.2")``; also ``AAAA``, ``TXT``, ``CNAME`` and ``PTR`` (``add("192.0.2.7", "PTR",
    "mail.example.org")``: an IP address stands for its reverse name).  ``servfail(name)``
    and ``never_answer(name)`` make a name fail.  ``queries`` lists ``(name, type)`` asked."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.records: dict[str, list[tuple[str, object]]] = {}
        self.failing: set[str] = set()
        self.silent: set[str] = set()
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

    def servfail(self, *names: str) -> "FakeDns":
        """Answer every question about these names with SERVFAIL (a broken zone)."""
        with self._lock:
            self.failing.update(_key(n) for n in names)
        return self

    def never_answer(self, *names: str) -> "FakeDns":
        """Leave every question about these names unanswered: the resolver times out."""
        with self._lock:
            self.silent.update(_key(n) for n in names)
        return self

    def asked(self, name: str, rtype: str | None = None) -> int:
        """How many questions about ``name`` (of type ``rtype``, or any) were received."""
        key = _key(name)
        with self._lock:
            return sum(1 for n, t in self.queries if n == key and rtype in (None, t))

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.failing.clear()
            self.silent.clear()

    def answer(self, data: bytes) -> bytes | None:
        """The wire response to a query, or None to leave it unanswered."""
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = _key(question.name.to_text())
            rtype = dns.rdatatype.to_text(question.rdtype)
            with self._lock:
                self.queries.append((name, rtype))
                records = list(self.records.get(name, ()))
                failing, silent = name in self.failing, name in self.silent
            if silent:
                return None
            if failing:
                response.set_rcode(dns.rcode.SERVFAIL)
                continue
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
                reply = self.answer(data)
                if reply is not None:
                    self._sock.sendto(reply, peer)
            except Exception:   # a malformed query: no answer, as a real server might
                continue

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        self._sock.close()


def _key(name: str) -> str:
    """A name as stored: lower case, no final dot; an IP address stands for its reverse name."""
    text = name.strip().strip("[]")
    try:
        text = dns.reversename.from_address(str(ipaddress.ip_address(text))).to_text()
    except ValueError:
        text = name
    return text.rstrip(".").lower()


def _rdata_text(rtype: str, value: object) -> str:
    if rtype == "MX":
        pair: tuple[int, object] = value  # type: ignore[assignment]   # (preference, name)
        return f"{pair[0]} {str(pair[1]).rstrip('.')}."
    if rtype in ("PTR", "CNAME", "NS"):
        return f"{str(value).rstrip('.')}."
    if rtype == "TXT":
        return '"' + str(value).replace('"', '\\"') + '"'
    return str(value)
