"""James's ``URIRBLHandler``: refuse a message whose text links to a domain listed on a URI
block list (SURBL, URIBL, Spamhaus DBL style: an A record for ``<domain>.<zone>``).

The text parts of the message (``text/plain`` and ``text/html``, quoted-printable and
base64 decoded, nested multiparts included) are scanned for web and mail addresses, as
James's ``URIScanner`` does: ``http(s)://``, ``ftp://``, ``mailto:``, ``www.`` and ``ftp.``
names without a scheme, and bare e-mail addresses.  Each host is reduced to its registered
domain (``www.shop.example.co.uk`` -> ``example.co.uk``, from the public suffix list); an
IPv4 host to its octets in reverse order, as the lists expect.  The work is bounded: the
first :data:`MAX_SCAN_CHARS` characters of text, the first :data:`MAX_DOMAINS` distinct
domains, a few lookups at a time, all within the hook's time budget.
"""

from __future__ import annotations

import email
import email.policy
import html
import ipaddress
import logging
import re
from email.message import Message
from functools import lru_cache

import trio

from chainmail.protocol.replies import Reply
from chainmail.remote.dns import DnsTemporaryError
from chainmail.verdict import HookResult

from .dnsrbl import first_txt, lookup_budget, zone_names

__all__ = ["URIRBLHandler", "scan_domains", "registered_domain", "MAX_DOMAINS",
           "MAX_SCAN_CHARS"]

log = logging.getLogger("chainmail.urirbl")

#: distinct domains looked up per message
MAX_DOMAINS = 50
#: characters of decoded text scanned per message
MAX_SCAN_CHARS = 2_000_000
#: MIME parts looked at per message
MAX_PARTS = 200
#: lookups in flight at once
CONCURRENCY = 8

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})+"
_URL = re.compile(r"\b(?:https?|ftp|file)://(?:[^\s/?#@<>\"']{0,64}@)?"
                  rf"(\[[0-9a-f:.]+\]|{_HOST}|\d{{1,3}}(?:\.\d{{1,3}}){{3}})",
                  re.IGNORECASE | re.ASCII)
_SCHEMELESS = re.compile(rf"(?<![\w.=/@-])((?:www\d*|ftp)\.{_HOST})", re.IGNORECASE | re.ASCII)
# anchored on the "@" (a lookbehind for the local part) so that a long word is not rescanned
_MAIL = re.compile(rf"(?<=[\w.!#$%&'*+/=?^`{{|}}~-])@({_HOST})", re.IGNORECASE | re.ASCII)


@lru_cache(maxsize=1)
def _suffixes():
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList()


def registered_domain(host: str) -> str | None:
    """The name a URI block list is asked about: the registered domain of a host name, the
    reversed octets of an IPv4 address; None for a public suffix or an IPv6 address."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return _suffixes().privatesuffix(host)
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return None


def _hosts(text: str):
    """Host names in ``text`` in order of appearance."""
    found = []
    for pattern in (_URL, _SCHEMELESS, _MAIL):
        found += [(m.start(), m.group(1)) for m in pattern.finditer(text)]
    return [host for _, host in sorted(found)]


def _texts(message: Message):
    """The decoded text of each text/plain and text/html part (HTML entities resolved)."""
    for count, part in enumerate(message.walk()):
        if count >= MAX_PARTS:
            return
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "us-ascii"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("latin-1")
        yield html.unescape(text) if ctype == "text/html" else text


def scan_domains(raw: bytes, limit: int = MAX_DOMAINS) -> list[str]:
    """The distinct names to ask the lists about, in order of appearance, at most ``limit``."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    budget = MAX_SCAN_CHARS
    domains: dict[str, None] = {}
    for text in _texts(message):
        text, budget = text[:budget], budget - len(text)
        for host in _hosts(text):
            domain = registered_domain(host)
            if domain:
                domains.setdefault(domain, None)
                if len(domains) >= limit:
                    return list(domains)
        if budget <= 0:
            break
    return list(domains)


class URIRBLHandler:
    """Refuse a message linking to a listed domain with
    ``554 5.7.0 Rejected: message contains domain <d> listed by <zone>`` (with
    ``getDetail``: ``... listed by <zone> . Details: <TXT record>``).  ``uriRblServers/server``
    (repeated, at least one) names the zones.  A lookup that fails counts as not listed,
    as in James, and is logged."""

    parameters = ("uriRblServers", "uriRblServers.server", "getDetail", "action")

    def configure(self, config):
        self.zones = zone_names(config, "uriRblServers.server")
        if not self.zones:
            raise config.error("uriRblServers.server",
                               "at least one <uriRblServers><server> zone (as James requires)")
        self.get_detail = config.get_bool("getDetail", False)
        action = (config.get("action") or "reject").strip().lower()
        if action != "reject":
            raise config.error("action", f"{action!r} is not supported; expected reject "
                                         "(James documents no other)")

    async def on_message(self, session, message):
        raw = message.read()
        domains = await trio.to_thread.run_sync(scan_domains, raw, limiter=session.server.limiter)
        if not domains:
            return None
        listed = await self.first_listed(session.server, domains)
        if listed is None:
            return None
        domain, zone = listed
        text = f"Rejected: message contains domain {domain} listed by {zone}"
        if self.get_detail:
            detail = await first_txt(session.server.dns, f"{domain}.{zone}")
            if detail:
                text += f" . Details: {detail}"
        log.info("%s: message refused: %s listed by %s", session.id, domain, zone)
        return HookResult.reply(Reply.of(554, text, "5.7.0"))

    async def first_listed(self, server, domains: list[str]) -> tuple[str, str] | None:
        """The first (domain, zone) in message order that a zone lists, asking at most
        :data:`CONCURRENCY` questions at once, within :func:`~.dnsrbl.lookup_budget`."""
        dns = server.dns
        questions = [(d, z) for d in domains for z in self.zones]
        hits: list[int] = []
        limiter = trio.CapacityLimiter(CONCURRENCY)

        async def ask(index: int, domain: str, zone: str) -> None:
            async with limiter:
                try:
                    if await dns.a_records(f"{domain}.{zone}"):
                        hits.append(index)
                except DnsTemporaryError as exc:
                    log.warning("URI block list %s could not be asked about %s (%s): taken "
                                "as not listed", zone, domain, exc)

        with trio.move_on_after(lookup_budget(server)) as scope:
            async with trio.open_nursery() as nursery:
                for index, (domain, zone) in enumerate(questions):
                    nursery.start_soon(ask, index, domain, zone)
        if scope.cancelled_caught:
            log.warning("URI block list lookups of %d domain(s) cut short after the time "
                        "budget", len(domains))
        return questions[min(hits)] if hits else None

