"""SPF (RFC 7208) evaluated by pyspf, its DNS questions answered by the server's resolver.

pyspf's evaluation is synchronous and recursive (include:, redirect=, a, mx, ptr, exists):
it runs in a worker thread, and each of its lookups is sent back to the trio loop, where the
shared resolver of ``dnsservice.xml`` answers it.  pyspf keeps its own limits (10 DNS
mechanisms, 2 void lookups, 10 MX/PTR names, a total time budget).

pyspf has no per-query hook for its lookups: its ``query.dns`` calls the module function
``spf.DNSLookup``.  That function is replaced once, at import, by a dispatcher that asks the
resolver bound to the calling thread by :func:`check_spf`; a thread without one (pyspf used
by something else in the process) gets pyspf's own lookup, unchanged.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Any, Callable

import spf
import trio

from chainmail.remote.dns import DnsService

from .mailauth_dns import DnsTemporaryError, records

__all__ = ["SpfOutcome", "check_spf", "TOTAL_TIME"]

#: Seconds one SPF evaluation may spend on DNS in all (pyspf's ``querytime``): past it the
#: result is temperror.
TOTAL_TIME = 20.0

_bound = threading.local()
_pyspf_lookup: Callable[..., Any] = spf.DNSLookup


def _dispatch(name, qtype, strict=True, timeout=30):
    """``spf.DNSLookup`` for every caller: the thread's bound resolver, else pyspf's own."""
    ask = getattr(_bound, "ask", None)
    if ask is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return ask(str(name), qtype)


spf.DNSLookup = _dispatch


@dataclass(frozen=True)
class SpfOutcome:
    """One SPF evaluation: ``result`` is RFC 7208's (pass, fail, softfail, neutral, none,
    permerror, temperror); ``domain`` the domain checked (MAIL FROM's, or the HELO name for
    the null sender); ``identity`` ``mailfrom`` or ``helo``; ``explanation`` pyspf's text
    (the domain's ``exp=`` for a fail when it has one); ``header`` the Received-SPF value."""

    result: str
    domain: str
    identity: str
    explanation: str
    header: str
    sender: str
    ip: str

    @property
    def default_explanation(self) -> bool:
        """Whether ``explanation`` is pyspf's generic text rather than the domain's own."""
        return self.explanation in spf.EXPLANATIONS.values() or self.explanation.startswith(
            ("SPF Permanent Error", "SPF Temporary Error"))


async def _answers(service: DnsService, name: str, qtype: str) -> list:
    """pyspf's ``DNSLookup`` answer format: ``[((name, qtype), value), ...]``."""
    found = await records(service, name, qtype)
    out: list = []
    for r in found:
        if qtype in ("A", "AAAA"):
            value: Any = r.address
        elif qtype == "MX":
            value = (int(r.preference), r.exchange.to_text(omit_final_dot=True))
        elif qtype == "PTR":
            value = r.target.to_text(omit_final_dot=True)
        else:
            value = list(r.strings)
        out.append(((name, qtype), value))
    return out


def _evaluate(service: DnsService, ip: str, sender: str, helo: str, receiver: str) -> SpfOutcome:
    """The evaluation, in a worker thread started by trio."""

    def ask(name: str, qtype: str) -> list:
        if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
            return []   # pyspf asks type SPF (99) only in its deprecated modes
        try:
            return trio.from_thread.run(_answers, service, name.rstrip("."), qtype)
        except DnsTemporaryError as exc:
            raise spf.TempError(f"DNS {exc}") from None

    query = spf.query(ip, sender, helo, receiver=receiver, timeout=TOTAL_TIME,
                      querytime=TOTAL_TIME)
    _bound.ask = ask
    try:
        result, _code, explanation = query.check()
    finally:
        _bound.ask = None
    if result == "ambiguous":   # harsh mode only; not an RFC 7208 result
        result = "permerror"
    header = query.get_header(result, receiver)
    return SpfOutcome(result=result, domain=query.o, identity=query.ident,
                      explanation=explanation, header=header, sender=query.s, ip=query.c)


async def check_spf(service: DnsService, ip: str, sender: str, helo: str,
                    receiver: str) -> SpfOutcome:
    """Evaluate SPF for a client ``ip`` giving MAIL FROM ``sender`` (``""`` for the null
    sender: ``postmaster@<helo>`` is checked, RFC 7208 §2.4) after HELO ``helo``."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        ip = str(address.ipv4_mapped)
    return await trio.to_thread.run_sync(_evaluate, service, ip, sender, helo, receiver)
