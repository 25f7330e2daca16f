"""DNS for outgoing mail: ``conf/dnsservice.xml`` and an async MX resolver on trio.

The file is James's ``dnsservice.xml``::

    <dnsservice>
      <servers>
        <server>127.0.0.1:5353</server>     <!-- port optional (53); IPv6 as [::1]:5353 -->
      </servers>
      <autodiscover>false</autodiscover>    <!-- true: add the system resolver's servers -->
      <authoritative>false</authoritative>
      <maxcachesize>50000</maxcachesize>
      <singleIPperMX>false</singleIPperMX>
      <timeout>5</timeout>                  <!-- chainmail: seconds per lookup -->
    </dnsservice>

As in James (``DNSJavaService``), ``autodiscover`` defaults to true and adds the servers of
``/etc/resolv.conf``; when no server is configured at all, 127.0.0.1 is used.

Lookups use dnspython's ``dns.asyncresolver.Resolver(configure=False)``, which runs on trio;
the system configuration is never read unless ``autodiscover`` asks for it.

Routing (RFC 5321 §5.1, RFC 7505, James's ``findMXRecords``): the MX targets sorted by
preference, equal preferences in random order; without MX records, the domain itself when
it has an address (implicit MX); a null MX (a single ``MX 0 .``) means the domain accepts
no mail, a permanent failure.  A domain that does not exist (NXDOMAIN) or has neither MX
nor address is reported with :class:`NoDnsEntries`; a lookup that could not complete
(timeout, SERVFAIL, no server answering) with :class:`DnsTemporaryError`.

The same service answers the SMTP handlers' questions (``server.dns``): A records of DNS
block-list names (:meth:`DnsService.a_records`, :func:`reversed_address`), TXT records, PTR
names and forward-confirmed reverse names (:meth:`DnsService.confirmed_names`).  With
``maxcachesize`` above 0 answers are cached for their TTL, negative ones (NXDOMAIN, no
records) too: for the SOA minimum of the answer, 300 s without one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
from dataclasses import dataclass, field
from typing import Iterable

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from ..config.errors import ConfigWarning
from ..config.xml import Reader, children_named, first_child, parse_file, text_of
from .config import split_host_port

__all__ = [
    "DnsServiceConfig", "parse_dnsservice", "load_dnsservice", "DnsError", "DnsTemporaryError",
    "NoDnsEntries", "NullMx", "MxHost", "DnsService", "reversed_address",
]

DEFAULT_PORT = 53
DEFAULT_TIMEOUT = 5.0
DEFAULT_CACHE = 50000

_KNOWN = {"servers", "autodiscover", "authoritative", "maxcachesize", "singleIPperMX",
          "verbose", "timeout", "searchdomains"}


@dataclass(frozen=True)
class DnsServiceConfig:
    """``dnsservice.xml``: the DNS servers to ask and how."""

    servers: tuple[tuple[str, int], ...] = ()
    autodiscover: bool = True
    authoritative: bool = False
    max_cache_size: int = DEFAULT_CACHE
    single_ip_per_mx: bool = False
    timeout: float = DEFAULT_TIMEOUT
    file: str = ""
    warnings: tuple[ConfigWarning, ...] = field(default=(), compare=False)

    def nameservers(self, resolv_conf: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
        """The servers to query: configured ones, then (autodiscover) the system's ones.

        No server at all gives 127.0.0.1:53, as in James.
        """
        out = list(self.servers)
        if self.autodiscover:
            for ip in system_nameservers(resolv_conf):
                if (ip, DEFAULT_PORT) not in out:
                    out.append((ip, DEFAULT_PORT))
        return out or [("127.0.0.1", DEFAULT_PORT)]


def system_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The ``nameserver`` lines of a resolv.conf file (missing file: none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
            except ValueError:
                continue
    return out


def parse_server(text: str) -> tuple[str, int]:
    """``127.0.0.1``, ``127.0.0.1:5353``, ``::1``, ``[::1]:5353`` -> ``(address, port)``."""
    host, port = split_host_port(text)
    ipaddress.ip_address(host)  # ValueError when not an IP address
    return host, port or DEFAULT_PORT


def parse_dnsservice(root, file: str) -> DnsServiceConfig:
    reader = Reader(file, collect=True)   # every error of the file at once
    if root.tag != "dnsservice":
        reader.fail(root, str(root.tag), "unexpected root element; expected <dnsservice>")
        reader.raise_errors()
    reader.check_children(root, _KNOWN)
    servers: list[tuple[str, int]] = []
    servers_el = first_child(root, "servers")
    if servers_el is not None:
        reader.check_children(servers_el, {"server"}, repeatable={"server"})
        for el in children_named(servers_el, "server"):
            raw = text_of(el)
            if not raw:
                continue
            try:
                server = parse_server(raw)
            except ValueError:
                reader.fail(el, "server", f"{raw!r} is not an IP address with an optional "
                                          "port; expected 127.0.0.1, 127.0.0.1:5353 or "
                                          "[::1]:5353")
                continue
            if server not in servers:
                servers.append(server)
    config = DnsServiceConfig(
        servers=tuple(servers),
        autodiscover=reader.child_bool(root, "autodiscover", True),
        authoritative=reader.child_bool(root, "authoritative", False),
        max_cache_size=reader.child_int(root, "maxcachesize", DEFAULT_CACHE, minimum=0) or 0,
        single_ip_per_mx=reader.child_bool(root, "singleIPperMX", False),
        timeout=reader.child_float(root, "timeout", DEFAULT_TIMEOUT, minimum=0.001),
        file=file,
        warnings=tuple(reader.warnings),
    )
    reader.raise_errors()
    return config


def load_dnsservice(path: str | os.PathLike[str]) -> DnsServiceConfig:
    """Read ``dnsservice.xml``; a missing file gives James's defaults (autodiscover)."""
    file = os.fspath(path)
    if not os.path.exists(file):
        return DnsServiceConfig(file=file)
    return parse_dnsservice(parse_file(file), file)


# ------------------------------------------------------------------------------ resolving

class DnsError(Exception):
    """A destination cannot be resolved."""

    permanent = False


class DnsTemporaryError(DnsError):
    """The lookup could not complete (timeout, SERVFAIL, no server answered): retry later."""


class NoDnsEntries(DnsError):
    """The domain has neither MX nor address records (``nxdomain``: it does not exist).

    James retries these ``maxDnsProblemRetries`` times before bouncing.
    """

    def __init__(self, domain: str, *, nxdomain: bool) -> None:
        self.domain = domain
        self.nxdomain = nxdomain
        super().__init__(f"There are no DNS entries for the hostname {domain}.  "
                         "I cannot determine where to send this message.")


class NullMx(DnsError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""

    permanent = True

    def __init__(self, domain: str) -> None:
        self.domain = domain
        # RFC 7505 §4.2: report it with the enhanced status 5.1.10.
        super().__init__(f"5.1.10 Domain {domain} does not accept mail (null MX, RFC 7505)")


@dataclass(frozen=True)
class MxHost:
    """One mail exchanger: its name, preference, and addresses (IPv4 first)."""

    name: str
    preference: int
    addresses: tuple[str, ...] = ()
    implicit: bool = False   # the domain itself, for lack of MX records


def _name(text: str) -> str:
    return text.rstrip(".").lower()


def reversed_address(address: str) -> str:
    """The labels of a DNS block-list question for an IP address, without zone: the octets
    of an IPv4 address in reverse order (``192.0.2.1`` -> ``1.2.0.192``), the 32 nibbles of
    an IPv6 address in reverse order (RFC 5782 §2.4); an IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``, a dual-stack socket's view of an IPv4 client) as its IPv4 address.
    ``ValueError`` for a non-address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    reverse = dns.reversename.from_address(str(ip))
    return reverse.relativize(dns.name.from_text(
        "in-addr.arpa." if ip.version == 4 else "ip6.arpa.")).to_text()


class DnsService:
    """MX and address lookups against the configured servers.

    ``rng`` orders exchangers of equal preference (tests pass a seeded ``random.Random``).
    """

    def __init__(self, config: DnsServiceConfig | None = None, *,
                 nameservers: Iterable[tuple[str, int]] | None = None,
                 timeout: float | None = None, rng: random.Random | None = None,
                 resolv_conf: str = "/etc/resolv.conf") -> None:
        self.config = config or DnsServiceConfig(autodiscover=False)
        servers = list(nameservers) if nameservers is not None else self.config.nameservers(resolv_conf)
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
        r.timeout = r.lifetime = timeout if timeout is not None else self.config.timeout
        if self.config.max_cache_size:
            r.cache = dns.resolver.LRUCache(self.config.max_cache_size)
        self.resolver = r
        self.rng = rng or random.Random()

    async def _query(self, name: str, rdtype: str):
        """The answer's records, ``[]`` for no records of that type; NXDOMAIN propagates."""
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False,
                                                 raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"DNS lookup of {name} {rdtype} failed: {exc}") from exc
        return list(answer.rrset) if answer.rrset is not None else []

    async def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of ``host`` (an IP literal is returned as is)."""
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host.strip("[]")))]
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                out += [r.address for r in await self._query(host, rdtype)]
            except dns.resolver.NXDOMAIN:
                return []
        return out

    async def a_records(self, name: str) -> list[str]:
        """The IPv4 addresses of ``name`` (A records only, as DNS block lists answer);
        ``[]`` for NXDOMAIN or no A record.  Raises :class:`DnsTemporaryError`."""
        try:
            return [r.address for r in await self._query(name, "A")]
        except dns.resolver.NXDOMAIN:
            return []

    async def confirmed_names(self, address: str) -> list[str]:
        """The reverse names of ``address`` that resolve back to it (forward-confirmed
        reverse DNS, as Java's ``InetAddress.getHostName`` checks); ``[]`` for none.  At most
        ten PTR names are followed.  Raises :class:`DnsTemporaryError`."""
        ip = ipaddress.ip_address(address)
        out = []
        for name in (await self.ptr(str(ip)))[:10]:
            found = await self.addresses(name)
            if any(ipaddress.ip_address(a) == ip for a in found):
                out.append(name)
        return out

    async def txt(self, name: str) -> list[str]:
        """The TXT records of ``name``, each one string (its character-strings joined, as
        RFC 7208 §3.3 reads them); ``[]`` for NXDOMAIN or no TXT records.  Raises
        :class:`DnsTemporaryError`."""
        try:
            records = await self._query(name, "TXT")
        except dns.resolver.NXDOMAIN:
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]

    async def ptr(self, address: str) -> list[str]:
        """The reverse names of an IP address (lower case, no final dot); ``[]`` for none.
        Raises :class:`DnsTemporaryError`."""
        name = dns.reversename.from_address(address).to_text()
        try:
            records = await self._query(name, "PTR")
        except dns.resolver.NXDOMAIN:
            return []
        return [r.target.to_text(omit_final_dot=True).lower() for r in records]

    async def find_mx(self, domain: str) -> list[tuple[int, str]]:
        """The MX targets as ``(preference, name)``, best first, equal preferences shuffled.

        ``[]`` when the domain has no MX records.  Raises :class:`NullMx`,
        :class:`NoDnsEntries` (NXDOMAIN) or :class:`DnsTemporaryError`.
        """
        domain = _name(domain)
        try:
            records = await self._query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise NoDnsEntries(domain, nxdomain=True) from None
        if any(r.exchange == dns.name.root for r in records):
            if len(records) == 1:
                raise NullMx(domain)
            # RFC 7505 §3: a null MX among other records is a misconfiguration; skip it.
            records = [r for r in records if r.exchange != dns.name.root]
        mx = [(int(r.preference), r.exchange.to_text(omit_final_dot=True).lower()) for r in records]
        keyed = [(p, self.rng.random(), n) for p, n in mx]
        keyed.sort()
        return [(p, n) for p, _, n in keyed]

    async def route(self, domain: str) -> list[MxHost]:
        """The exchangers to try for ``domain``, in order, each with its addresses.

        Exchangers whose names do not resolve are left out; when no exchanger has an
        address, :class:`NoDnsEntries` is raised.
        """
        domain = _name(domain)
        mx = await self.find_mx(domain)
        hosts: list[MxHost] = []
        if not mx:
            addrs = await self.addresses(domain)
            if not addrs:
                raise NoDnsEntries(domain, nxdomain=False)
            return [MxHost(domain, 0, tuple(addrs), implicit=True)]
        for pref, name in mx:
            addrs = await self.addresses(name)
            if self.config.single_ip_per_mx:
                addrs = addrs[:1]
            if addrs:
                hosts.append(MxHost(name, pref, tuple(addrs)))
        if not hosts:
            raise NoDnsEntries(domain, nxdomain=False)
        return hosts
