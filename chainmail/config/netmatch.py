"""``authorizedAddresses``: the set of client networks allowed to relay without AUTH.

Accepted entries (separated by commas and/or whitespace), as James's ``NetMatcher``:

* ``192.168.0.1``            a single IPv4 address (``/32``)
* ``192.168.0.0/24``         CIDR
* ``192.168.0.0/255.255.255.0``  address and netmask
* ``127.*``, ``10.1.*``, ``10.1.*.*``  IPv4 wildcards on whole octets
* ``*``                      everything (IPv4 and IPv6)
* ``localhost``, ``localhost/8``   the name ``localhost`` (127.0.0.1, plus ``::1``)
* ``2001:db8::/32``, ``2001:db8::%32``, ``::1``   IPv6, prefix after ``/`` or ``%``

Host names other than ``localhost`` are *not* resolved (no DNS lookups while
loading the configuration); they are dropped with a warning, as are malformed
entries.  IPv4-mapped IPv6 client addresses (``::ffff:1.2.3.4``) match IPv4
entries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from .errors import ConfigWarning

__all__ = ["NetworkSet"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SPLIT_RE = re.compile(r"[,\s]+")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")

# The only names resolved, from a static table: never the system resolver.
_STATIC_HOSTS: dict[str, tuple[str, ...]] = {"localhost": ("127.0.0.1", "::1")}

_CACHE_MAX = 4096


class NetworkSet:
    """An immutable set of IPv4/IPv6 networks with a fast, cached :meth:`contains`."""

    def __init__(
        self,
        text: str | Iterable[str] | None = None,
        *,
        file: str = "",
        line: int | None = None,
        element: str = "authorizedAddresses",
    ) -> None:
        self.warnings: list[ConfigWarning] = []
        self._file = file
        self._line = line
        self._element = element
        self._all = False
        networks: list[IPNetwork] = []
        if text is None:
            tokens: list[str] = []
        elif isinstance(text, str):
            tokens = [t for t in _SPLIT_RE.split(text.strip()) if t]
        else:
            tokens = [t for item in text for t in _SPLIT_RE.split(item.strip()) if t]
        for token in tokens:
            if token == "*":
                self._all = True
                continue
            for net in self._parse_entry(token):
                if net not in networks:
                    networks.append(net)
        self._networks: tuple[IPNetwork, ...] = tuple(networks)
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 6)
        self._cache: dict[str, bool] = {}

    # -- parsing ---------------------------------------------------------------------------
    def _warn(self, token: str, why: str) -> None:
        self.warnings.append(ConfigWarning(self._file, self._line, self._element, f"entry {token!r} dropped: {why}"))

    def _parse_entry(self, token: str) -> list[IPNetwork]:
        if ":" in token:
            return self._parse_v6(token)
        if "*" in token:
            return self._parse_wildcard(token)
        host, sep, mask = token.partition("/")
        if sep and not mask:
            self._warn(token, "empty mask; expected a prefix length or a dotted netmask after '/'")
            return []
        try:
            ipaddress.IPv4Address(host)
            is_ip = True
        except ValueError:
            is_ip = False
        if is_ip:
            return self._v4_network(token, host, mask)
        static = _STATIC_HOSTS.get(host.lower().rstrip("."))
        if static is not None:
            out: list[IPNetwork] = []
            for addr in static:
                if ":" in addr:
                    out.append(ipaddress.IPv6Network(addr + "/128"))
                else:
                    out.extend(self._v4_network(token, addr, mask))
            return out
        if _HOSTNAME_RE.match(host) and not host.replace(".", "").isdigit():
            self._warn(
                token,
                "host names are not resolved (only 'localhost' is known); "
                "expected an IP address, a network such as 10.0.0.0/8, or a wildcard such as 10.*",
            )
            return []
        self._warn(token, "not an IP address, network, wildcard or host name; expected e.g. 127.0.0.1, 10.0.0.0/8, 10.*, ::1/128")
        return []

    def _v4_network(self, token: str, host: str, mask: str) -> list[IPNetwork]:
        spec = f"{host}/{mask}" if mask else f"{host}/32"
        try:
            return [ipaddress.IPv4Network(spec, strict=False)]
        except ValueError:
            self._warn(token, f"invalid mask {mask!r}; expected a prefix length 0-32 or a dotted netmask such as 255.255.0.0")
            return []

    def _parse_v6(self, token: str) -> list[IPNetwork]:
        addr, prefix = token, ""
        m = re.match(r"^\[([^\]]+)\](?:[/%](.*))?$", token)
        if m:
            addr, prefix = m.group(1), m.group(2) or ""
        else:
            for sep in ("/", "%"):
                if sep in token:
                    addr, _, prefix = token.partition(sep)
                    break
        if prefix and not prefix.isdigit():
            self._warn(token, f"invalid IPv6 prefix {prefix!r}; expected addr/prefix with a prefix length 0-128")
            return []
        try:
            net = ipaddress.IPv6Network(f"{addr}/{prefix or 128}", strict=False)
        except ValueError:
            self._warn(token, "not a valid IPv6 address or network; expected e.g. ::1, 2001:db8::/32 or 2001:db8::%32")
            return []
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return [ipaddress.IPv4Network((int(mapped), net.prefixlen - 96), strict=False)]
        return [net]

    def _parse_wildcard(self, token: str) -> list[IPNetwork]:
        parts = token.split(".")
        expected = "expected whole-octet IPv4 wildcards such as 127.*, 10.1.* or 10.1.*.*"
        if len(parts) > 4:
            self._warn(token, f"too many octets; {expected}")
            return []
        fixed: list[int] = []
        seen_star = False
        for part in parts:
            if part == "*":
                seen_star = True
                continue
            if seen_star or not part.isdigit() or int(part) > 255:
                self._warn(token, expected)
                return []
            fixed.append(int(part))
        if not fixed:
            return [ipaddress.IPv4Network("0.0.0.0/0")]
        octets = fixed + [0] * (4 - len(fixed))
        return [ipaddress.IPv4Network((bytes(octets), 8 * len(fixed)))]

    # -- queries ---------------------------------------------------------------------------
    def contains(self, ip: str) -> bool:
        """True when the client address ``ip`` belongs to one of the networks.

        Unparsable addresses never match.  Results are cached per address string.
        """
        key = ip if isinstance(ip, str) else str(ip)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = self._lookup(key)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = result
        return result

    __contains__ = contains

    def _lookup(self, ip: str) -> bool:
        text = ip.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if "%" in text:  # IPv6 zone id (fe80::1%eth0)
            text = text.split("%", 1)[0]
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return False
        if self._all:
            return True
        if addr.version == 6:
            mapped = addr.ipv4_mapped
            if mapped is not None:
                addr = mapped
        value = int(addr)
        table = self._v4 if addr.version == 4 else self._v6
        for net, mask in table:
            if value & mask == net:
                return True
        return False

    @property
    def matches_all(self) -> bool:
        return self._all

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return self._networks

    @property
    def entries(self) -> tuple[str, ...]:
        """Normalised entries (``*`` first when everything is allowed)."""
        head = ("*",) if self._all else ()
        return head + tuple(str(n) for n in self._networks)

    @property
    def empty(self) -> bool:
        return not self._all and not self._networks

    def __bool__(self) -> bool:
        return not self.empty

    def __str__(self) -> str:
        return ", ".join(self.entries)

    def __repr__(self) -> str:
        return f"NetworkSet({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NetworkSet):
            return NotImplemented
        return self._all == other._all and set(self._networks) == set(other._networks)

    def __hash__(self) -> int:
        return hash((self._all, frozenset(self._networks)))
