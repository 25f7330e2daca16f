"""``domainlist.xml``: the local domains (James's DomainList).

::

    <domainlist class="org.apache.james.domainlist.memory.MemoryDomainList">
        <domainnames>
            <domainname>example.com</domainname>
        </domainnames>
        <autodetect>false</autodetect>
        <autodetectIP>false</autodetectIP>
        <defaultDomain>example.com</defaultDomain>
    </domainlist>

Domains are lower-cased and validated.  The default domain is always a local
domain.  ``autodetect`` adds the machine's host name (``socket.gethostname()``,
no DNS).  ``autodetectIP`` is recorded but cannot add anything without DNS.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

from lxml import etree

from .errors import ConfigError, ConfigErrors, ConfigWarning
from .xml import Reader, children_named, first_child, parse_file, text_of

__all__ = ["DomainListConfig", "load_domainlist", "read_domainlist", "parse_domainlist", "normalise_domain",
           "normalize_domain"]

_KNOWN = {"domainnames", "autodetect", "autodetectIP", "defaultDomain", "cache"}


@dataclass(frozen=True)
class DomainListConfig:
    domains: tuple[str, ...] = ("localhost",)
    default_domain: str = "localhost"
    autodetect: bool = True
    autodetect_ip: bool = True
    file: str = ""
    line: int = 0
    _lookup: frozenset[str] = field(init=False, compare=False, repr=False, hash=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", frozenset(_canonical(d) for d in self.domains))

    def contains(self, domain: str) -> bool:
        """Is ``domain`` local?  Compared in the canonical form of :func:`normalise_domain`."""
        try:
            return normalise_domain(domain) in self._lookup
        except (ValueError, TypeError):
            return False

    __contains__ = contains


_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_EXPECTED = "expected a domain name such as example.com or an address literal such as [192.0.2.1]"


def _canonical(domain: str) -> str:
    try:
        return normalise_domain(domain)
    except ValueError:
        return domain.lower()


def normalise_domain(text: str) -> str:
    """The canonical form of a domain name or address literal; ``ValueError`` if invalid.

    The one rule for domainlist.xml, the domain store and the CLI, so that a domain is
    written the same way wherever it is compared.  Names are lower-cased, lose one
    trailing dot and must be RFC 1035/1123 host names (labels of letters, digits and
    inner hyphens, at most 63 octets, 253 in all, the last label not all digits);
    non-ASCII names take their IDNA (``xn--``) form.  IP addresses, bare or as address
    literals, become ``[192.0.2.1]`` or ``[ipv6:2001:db8::1]``.
    """
    if not isinstance(text, str):
        raise TypeError(f"domain must be a str, not {type(text).__name__}")
    name = text.strip()
    if name.startswith("["):
        return _normalise_literal(text, name)
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError(f"invalid domain {text!r}: empty name; {_EXPECTED}")
    try:
        return _literal(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid domain {text!r}: not a valid internationalised name "
                             f"({exc}); {_EXPECTED}") from None
    name = name.lower()
    if len(name) > 253:
        raise ValueError(f"invalid domain {text!r}: longer than 253 characters; {_EXPECTED}")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"invalid domain {text!r}: empty label; {_EXPECTED}")
        if not _HOST_LABEL_RE.fullmatch(label):
            raise ValueError(f"invalid domain {text!r}: label {label!r} must be 1-63 letters, "
                             f"digits or hyphens, not starting or ending with a hyphen; {_EXPECTED}")
    if labels[-1].isdigit():
        raise ValueError(f"invalid domain {text!r}: the last label must not be all digits; "
                         f"{_EXPECTED}")
    return name


def _literal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if addr.version == 6:
        return f"[ipv6:{addr.compressed}]"
    return f"[{addr}]"


def _normalise_literal(text: str, name: str) -> str:
    if not name.endswith("]"):
        raise ValueError(f"invalid address literal {text!r}: missing ']'; {_EXPECTED}")
    inner = name[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return _literal(ipaddress.IPv6Address(inner[5:]))
        return _literal(ipaddress.IPv4Address(inner))
    except ValueError:
        raise ValueError(f"invalid address literal {text!r}: expected [IPv4 address] or "
                         f"[IPv6:address]") from None


def _hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""


def _build(
    reader: Reader,
    configured: list[str],
    default_domain: str,
    autodetect: bool,
    autodetect_ip: bool,
    line: int,
) -> DomainListConfig:
    domains: list[str] = []
    for d in configured + [default_domain]:
        if d not in domains:
            domains.append(d)
    if autodetect:
        host = _hostname()
        try:
            host = normalise_domain(host)
        except ValueError:
            if host:
                reader.warn(line or None, "autodetect", f"host name {host!r} is not a valid domain and is not added")
            host = ""
        if host and host not in domains:
            domains.append(host)
    return DomainListConfig(
        domains=tuple(domains),
        default_domain=default_domain,
        autodetect=autodetect,
        autodetect_ip=autodetect_ip,
        file=reader.file,
        line=line,
    )


def parse_domainlist(root: etree._Element, file: str) -> tuple[DomainListConfig, list[ConfigWarning]]:
    """Build the configuration from a parsed document; every error is raised at once."""
    config, warnings, errors = collect_domainlist(root, file)
    if errors:
        raise ConfigErrors.of(errors)
    return config, warnings


def collect_domainlist(root: etree._Element, file: str,
                       ) -> tuple[DomainListConfig, list[ConfigWarning], list[ConfigError]]:
    """Every error of the document in one pass; a bad entry is left out, a bad value is
    read as its default."""
    reader = Reader(file, collect=True)
    if root.tag != "domainlist":
        reader.fail(root, str(root.tag), "unexpected root element; expected <domainlist>")
        return DomainListConfig(file=file), reader.warnings, reader.errors
    reader.check_children(root, _KNOWN)
    configured: list[str] = []
    names_el = first_child(root, "domainnames")
    if names_el is not None:
        reader.check_children(names_el, {"domainname"}, repeatable={"domainname"})
        for el in children_named(names_el, "domainname"):
            raw = text_of(el)
            if not raw:
                continue  # James skips empty entries
            try:
                d = normalise_domain(raw)
            except ValueError as exc:
                reader.fail(el, "domainname", str(exc))
                continue
            if d not in configured:
                configured.append(d)
    default_el = first_child(root, "defaultDomain")
    default_domain = "localhost"
    if default_el is not None and text_of(default_el):
        try:
            default_domain = normalise_domain(text_of(default_el))
        except ValueError as exc:
            reader.fail(default_el, "defaultDomain", str(exc))
    autodetect = reader.child_bool(root, "autodetect", True)
    autodetect_ip = reader.child_bool(root, "autodetectIP", True)
    config = _build(reader, configured, default_domain, autodetect, autodetect_ip, root.sourceline or 0)
    return config, reader.warnings, sorted(reader.errors, key=lambda e: e.line or 0)


def load_domainlist(path: str | os.PathLike[str]) -> tuple[DomainListConfig, list[ConfigWarning]]:
    """Read ``domainlist.xml``; a missing file gives the James defaults."""
    config, warnings, errors = read_domainlist(path)
    if errors:
        raise ConfigErrors.of(errors)
    return config, warnings


def read_domainlist(path: str | os.PathLike[str],
                    ) -> tuple[DomainListConfig, list[ConfigWarning], list[ConfigError]]:
    """:func:`load_domainlist` that returns every error instead of raising."""
    file = os.fspath(path)
    if not os.path.exists(file):
        reader = Reader(file)
        return _build(reader, [], "localhost", True, True, 0), reader.warnings, []
    try:
        root = parse_file(file)
    except ConfigError as exc:
        return DomainListConfig(file=file), [], [exc]
    return collect_domainlist(root, file)


#: The same function under the spelling of :mod:`chainmail.store.domains`.
normalize_domain = normalise_domain
