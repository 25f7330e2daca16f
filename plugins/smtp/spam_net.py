"""What the spam filter clients share: where a filter runs, its host name turned into an
address without the system resolver (an IP literal as is, ``localhost`` as the loopback
address, any other name through the server's ``dnsservice.xml`` resolver, so that a filter
configured by name follows the same DNS as the rest of the server), and the checks of their
parameters."""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

__all__ = ["FilterUnavailable", "get_float", "get_port", "get_seconds", "resolve_host",
           "split_http_url"]


class FilterUnavailable(Exception):
    """The filter could not be asked (refused, timed out, unresolvable, garbled answer)."""


def _literal(host: str) -> str | None:
    text = host.strip().strip("[]")
    if text.lower() in ("localhost", "localhost."):
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def resolve_host(host: str, dns: Callable[[], Any] | None) -> str:
    """The address to connect to for ``host``; ``dns`` gives the resolver (called only for a
    name that is neither an IP literal nor ``localhost``)."""
    literal = _literal(host)
    if literal is not None:
        return literal
    if dns is None:
        raise FilterUnavailable(f"{host}: no resolver to look the name up")
    from chainmail.remote.dns import DnsError
    lookup: Callable[[str], Awaitable[list[str]]] = dns().addresses
    try:
        addresses = await lookup(host)
    except DnsError as exc:
        raise FilterUnavailable(f"{host}: {exc}") from None
    if not addresses:
        raise FilterUnavailable(f"{host}: the name has no address")
    return addresses[0]


def split_http_url(url: str) -> SplitResult:
    """``url`` checked to be ``http://host[:port][/path]`` (``https`` too); ValueError if not."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    _ = parts.port   # raises ValueError for a port out of range
    return parts


def get_float(config, key: str, default: float, minimum: float = 0.0) -> float:
    """A decimal parameter (``15.0``); a configuration error naming it when malformed."""
    value = config.get(key)
    if value is None or not value.strip():
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise config.error(key, f"{value.strip()!r} is not a number (expected e.g. 15.0)") from None
    if not number >= minimum or number == float("inf"):
        raise config.error(key, f"{value.strip()} is out of range (expected a number >= {minimum:g})")
    return number


def get_seconds(config, key: str, default: float) -> float:
    """A timeout in seconds (decimals allowed), above 0."""
    seconds = get_float(config, key, default)
    if seconds <= 0:
        raise config.error(key, "expected a number of seconds above 0")
    return seconds


def get_port(config, key: str, default: int) -> int:
    """A TCP port, 1 to 65535."""
    port = config.get_int(key, default, minimum=1)
    if port > 65535:
        raise config.error(key, f"{port} is not a TCP port (expected 1-65535)")
    return port
