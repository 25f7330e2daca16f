"""DANE for SMTP (RFC 7672): TLSA records, found through DNSSEC, authenticate the exchanger.

The AD ("authenticated data") bit of an answer is trusted only when the operator says the
resolver in ``dnsservice.xml`` validates DNSSEC (RemoteDelivery's ``dnssec`` parameter): the
resolver must then be on a trusted path (loopback).  :class:`SecureDns` asks the same servers
as :class:`chainmail.remote.dns.DnsService` with the DO and AD flags set.

What is checked (RFC 7672 §2.2):

- the MX RRset of the destination must be secure (AD); otherwise DANE does not apply to the
  domain (its MX names could have been forged);
- per MX host, its address lookup (A, else AAAA) must be secure; then ``_25._tcp.<host>``
  TLSA is looked up.  A secure answer with usable records (usage 2 or 3, selector 0 or 1,
  matching type 0, 1 or 2) makes DANE mandatory for that host; no records (or an insecure
  answer) leave the host to the other policies; a failed TLSA lookup makes the host unusable
  for this attempt (§2.2: it could be an attack hiding the records);
- CNAMEs are followed by the resolver; the TLSA base name is the MX host name as published.

Matching (RFC 7672 §3, RFC 6698 §2.1): DANE-EE(3) matches the server's own certificate and
ignores names and dates; DANE-TA(2) matches a certificate of the presented chain, which must
then carry the leaf by valid signatures and name the MX host (or the destination domain).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from dataclasses import dataclass
from typing import Sequence

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import (
    Criticality, DNSName, ExtensionPolicy, PolicyBuilder, Store, VerificationError,
)

from .dns import DnsService

__all__ = ["Tlsa", "SecureDns", "DaneLookupError", "match_chain", "usable"]

log = logging.getLogger("chainmail.remote.dane")

DANE_TA, DANE_EE = 2, 3


class DaneLookupError(Exception):
    """A DNSSEC lookup could not complete: the host cannot be used safely now."""


@dataclass(frozen=True)
class Tlsa:
    """One TLSA record: usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def usable(records: Sequence[Tlsa]) -> list[Tlsa]:
    """The records RFC 7672 lets SMTP use: DANE-TA/DANE-EE, selector 0/1, matching 0/1/2."""
    return [r for r in records if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1)
            and r.mtype in (0, 1, 2)]


class SecureDns:
    """Lookups whose answers say whether DNSSEC validated them (the AD bit)."""

    def __init__(self, service: DnsService) -> None:
        self.resolver = _resolver_like(service.resolver)

    async def _ask(self, name: str, rdtype: str) -> tuple[bool, list]:
        """``(secure, records)``; NXDOMAIN is ``(secure, [])``."""
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False,
                                                 raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())
            secure = bool(responses) and all(m.flags & dns.flags.AD for m in responses)
            return secure, []
        except dns.exception.DNSException as exc:
            raise DaneLookupError(f"DNSSEC lookup of {name} {rdtype} failed: {exc}") from exc
        secure = bool(answer.response.flags & dns.flags.AD)
        return secure, list(answer.rrset) if answer.rrset is not None else []

    async def mx_secure(self, domain: str) -> bool:
        """True when the MX answer of ``domain`` (records or none) is DNSSEC-validated."""
        secure, _ = await self._ask(domain, "MX")
        return secure

    async def host_secure(self, host: str) -> bool:
        """True when the host's A (else AAAA) answer is DNSSEC-validated."""
        secure, records = await self._ask(host, "A")
        if records:
            return secure
        secure6, records6 = await self._ask(host, "AAAA")
        return secure6 and bool(records6)

    async def tlsa(self, host: str, port: int = 25) -> list[Tlsa]:
        """The usable TLSA records of ``_<port>._tcp.<host>`` when the answer is secure, else
        ``[]``.  Raises :class:`DaneLookupError` when the lookup fails."""
        secure, records = await self._ask(f"_{port}._tcp.{host}", "TLSA")
        if not secure:
            return []
        return usable([Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
                       for r in records])


def _resolver_like(base: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
    """A resolver for the same servers and timeouts that asks for DNSSEC data (DO) and the
    validation result (AD); its own cache (when the service caches), so that plain answers
    never stand in for them."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = list(base.nameservers)
    resolver.timeout, resolver.lifetime = base.timeout, base.lifetime
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.use_edns(0, dns.flags.DO, 1232)
    if base.cache is not None:
        resolver.cache = dns.resolver.LRUCache(1000)
    return resolver


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(Encoding.DER)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def matches(record: Tlsa, cert: x509.Certificate) -> bool:
    """Whether ``cert`` is the one ``record`` names."""
    return _digest(_selected(cert, record.selector), record.mtype) == record.data


def match_chain(chain_der: Sequence[bytes], records: Sequence[Tlsa],
                names: Sequence[str]) -> str | None:
    """None when the presented chain (leaf first) satisfies one of ``records``, else why not.

    DANE-EE: the leaf matches.  DANE-TA: a certificate of the chain matches and the chain
    from the leaf up to it verifies (signatures, validity, CA constraints) with one of
    ``names`` in the leaf.
    """
    if not chain_der:
        return "the server presented no certificate"
    try:
        chain = [x509.load_der_x509_certificate(c) for c in chain_der]
    except ValueError as exc:
        return f"the server's certificate cannot be read: {exc}"
    leaf = chain[0]
    for record in records:
        if record.usage == DANE_EE and matches(record, leaf):
            return None
    for record in records:
        if record.usage != DANE_TA:
            continue
        for index, anchor in enumerate(chain):
            if matches(record, anchor) and _chain_ok(leaf, chain[1:index], anchor, names):
                return None
    listed = ", ".join(str(r) for r in records)
    return f"no TLSA record matches the certificate chain ({listed})"


def _chain_ok(leaf: x509.Certificate, intermediates: list[x509.Certificate],
              anchor: x509.Certificate, names: Sequence[str]) -> bool:
    if anchor is leaf:   # a TA record naming the leaf itself: only the name is left to check
        return any(_names_leaf(leaf, n) for n in names)
    now = datetime.datetime.now(datetime.timezone.utc)
    # The Web PKI rules for CAs; for the server's own certificate only what DANE needs (a
    # subjectAltName naming the host), as RFC 7671 does not impose the browsers' profile.
    leaf_rules = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    for name in names:
        try:
            verifier = PolicyBuilder().store(Store([anchor])).time(now).extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_rules,
            ).build_server_verifier(DNSName(name))
            verifier.verify(leaf, intermediates)
            return True
        except (VerificationError, ValueError) as exc:
            log.debug("DANE-TA chain for %s: %s", name, exc)
    return False


def _names_leaf(leaf: x509.Certificate, name: str) -> bool:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    for dnsname in san.get_values_for_type(x509.DNSName):
        pattern = dnsname.lower().rstrip(".")
        if pattern == name or (pattern.startswith("*.") and name.partition(".")[2] == pattern[2:]):
            return True
    return False
