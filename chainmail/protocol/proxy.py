"""HAProxy PROXY protocol headers, versions 1 (text) and 2 (binary): bytes in, result out.

Specification: haproxy's ``doc/proxy-protocol.txt``.  Only what SMTP needs: TCP over IPv4 and
IPv6, and the ``LOCAL``/``UNKNOWN`` forms (health checks from the proxy itself), which mean
"use the real connection's addresses".  TLVs of version 2 are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["ProxyHeader", "ProxyError", "parse_proxy_header", "V2_SIGNATURE", "MAX_HEADER"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107          # "PROXY" line, CRLF included (spec §2.1)
MAX_HEADER = 16 + 65535


class ProxyError(ValueError):
    """A malformed or unsupported header: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``source``/``destination`` are ``(ip, port)``, or None for LOCAL/UNKNOWN."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes the header occupied


def parse_proxy_header(data: bytes | bytearray) -> ProxyHeader | None:
    """Return the header at the start of ``data``, or None if more bytes are needed.
    Raises :class:`ProxyError` as soon as the bytes cannot be a valid header."""
    if not data:
        return None
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    raise ProxyError("no PROXY protocol header")


def _parse_v1(data) -> ProxyHeader | None:
    head = bytes(data[:6])
    if not b"PROXY ".startswith(head):
        raise ProxyError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyError("PROXY v1 line too long or not CRLF-terminated")
        return None
    line = bytes(data[:end])
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 header is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, None, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"malformed PROXY v1 header {line[:60]!r}")
    _, proto, src, dst, sport, dport = parts
    version = 4 if proto == "TCP4" else 6
    try:
        src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        ports = [int(p) for p in (sport, dport)]
    except ValueError:
        raise ProxyError(f"malformed PROXY v1 addresses {line[:60]!r}") from None
    if src_ip.version != version or dst_ip.version != version or \
            any(not 0 <= p <= 65535 or (s != "0" and s.startswith("0")) for p, s in zip(ports, (sport, dport))):
        raise ProxyError(f"malformed PROXY v1 addresses {line[:60]!r}")
    return ProxyHeader(1, (str(src_ip), ports[0]), (str(dst_ip), ports[1]), end + 2)


def _parse_v2(data) -> ProxyHeader | None:
    n = min(len(data), 12)
    if data[:n] != V2_SIGNATURE[:n]:
        raise ProxyError("no PROXY protocol header")
    if len(data) < 16:
        return None
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"unsupported PROXY protocol version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"unsupported PROXY v2 command {command}")
    total = 16 + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the proxy speaking for itself
        return ProxyHeader(2, None, None, total)
    family, transport = fam >> 4, fam & 0x0F
    body = bytes(data[16:total])
    if family == 0 and transport == 0:  # UNSPEC
        return ProxyHeader(2, None, None, total)
    if transport != 1:
        raise ProxyError("PROXY v2: only TCP (STREAM) is supported")
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == 1:
        if length < 12:
            raise ProxyError("PROXY v2: truncated IPv4 addresses")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == 2:
        if length < 36:
            raise ProxyError("PROXY v2: truncated IPv6 addresses")
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    else:
        raise ProxyError(f"PROXY v2: unsupported address family {family}")
    return ProxyHeader(2, (str(src), sport), (str(dst), dport), total)
