"""DMARC (RFC 7489) decisions without I/O: the policy record, the organisational domain,
identifier alignment and the policy to apply.

The organisational domain is the registrable domain of the Public Suffix List
(publicsuffixlist, the list shipped with the package); the DNS questions and the SPF and DKIM
checks are the handler's (``dmarc.py``).
"""

from __future__ import annotations

import email.utils
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from publicsuffixlist import PublicSuffixList

__all__ = ["DmarcRecord", "DmarcVerdict", "parse_record", "select_record",
           "organizational_domain", "aligned", "from_domain", "MalformedFrom", "evaluate",
           "POLICIES"]

POLICIES = ("none", "quarantine", "reject")
_TAG = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")


class MalformedFrom(ValueError):
    """The message has no single author domain (RFC 7489 §6.6.1)."""


@dataclass(frozen=True)
class DmarcRecord:
    """A policy record (RFC 7489 §6.3); ``sp`` is ``p`` when the record does not say."""

    p: str
    sp: str
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"


def parse_record(text: str) -> DmarcRecord | None:
    """A ``v=DMARC1`` record, or ``None`` when ``text`` is not one (§6.6.3: such records
    are ignored).  A missing or unknown ``p=`` is ``none`` when the record names a report
    address (``rua=``), else the record is not valid (§6.6.3).  Out-of-range ``pct``,
    ``adkim``, ``aspf`` take their defaults (§6.3: unknown values are ignored)."""
    parts = text.split(";")
    first = _TAG.match(parts[0])
    if not first or first.group(1) != "v" or first.group(2) != "DMARC1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        m = _TAG.match(part)
        if m:
            tags.setdefault(m.group(1).lower(), m.group(2))
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    if sp not in POLICIES:
        sp = p
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcRecord(p=p, sp=sp, pct=pct, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r")


def select_record(texts: Iterable[str]) -> DmarcRecord | None:
    """The one DMARC record among a name's TXT records: none, or several, is no policy."""
    found = [r for r in (parse_record(t) for t in texts) if r is not None]
    return found[0] if len(found) == 1 else None


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registrable domain (public suffix plus one label); a public suffix itself, or a
    name the list does not know, is its own organisational domain."""
    name = domain.lower().rstrip(".")
    return _psl().privatesuffix(name) or name


def aligned(identifier: str, author: str, mode: str) -> bool:
    """Whether an authenticated domain (SPF's or a DKIM ``d=``) is aligned with the author
    domain: the same name in strict mode (``s``), the same organisational domain in relaxed
    mode (``r``)."""
    a, b = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def from_domain(from_fields: Sequence[str]) -> str:
    """The author domain of a message's From field values (§6.6.1): exactly one field whose
    addresses all have one domain.  :class:`MalformedFrom` otherwise."""
    if len(from_fields) != 1:
        raise MalformedFrom(f"{len(from_fields)} From header fields")
    addresses = email.utils.getaddresses(list(from_fields))
    domains = {addr.rpartition("@")[2].lower().rstrip(".") for _, addr in addresses if addr}
    domains.discard("")
    if len(domains) != 1 or any("@" not in addr for _, addr in addresses if addr):
        raise MalformedFrom("the From field has no single author domain")
    return domains.pop()


@dataclass(frozen=True)
class DmarcVerdict:
    """``result`` pass or fail; ``policy`` the domain's (p= or sp=), ``disposition`` what
    applies after ``pct`` sampling (none, quarantine, reject)."""

    result: str
    policy: str
    disposition: str
    spf_aligned: bool
    dkim_aligned: bool


def evaluate(author: str, record: DmarcRecord, record_domain: str,
             spf: tuple[str, str] | None, dkim: Iterable[tuple[str, str]],
             rng: random.Random | None = None) -> DmarcVerdict:
    """Apply ``record`` (found at ``record_domain``) to a message from ``author``.

    ``spf`` is ``(result, domain)`` of the SPF check (MAIL FROM's domain), ``dkim`` the
    ``(result, d=)`` of each signature.  DMARC passes when a passing SPF or DKIM identifier
    is aligned (§4.2).  A failing message gets ``sp=`` when the record is the organisational
    domain's and the author domain is below it (§6.6.3), else ``p=``; when ``pct`` does not
    sample it, the next milder policy (§6.6.4: reject becomes quarantine, quarantine none).
    """
    spf_ok = spf is not None and spf[0] == "pass" and aligned(spf[1], author, record.aspf)
    dkim_ok = any(res == "pass" and aligned(d, author, record.adkim) for res, d in dkim)
    author = author.lower().rstrip(".")
    policy = record.sp if record_domain.lower().rstrip(".") != author else record.p
    if spf_ok or dkim_ok:
        return DmarcVerdict("pass", policy, "none", spf_ok, dkim_ok)
    disposition = policy
    if policy != "none" and record.pct < 100:
        sampled = (rng or random).random() * 100 < record.pct
        if not sampled:
            disposition = "quarantine" if policy == "reject" else "none"
    return DmarcVerdict("fail", policy, disposition, spf_ok, dkim_ok)
