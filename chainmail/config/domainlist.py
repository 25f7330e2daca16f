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

from .errors import ConfigWarning
from .xml import Reader, children_named, first_child, parse_file, text_of

__all__ = ["DomainListConfig", "load_domainlist", "parse_domainlist", "normalise_domain"]

_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
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
        object.__setattr__(self, "_lookup", frozenset(d.lower() for d in self.domains))

    def contains(self, domain: str) -> bool:
        """Is ``domain`` local?  Case-insensitive; a trailing dot is ignored."""
        d = domain.lower()
        if d.endswith("."):
            d = d[:-1]
        return d in self._lookup

    __contains__ = contains


def normalise_domain(text: str) -> str:
    """Lower-case and validate a domain name; raises ``ValueError`` with the reason.

    Accepts host names (``mail.example.com``, ``localhost``), internationalised
    names, and IP literals (``127.0.0.1``, ``[127.0.0.1]``, ``[IPv6:::1]``).
    """
    value = text.strip().lower()
    expected = "expected a domain name such as example.com (letters, digits, '-' and '.') or an IP literal"
    if not value:
        raise ValueError(f"empty domain; {expected}")
    if value.startswith("[") and value.endswith("]"):
        inner = value[1:-1]
        if inner.startswith("ipv6:"):
            inner = inner[5:]
        try:
            ipaddress.ip_address(inner)
        except ValueError:
            raise ValueError(f"{text.strip()!r} is not a valid address literal; {expected}") from None
        return value
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if value.endswith("."):
        value = value[:-1]
    if "@" in value or not value or len(value) > 253:
        raise ValueError(f"{text.strip()!r} is not a valid domain; {expected}")
    try:
        ascii_form = value.encode("idna").decode("ascii") if not value.isascii() else value
    except UnicodeError:
        raise ValueError(f"{text.strip()!r} is not a valid domain; {expected}") from None
    labels = ascii_form.split(".")
    if any(not _LABEL_RE.match(label) for label in labels):
        raise ValueError(f"{text.strip()!r} is not a valid domain; {expected}")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{text.strip()!r} is not a valid domain or IP address; {expected}")
    return value


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
    reader = Reader(file)
    if root.tag != "domainlist":
        raise reader.error(root, str(root.tag), "unexpected root element; expected <domainlist>")
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
                raise reader.error(el, "domainname", str(exc)) from None
            if d not in configured:
                configured.append(d)
    default_el = first_child(root, "defaultDomain")
    default_domain = "localhost"
    if default_el is not None and text_of(default_el):
        try:
            default_domain = normalise_domain(text_of(default_el))
        except ValueError as exc:
            raise reader.error(default_el, "defaultDomain", str(exc)) from None
    autodetect = reader.child_bool(root, "autodetect", True)
    autodetect_ip = reader.child_bool(root, "autodetectIP", True)
    config = _build(reader, configured, default_domain, autodetect, autodetect_ip, root.sourceline or 0)
    return config, reader.warnings


def load_domainlist(path: str | os.PathLike[str]) -> tuple[DomainListConfig, list[ConfigWarning]]:
    """Read ``domainlist.xml``; a missing file gives the James defaults."""
    file = os.fspath(path)
    if not os.path.exists(file):
        reader = Reader(file)
        return _build(reader, [], "localhost", True, True, 0), reader.warnings
    return parse_domainlist(parse_file(file), file)
