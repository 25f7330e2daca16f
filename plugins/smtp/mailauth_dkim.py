"""DKIM (RFC 6376) and ARC (RFC 8617) verification by dkimpy, keys fetched beforehand.

dkimpy asks DNS synchronously through a ``dnsfunc``.  Instead of letting it block, the
selectors of the message's signatures (``s=`` and ``d=`` of DKIM-Signature, ARC-Seal and
ARC-Message-Signature fields, at most :data:`MAX_SIGNATURES` of each) are read first, their
``<s>._domainkey.<d>`` TXT records fetched on the trio loop through the server's resolver,
and dkimpy then verifies in a worker thread against those answers only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import dkim
import trio

from chainmail.remote.dns import DnsService

from .mailauth_dns import DnsTemporaryError, txt_records

__all__ = ["DkimResult", "ArcResult", "Verification", "verify_message", "key_names", "header_fields",
           "MAX_SIGNATURES"]

log = logging.getLogger("chainmail.dkim")

#: Signatures of each kind verified per message; more are ignored (each costs a lookup).
MAX_SIGNATURES = 5

_SIGNATURE_FIELDS = (b"dkim-signature", b"arc-seal", b"arc-message-signature")
_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)", re.IGNORECASE)


@dataclass(frozen=True)
class DkimResult:
    """One DKIM-Signature's outcome: ``result`` is RFC 8601's (pass, fail, neutral,
    temperror, permerror); ``domain`` the ``d=`` tag, ``selector`` ``s=``, ``identity``
    ``i=``, ``algorithm`` ``a=``; ``reason`` says why it did not pass."""

    result: str
    domain: str
    selector: str
    identity: str = ""
    algorithm: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ArcResult:
    """The ARC chain's validation (RFC 8617 §5.2): ``none``, ``pass`` or ``fail``."""

    result: str
    reason: str = ""
    instances: int = 0


@dataclass
class Verification:
    """Every signature's result, top first, and the ARC chain's (when asked for)."""

    signatures: list[DkimResult] = field(default_factory=list)
    arc: ArcResult | None = None

    def passing(self) -> list[DkimResult]:
        return [s for s in self.signatures if s.result == "pass"]


def _header_section(message: bytes) -> bytes:
    match = re.search(rb"\r?\n\r?\n", message)
    return message[:match.start()] if match else message


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """``(lower-cased name, unfolded value)`` of every header field."""
    out: list[tuple[bytes, bytes]] = []
    for line in re.split(rb"\r?\n", _header_section(message)):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b" " + line.strip())
        elif b":" in line:
            name, _, value = line.partition(b":")
            out.append((name.strip().lower(), value.strip()))
    return out


def tags(value: bytes) -> dict[bytes, bytes]:
    """The tag=value list of a signature field (RFC 6376 §3.2), tag names lower-cased,
    whitespace removed from values (enough for ``d=``, ``s=``, ``i=``, ``a=``)."""
    return {m.group(1).lower(): re.sub(rb"\s+", b"", m.group(2))
            for m in _TAG.finditer(value)}


def signature_fields(message: bytes, name: bytes) -> list[dict[bytes, bytes]]:
    """The tags of the message's ``name`` fields (lower-case name), top first."""
    return [tags(v) for n, v in header_fields(message) if n == name]


def key_names(message: bytes, *, arc: bool = True) -> list[str]:
    """The ``<s>._domainkey.<d>`` names the message's signatures need, in order, once each."""
    names: list[str] = []
    for kind in _SIGNATURE_FIELDS if arc else _SIGNATURE_FIELDS[:1]:
        for sig in signature_fields(message, kind)[:MAX_SIGNATURES]:
            s, d = sig.get(b"s"), sig.get(b"d")
            if not s or not d:
                continue
            try:
                name = f"{s.decode('ascii')}._domainkey.{d.decode('ascii')}".lower().rstrip(".")
            except UnicodeDecodeError:
                continue
            if name not in names:
                names.append(name)
    return names


async def fetch_keys(service: DnsService, names: list[str]) -> dict[str, bytes | None | Exception]:
    """Each name's TXT record (the first; ``None`` for none), or the temporary error."""
    keys: dict[str, bytes | None | Exception] = {}

    async def one(name: str) -> None:
        try:
            found = await txt_records(service, name)
        except DnsTemporaryError as exc:
            keys[name] = exc
            return
        keys[name] = found[0] if found else None

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return keys


def _dnsfunc(keys: dict[str, bytes | None | Exception]):
    """dkimpy's ``dnsfunc``: answers from the fetched keys, never from the network."""

    def lookup(name, timeout=5):
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name)
        found = keys.get(key.lower().rstrip("."))
        if isinstance(found, Exception):
            raise dkim.DnsTimeoutError(str(found))
        return found

    return lookup


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def _verify_dkim(message: bytes, keys, minkey: int) -> list[DkimResult]:
    sigs = signature_fields(message, b"dkim-signature")[:MAX_SIGNATURES]
    lookup = _dnsfunc(keys)
    results = []
    for index, sig in enumerate(sigs):
        domain, selector = _text(sig.get(b"d")), _text(sig.get(b"s"))
        info = dict(domain=domain, selector=selector, identity=_text(sig.get(b"i")),
                    algorithm=_text(sig.get(b"a")))
        name = f"{selector}._domainkey.{domain}".lower().rstrip(".")
        fetched = keys.get(name)
        if isinstance(fetched, Exception):
            results.append(DkimResult("temperror", reason=f"key lookup failed: {fetched}", **info))
            continue
        if not domain or not selector:
            results.append(DkimResult("permerror", reason="d= or s= missing", **info))
            continue
        if fetched is None:
            results.append(DkimResult("permerror", reason=f"no key at {name}", **info))
            continue
        try:
            ok = dkim.DKIM(message, minkey=minkey).verify(idx=index, dnsfunc=lookup)
        except dkim.ValidationError as exc:
            # the body hash mismatch is reported this way too: that one is a failed signature
            failed = "body hash mismatch" in str(exc)
            results.append(DkimResult("fail" if failed else "permerror",
                                      reason="body hash did not verify" if failed
                                      else str(exc)[:120], **info))
            continue
        except dkim.DKIMException as exc:
            results.append(DkimResult("permerror", reason=str(exc)[:120], **info))
            continue
        except Exception as exc:   # dkimpy on a malformed key or field: not verifiable
            results.append(DkimResult("permerror", reason=f"{type(exc).__name__}: {exc}", **info))
            continue
        results.append(DkimResult("pass", **info) if ok
                       else DkimResult("fail", reason="signature did not verify", **info))
    return results


def _verify_arc(message: bytes, keys, minkey: int) -> ArcResult:
    seals = signature_fields(message, b"arc-seal")
    if not seals:
        return ArcResult("none")
    if len(seals) > MAX_SIGNATURES:
        return ArcResult("fail", "too many ARC sets", len(seals))
    try:
        cv, _results, reason = dkim.arc_verify(message, dnsfunc=_dnsfunc(keys), minkey=minkey)
    except Exception as exc:   # a malformed set: the chain cannot be valid
        return ArcResult("fail", f"{type(exc).__name__}: {exc}", len(seals))
    result = cv.decode("ascii", "replace") if isinstance(cv, bytes) else str(cv)
    return ArcResult(result.lower(), str(reason or ""), len(seals))


def _verify(message: bytes, keys, minkey: int, arc: bool) -> Verification:
    out = Verification(_verify_dkim(message, keys, minkey))
    if arc:
        out.arc = _verify_arc(message, keys, minkey)
    return out


async def verify_message(service: DnsService, message: bytes, *, arc: bool = True,
                         minkey: int = 1024) -> Verification:
    """Verify the DKIM signatures (and the ARC chain when ``arc``) of ``message``."""
    names = key_names(message, arc=arc)
    keys = await fetch_keys(service, names) if names else {}
    return await trio.to_thread.run_sync(_verify, message, keys, minkey, arc)
