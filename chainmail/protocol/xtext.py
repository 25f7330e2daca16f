"""RFC 3461 §4 ``xtext`` and the RFC 6533 ``utf-8-addr-xtext`` of DSN parameters.

``ENVID`` and ``ORCPT`` carry text a client chose, encoded so that it fits in an ESMTP
parameter; the server checks the encoding when the parameter arrives and decodes it when a
report quotes it.  Decoded values never hold a control character: a report field written
from one could not be split or forged.
"""

from __future__ import annotations

import re

__all__ = ["XtextError", "is_xtext", "decode", "encode", "decode_utf8_addr",
           "encode_utf8_addr", "parse_orcpt", "decode_envid"]

#: RFC 3461 §4.4: the envelope id, before encoding, is at most 100 characters.
MAX_ENVID = 100
#: RFC 3461 §4.2: the original recipient, before encoding, is at most 500 characters.
MAX_ORCPT = 500

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# RFC 5322 atom: the address type of ORCPT (rfc822, utf-8, x400 ...)
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")
# RFC 6533 §3: "\x{" 1-6 hex digits "}" (QCHAR excludes "+", "=" and "\")
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class XtextError(ValueError):
    """A parameter value that is not what its RFC says; the message says why."""


def is_xtext(text: str) -> bool:
    """Is ``text`` valid xtext: characters 33..126 except ``+`` and ``=``, or ``+`` and two
    upper-case hex digits?"""
    return bool(_XTEXT.match(text))


def decode(text: str) -> str:
    """The text ``text`` encodes (its octets read as UTF-8); :class:`XtextError` if ``text``
    is not xtext, if the octets are not UTF-8, or if they hold a control character."""
    if not is_xtext(text):
        raise XtextError("not xtext (RFC 3461 section 4)")
    if "+" not in text:
        return text
    pieces = _HEXCHAR.split(text)   # literal, hex, literal, hex ... literal
    octets = b"".join(bytes([int(p, 16)]) if i % 2 else p.encode("ascii")
                      for i, p in enumerate(pieces))
    try:
        value = octets.decode("utf-8")
    except UnicodeDecodeError:
        raise XtextError("encodes octets that are not UTF-8") from None
    if _CONTROL.search(value):
        raise XtextError("encodes a control character")
    return value


def encode(text: str) -> str:
    """``text`` as xtext (UTF-8 octets outside 33..126, ``+`` and ``=`` as ``+XX``)."""
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def decode_utf8_addr(text: str) -> str:
    """RFC 6533 ``utf-8-addr-xtext`` or ``utf-8-addr-unitext`` decoded: ``\\x{HEX}`` escapes
    replaced by their characters."""
    rest = _EMBEDDED.sub("", text)
    if not text or any(c.isspace() or c in "+=\\" or ord(c) < 0x21 or ord(c) == 0x7F
                       for c in rest):
        raise XtextError("not utf-8-addr-xtext (RFC 6533 section 3)")

    def char(m: re.Match[str]) -> str:
        point = int(m.group(1), 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise XtextError("an escape that is no Unicode character")
        return chr(point)

    value = _EMBEDDED.sub(char, text)
    if _CONTROL.search(value):
        raise XtextError("encodes a control character")
    return value


def encode_utf8_addr(text: str) -> str:
    """``text`` as RFC 6533 ``utf-8-addr-xtext`` (ASCII only)."""
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
                   for c in text)


def parse_orcpt(value: str) -> tuple[str, str]:
    """``addr-type ";" xtext`` -> ``(addr-type, decoded address)``.  The ``utf-8`` type is
    read as RFC 6533 says; any other type as xtext.  :class:`XtextError` says what is wrong."""
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ATOM.match(addr_type):
        raise XtextError("must be an address type, a semicolon and an address")
    if not address:
        raise XtextError("has no address after the address type")
    if addr_type.lower() == "utf-8":
        decoded = decode_utf8_addr(address)
    else:
        decoded = decode(address)
    if len(decoded) > MAX_ORCPT:
        raise XtextError(f"longer than {MAX_ORCPT} characters")
    return addr_type, decoded


def decode_envid(value: str) -> str:
    """An ``ENVID`` decoded: printable US-ASCII (RFC 3461 §4.4), at most 100 characters."""
    decoded = decode(value)
    if not decoded.isascii():
        raise XtextError("must be US-ASCII")
    if len(decoded) > MAX_ENVID:
        raise XtextError(f"longer than {MAX_ENVID} characters")
    return decoded
