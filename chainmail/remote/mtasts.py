"""MTA-STS (RFC 8461): the TLS policy a receiving domain publishes over HTTPS.

A domain announces a policy with a TXT record ``_mta-sts.<domain>`` (``v=STSv1; id=...``) and
serves it at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``::

    version: STSv1
    mode: enforce            # or testing, or none
    mx: mail.example.com
    mx: *.example.net        # a wildcard stands for exactly one label
    max_age: 604800

:class:`MtaSts` finds the policy for a domain:

- the TXT record through the configured resolver (:class:`chainmail.remote.dns.DnsService`);
  no record, or more than one ``v=STSv1`` record, means no new policy (§3.1);
- the policy is fetched with httpx: the host name is resolved through the same resolver (never
  the system's), the certificate is verified against the system CAs or an operator's CA file
  for the name ``mta-sts.<domain>``, no redirects, a timeout, at most 64 KiB, status 200,
  ``text/plain`` (§3.3);
- policies are cached until their ``max_age`` and kept in a JSON file under the var
  directory, so that a restart keeps them (a policy is what protects against a downgrade by an
  attacker who removes the TXT record, §5.1).  The cached policy is used while the TXT ``id``
  is unchanged; a new ``id`` fetches the policy again, and a failed fetch keeps the cached
  one.  A TXT lookup that fails, or a missing record, keeps using an unexpired cached policy.

Nothing here ever stops a delivery: any failure to find a policy means "no policy".
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Iterable

import httpx
import trio

from .dns import DnsError, DnsService

__all__ = ["Policy", "PolicyError", "parse_policy", "parse_txt", "mx_matches", "MtaSts",
           "MAX_POLICY_BYTES", "MAX_AGE_LIMIT"]

log = logging.getLogger("chainmail.remote.mtasts")

#: RFC 8461 §3.3: a policy larger than this is refused (64 KiB, as the RFC suggests).
MAX_POLICY_BYTES = 64 * 1024
#: RFC 8461 §3.2: ``max_age`` is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31557600
FETCH_TIMEOUT = 20.0
MODES = ("enforce", "testing", "none")

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_MX = re.compile(r"(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")


class PolicyError(ValueError):
    """A TXT record or policy file that is not valid MTA-STS."""


@dataclass(frozen=True)
class Policy:
    """One domain's policy, with the TXT ``id`` it was fetched for and when it expires."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""
    expires: float = 0.0

    def matches(self, host: str) -> bool:
        """True when the MX ``host`` is allowed by one of the ``mx`` patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """``mail.example.com`` matches itself; ``*.example.com`` matches one more label only."""
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_txt(records: Iterable[str]) -> str | None:
    """The ``id`` of the single valid ``v=STSv1`` record, or None (none, several, invalid)."""
    ids: list[str] = []
    for record in records:
        fields = [f.strip() for f in record.split(";")]
        if not fields or fields[0].replace(" ", "") != "v=STSv1":
            continue
        values: dict[str, str] = {}
        for item in fields[1:]:
            key, eq, value = item.partition("=")
            if eq:
                values.setdefault(key.strip(), value.strip())
        ident = values.get("id", "")
        ids.append(ident if _ID.fullmatch(ident) else "")
    if len(ids) != 1 or not ids[0]:
        return None
    return ids[0]


def parse_policy(text: str, *, ident: str = "", now: float | None = None) -> Policy:
    """The policy file's fields (``key: value`` lines, CRLF or LF); :class:`PolicyError`
    when ``version``, ``mode`` or ``max_age`` is missing or invalid, or ``mx`` is missing
    outside mode none."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            if not _MX.fullmatch(value):
                raise PolicyError(f"mx {value!r} is not a host name or *.domain pattern")
            mx.append(value.lower())
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version {fields.get('version')!r}; expected STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r}; expected enforce, testing or none")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError(f"max_age {age!r}; expected a number of seconds")
    max_age = min(int(age), MAX_AGE_LIMIT)
    if mode != "none" and not mx:
        raise PolicyError("no mx line; a policy in mode enforce or testing needs one")
    stamp = time.time() if now is None else now
    return Policy(mode, tuple(mx), max_age, ident, stamp + max_age)


class MtaSts:
    """Policies by domain: the cache, the TXT lookup and the HTTPS fetch.

    ``cache_file`` (None: memory only) keeps the cache across restarts; ``cafile`` replaces
    the system CAs for the HTTPS certificate; ``port`` is the HTTPS port (443).
    """

    def __init__(self, dns: DnsService, *, cache_file: str | None = None,
                 cafile: str | None = None, port: int = 443,
                 timeout: float = FETCH_TIMEOUT) -> None:
        self.dns = dns
        self.cache_file = cache_file
        self.cafile = cafile
        self.port = port
        self.timeout = timeout
        self.cache: dict[str, Policy] = self._load()
        self.fetches = 0
        self._locks: dict[str, trio.Lock] = {}

    # -------------------------------------------------------------- the cache file

    def _load(self) -> dict[str, Policy]:
        if not self.cache_file:
            return {}
        try:
            with open(self.cache_file, encoding="utf-8") as fh:
                raw = json.load(fh)
            out = {}
            for domain, item in raw.items():
                out[domain] = Policy(str(item["mode"]), tuple(item["mx"]), int(item["max_age"]),
                                     str(item["id"]), float(item["expires"]))
            return out
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("MTA-STS cache %s is unreadable (%s); starting empty", self.cache_file, exc)
            return {}

    def _save(self) -> None:
        """Write the cache atomically (a new file renamed over the old one)."""
        if not self.cache_file:
            return
        now = time.time()
        data = {d: asdict(p) for d, p in self.cache.items() if p.expires > now}
        folder = os.path.dirname(self.cache_file) or "."
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mta-sts-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            log.warning("MTA-STS cache %s cannot be written: %s", self.cache_file, exc)

    def _cached(self, domain: str) -> Policy | None:
        policy = self.cache.get(domain)
        if policy is not None and policy.expires <= time.time():
            del self.cache[domain]
            return None
        return policy

    # -------------------------------------------------------------- lookups

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for ``domain`` (mode none counts as none), or None."""
        domain = domain.rstrip(".").lower()
        lock = self._locks.setdefault(domain, trio.Lock())
        async with lock:     # parallel deliveries to one domain share one lookup and fetch
            policy = await self._policy(domain)
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._locks.pop(domain, None)
        return policy if policy is not None and policy.mode != "none" else None

    async def _policy(self, domain: str) -> Policy | None:
        cached = self._cached(domain)
        try:
            ident = parse_txt(await self.dns.txt(f"_mta-sts.{domain}"))
        except DnsError as exc:
            log.info("MTA-STS: TXT lookup for %s failed (%s)", domain, exc)
            return cached
        if ident is None or (cached is not None and cached.id == ident):
            return cached
        try:
            fresh = await self.fetch(domain, ident)
        except PolicyError as exc:
            log.warning("MTA-STS: no policy fetched for %s: %s", domain, exc)
            return cached
        self.cache[domain] = fresh
        self._save()
        log.info("MTA-STS: %s has policy id %s, mode %s, mx %s", domain, fresh.id, fresh.mode,
                 ", ".join(fresh.mx))
        return fresh

    async def fetch(self, domain: str, ident: str) -> Policy:
        """Fetch and parse the policy file; :class:`PolicyError` says why it failed."""
        host = f"mta-sts.{domain}"
        try:
            addresses = await self.dns.addresses(host)
        except DnsError as exc:
            raise PolicyError(f"{host}: {exc}") from None
        if not addresses:
            raise PolicyError(f"{host} has no address")
        self.fetches += 1
        errors = []
        for address in addresses[:4]:
            try:
                with trio.fail_after(self.timeout):
                    text = await self._get(host, address)
                return parse_policy(text, ident=ident)
            except trio.TooSlowError:
                errors.append(f"{address}: no answer within {self.timeout:g} s")
            except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                errors.append(f"{address}: {exc}")
        raise PolicyError(f"https://{host}/.well-known/mta-sts.txt: " + "; ".join(errors))

    async def _get(self, host: str, address: str) -> str:
        netloc = f"[{address}]" if ":" in address else address
        url = f"https://{netloc}:{self.port}/.well-known/mta-sts.txt"
        verify = ssl.create_default_context(cafile=self.cafile)
        async with httpx.AsyncClient(verify=verify, follow_redirects=False,
                                     timeout=self.timeout, trust_env=False) as client:
            request = client.build_request(
                "GET", url, headers={"Host": host if self.port == 443 else f"{host}:{self.port}"},
                extensions={"sni_hostname": host})
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise PolicyError(f"HTTP status {response.status_code}; expected 200")
                media = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if media != "text/plain":
                    raise PolicyError(f"content type {media or 'none'!r}; expected text/plain")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_POLICY_BYTES:
                        raise PolicyError(f"the policy is over {MAX_POLICY_BYTES} bytes")
            finally:
                await response.aclose()
        return body.decode("utf-8", "replace")
