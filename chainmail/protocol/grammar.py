"""RFC 5321 command grammar: paths, mailboxes, ESMTP parameters, HELO arguments.

Pure functions over ``str``; no state, no I/O.  Parsers return values or raise
:class:`GrammarError` carrying the reason, and the command handlers choose the reply.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "Address", "GrammarError", "PathArgument", "parse_mail_argument", "parse_rcpt_argument",
    "parse_mailbox", "parse_parameters", "is_valid_helo", "is_valid_domain",
]


class GrammarError(ValueError):
    """``kind`` says which part was wrong: usage, brackets, address, parameters."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(detail or kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox.  ``domain`` is ``None`` for a bare local part (``<postmaster>``); the
    caller completes it with the default domain, as James does."""

    local: str
    domain: str | None

    def __str__(self) -> str:
        return self.local if self.domain is None else f"{self.local}@{self.domain}"

    @property
    def domain_lower(self) -> str:
        return (self.domain or "").lower()

    def with_domain(self, domain: str) -> "Address":
        return Address(self.local, domain)


@dataclass(frozen=True, slots=True)
class PathArgument:
    """A parsed ``MAIL FROM:`` / ``RCPT TO:`` argument.  ``address`` is ``None`` for ``<>``."""

    address: Address | None
    parameters: dict[str, str | None]


# -- RFC 5321 §4.1.2 ---------------------------------------------------------------------
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_ATEXT_UTF8 = _ATEXT + r"\u0080-\U0010ffff"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT_UTF8}]+(?:\.[{_ATEXT_UTF8}]+)*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_LABEL_UTF8 = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN_UTF8 = re.compile(rf"{_LABEL_UTF8}(?:\.{_LABEL_UTF8})*\Z")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_ESMTP_VALUE_UTF8 = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_MAX_LOCAL = 64      # RFC 5321 §4.5.3.1.1
_MAX_DOMAIN = 255    # RFC 5321 §4.5.3.1.2


def is_valid_domain(text: str, utf8: bool = False) -> bool:
    """A domain name (``sub.example.org``) or an address literal (``[192.0.2.1]``,
    ``[IPv6:2001:db8::1]``)."""
    if not text or len(text) > _MAX_DOMAIN:
        return False
    if text.startswith("["):
        return _is_address_literal(text)
    return bool((_DOMAIN_UTF8 if utf8 else _DOMAIN).match(text))


def _is_address_literal(text: str) -> bool:
    if not (text.startswith("[") and text.endswith("]")) or len(text) < 3:
        return False
    inner = text[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
            return True
        except ValueError:
            return False
    try:
        ipaddress.IPv4Address(inner)
        return True
    except ValueError:
        return bool(_GENERAL_LITERAL.match(inner)) and ":" in inner and inner[:5].upper() != "IPV6:"


def parse_mailbox(text: str, utf8: bool = False, allow_no_domain: bool = True) -> Address:
    """``Local-part "@" ( Domain / address-literal )``; raises ``GrammarError('address')``."""
    if not text:
        raise GrammarError("address", "empty address")
    at = text.rfind("@")
    if at < 0:
        local, domain = text, None
        if not allow_no_domain:
            raise GrammarError("address", "no domain")
    else:
        local, domain = text[:at], text[at + 1:]
        if not is_valid_domain(domain, utf8):
            raise GrammarError("address", f"invalid domain {domain!r}")
    if not local or len(local.encode("utf-8", "surrogateescape")) > _MAX_LOCAL:
        raise GrammarError("address", "invalid local part length")
    if local.startswith('"'):
        ok = (_QUOTED_UTF8 if utf8 else _QUOTED).match(local)
    else:
        ok = (_DOT_STRING_UTF8 if utf8 else _DOT_STRING).match(local)
    if not ok:
        raise GrammarError("address", f"invalid local part {local!r}")
    return Address(local, domain)


def _split_path(rest: str, brackets_required: bool) -> tuple[str, str]:
    """Split ``<path> params`` into the path's inside and the parameter text, honouring
    quoted local parts (which may contain ``>`` and spaces)."""
    if rest.startswith("<"):
        i = rest.find(">") if '"' not in rest else _closing_bracket(rest)
        if i < 0:
            raise GrammarError("brackets", "unterminated path")
        inner, params = rest[1:i], rest[i + 1:]
        if params and not params.startswith(" "):
            raise GrammarError("parameters", "parameters must follow the path after a space")
        return inner, params.strip(" ")
    if brackets_required:
        raise GrammarError("brackets", "path must be enclosed in <>")
    path, _, params = rest.partition(" ")
    return path, params.strip(" ")


def _closing_bracket(rest: str) -> int:
    """The ``>`` that closes a path holding a quoted local part (which may contain ``>``),
    or -1."""
    i, n, quoted = 1, len(rest), False
    while i < n:
        c = rest[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return i
        i += 1
    return -1


def _strip_source_route(inner: str) -> str:
    """RFC 5321 §4.1.2/§C: accept ``@a,@b:user@c`` and ignore the route."""
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise GrammarError("address", "malformed source route")
        for hop in inner[:colon].split(","):
            if not hop.startswith("@") or not is_valid_domain(hop[1:]):
                raise GrammarError("address", "malformed source route")
        return inner[colon + 1:]
    return inner


def parse_parameters(text: str, utf8: bool = False) -> dict[str, str | None]:
    """``esmtp-param *(SP esmtp-param)``; keywords are upper-cased; duplicates refused."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    value_re = _ESMTP_VALUE_UTF8 if utf8 else _ESMTP_VALUE
    for item in text.split(" "):
        if not item:
            continue  # tolerate repeated spaces between parameters
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(key):
            raise GrammarError("parameters", f"invalid parameter {item!r}")
        if eq and not value_re.match(value):
            raise GrammarError("parameters", f"invalid value for {key}")
        key = key.upper()
        if key in params:
            raise GrammarError("parameters", f"duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def _parse_path_argument(arg: str | None, keyword: str, brackets_required: bool,
                         null_allowed: bool, utf8: bool = False) -> PathArgument:
    if not arg or arg[: len(keyword) + 1].upper() != keyword + ":":
        raise GrammarError("usage")
    rest = arg[len(keyword) + 1:].lstrip(" ")
    inner, param_text = _split_path(rest, brackets_required)
    params = parse_parameters(param_text, utf8=utf8)
    # RFC 6531: UTF-8 addresses only in a transaction whose MAIL carried SMTPUTF8.
    utf8 = utf8 or "SMTPUTF8" in params
    if null_allowed and inner in ("", "@"):
        return PathArgument(None, params)
    if not inner:
        raise GrammarError("address", "empty path")
    mailbox = _strip_source_route(inner)
    return PathArgument(parse_mailbox(mailbox, utf8=utf8), params)


def parse_mail_argument(arg: str | None, brackets_required: bool = True) -> PathArgument:
    """``FROM:<reverse-path> [params]``.  ``<>`` and ``<@>`` are the null sender."""
    return _parse_path_argument(arg, "FROM", brackets_required, null_allowed=True)


def parse_rcpt_argument(arg: str | None, brackets_required: bool = True,
                        utf8: bool = False) -> PathArgument:
    """``TO:<forward-path> [params]``; ``utf8`` when the transaction's MAIL had SMTPUTF8."""
    return _parse_path_argument(arg, "TO", brackets_required, null_allowed=False, utf8=utf8)


# -- HELO / EHLO arguments (James's accepted forms, §3 of the reference) -----------------
_SINGLE_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")


def is_valid_helo(arg: str, ehlo: bool = False) -> bool:
    """HELO takes a domain or an address (bare or bracketed IPv4/IPv6); EHLO also takes
    ``IPv6:`` literals with or without brackets and general address literals."""
    if not arg or " " in arg or len(arg) > _MAX_DOMAIN:
        return False
    inner = arg[1:-1] if arg.startswith("[") and arg.endswith("]") else arg
    if not inner:
        return False
    if ehlo and inner[:5].upper() == "IPV6:":
        try:
            return ipaddress.IPv6Address(inner[5:]) is not None
        except ValueError:
            return False
    if _DOMAIN.match(inner) or _SINGLE_LABEL.match(inner):
        return True   # the usual case, checked before an address parse that would fail
    try:
        ipaddress.ip_address(inner)
        return True
    except ValueError:
        pass
    return ehlo and arg.startswith("[") and bool(_DOMAIN.match(inner))
