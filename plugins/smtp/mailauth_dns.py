"""DNS answers for the mail authentication checks, asked through the server's shared resolver.

SPF, DKIM and DMARC each need a few record types (A, AAAA, MX, PTR, TXT).  Every question
goes to the resolver of ``dnsservice.xml`` (``server.dns``), never to the system's: the same
servers, cache and time limit as the rest of the server.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.name
import dns.resolver

from chainmail.remote.dns import DnsService, DnsTemporaryError

__all__ = ["records", "txt_records", "DnsTemporaryError"]

#: The record types the checks ask for.
TYPES = ("A", "AAAA", "MX", "PTR", "TXT")


async def records(service: DnsService, name: str, rdtype: str) -> list[Any]:
    """The rdata of ``name``'s ``rdtype`` records; ``[]`` for NXDOMAIN or none.  A lookup
    that cannot complete (timeout, SERVFAIL) raises :class:`DnsTemporaryError`."""
    if rdtype not in TYPES:
        raise ValueError(f"unsupported record type {rdtype!r}")
    try:
        answer = await service.resolver.resolve(name, rdtype, search=False,
                                                raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel,
            dns.name.IDNAException, dns.exception.SyntaxError):
        return []   # not a name DNS could hold: nothing there, not a temporary failure
    except dns.exception.DNSException as exc:
        raise DnsTemporaryError(f"DNS lookup of {name} {rdtype} failed: {exc}") from exc
    return list(answer.rrset) if answer.rrset is not None else []


async def txt_records(service: DnsService, name: str) -> list[bytes]:
    """The TXT records of ``name``, each with its character-strings joined (RFC 7208 §3.3,
    RFC 6376 §3.6.2.2).  Raises :class:`DnsTemporaryError`."""
    return [b"".join(r.strings) for r in await records(service, name, "TXT")]
