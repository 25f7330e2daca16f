"""Which TLS each exchanger gets: REQUIRETLS > DANE > MTA-STS > the operator's settings >
opportunistic TLS.

:meth:`TlsPolicy.plan` looks at one destination domain and its MX hosts once per delivery
attempt and gives a :class:`HostTls` per host:

- REQUIRETLS mail (RFC 8689): STARTTLS required and the certificate verified, by DANE when
  the host has TLSA records, else by the CAs with the MX host name;
- DANE (RFC 7672, only with a resolver the operator marks as validating): STARTTLS required,
  the chain matched against the TLSA records; a mismatch or a failed TLSA lookup defers;
- MTA-STS (RFC 8461): ``enforce`` allows only the MX hosts the policy lists, with STARTTLS
  and a certificate verified for the MX name, else defers; ``testing`` tries the same, logs
  what fails and delivers as the next rules say;
- the James parameters, when set: ``mail.smtp.starttls.required`` makes STARTTLS mandatory,
  ``verifyServerIdentity``/``mail.smtp.ssl.checkserveridentity`` set to true verify the
  certificate (a failure moves on to the next address, never to clear text),
  ``sslTrustAllCerts`` turns every check off;
- otherwise, with ``startTLS``: opportunistic TLS (RFC 7435): encrypt without checking the
  certificate; a failed handshake is retried once in clear text on the same address.

Gateways (smart hosts) are not the recipient domain's exchangers: domain policies (DANE,
MTA-STS) do not apply to them.

A message whose header section says ``TLS-Required: No`` (RFC 8689 §5: its sender prefers
delivery to the domain's TLS requirements) gets, where DANE or MTA-STS would make TLS
mandatory or refuse an exchanger, the operator's own settings when they require STARTTLS,
else opportunistic TLS.  REQUIRETLS on MAIL wins over the header (RFC 8689 §4.1).  See
docs/delivery.md.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass, field, replace
from typing import Sequence

from .client import client_tls_context
from .config import RemoteDeliveryConfig
from .dane import DaneLookupError, SecureDns, Tlsa, match_chain
from .dns import DnsService
from .mtasts import MtaSts, Policy

__all__ = ["HostTls", "DomainPlan", "TlsPolicy", "base_tls", "unverified_context",
           "tls_required_no"]

log = logging.getLogger("chainmail.remote.tls")

REQUIRETLS, DANE, MTA_STS, CONFIG, OPPORTUNISTIC = (
    "requiretls", "dane", "mta-sts", "config", "opportunistic")


@dataclass(frozen=True)
class HostTls:
    """The TLS one exchanger gets.

    ``starttls``: never, opportunistic or required; ``verify``: the chain against the CAs and
    the host name; ``tlsa``: DANE records the chain must match; ``clear_fallback``: a failed
    handshake is retried once without STARTTLS; ``fallback``: what to do after a failed
    MTA-STS check in testing mode; ``refuse``: why this host must not get the mail now.
    """

    starttls: str = "never"
    verify: bool = False
    tlsa: tuple[Tlsa, ...] = ()
    clear_fallback: bool = False
    source: str = OPPORTUNISTIC
    fallback: "HostTls | None" = None
    refuse: str | None = None

    @property
    def mandatory(self) -> bool:
        """A policy of the domain (or REQUIRETLS): failing it defers, never goes in clear."""
        return self.source in (REQUIRETLS, DANE, MTA_STS) and self.fallback is None

    def check(self, names: Sequence[str]):
        """The post-handshake check of the chain for DANE (None when not DANE)."""
        if not self.tlsa:
            return None
        records = self.tlsa

        def dane_check(chain: list[bytes]) -> str | None:
            return match_chain(chain, records, names)
        return dane_check


@dataclass
class DomainPlan:
    """The :class:`HostTls` of each MX host of one destination."""

    hosts: dict[str, HostTls] = field(default_factory=dict)
    default: HostTls = field(default_factory=HostTls)
    domain: str = ""

    def for_host(self, host: str) -> HostTls:
        return self.hosts.get(host.rstrip(".").lower(), self.default)


_TLS_REQUIRED = re.compile(rb"tls-required[ \t]*:(.*)", re.I)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def tls_required_no(content: bytes) -> bool:
    """Whether the header section of ``content`` has ``TLS-Required: No`` (RFC 8689 §5)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end]
    if b"tls-required" not in head.lower():
        return False
    for line in _FOLD.sub(b"", head).split(b"\n"):
        m = _TLS_REQUIRED.match(line)
        if m and m.group(1).strip(b" \t\r").lower() == b"no":
            return True
    return False


def unverified_context() -> ssl.SSLContext:
    """Encryption without authentication: any certificate, any name (RFC 7435)."""
    return client_tls_context(trust_all=True)


def base_tls(config: RemoteDeliveryConfig) -> HostTls:
    """The operator's settings (the James parameters), or opportunistic TLS."""
    explicit = config.verify_explicit
    verify = explicit is True and not config.ssl_trust_all_certs
    if config.starttls_required:
        starttls = "required"
    elif config.starttls_enabled:
        starttls = "opportunistic"
    else:
        starttls = "never"
    chosen = config.starttls_required or config.ssl_trust_all_certs or explicit is not None
    return HostTls(starttls, verify, clear_fallback=starttls == "opportunistic" and not verify,
                   source=CONFIG if chosen else OPPORTUNISTIC)


class TlsPolicy:
    """The policies of RemoteDelivery: its settings, the MTA-STS cache, DNSSEC lookups.

    ``verifying`` is the context for verified TLS (the system CAs, or ``caFile``).
    """

    def __init__(self, config: RemoteDeliveryConfig, dns: DnsService, *,
                 cache_file: str | None = None, tls_context: ssl.SSLContext | None = None,
                 mta_sts: MtaSts | None = None) -> None:
        self.config = config
        self.verifying = tls_context or client_tls_context(cafile=config.ca_file)
        self.unverified = unverified_context()
        self.base = base_tls(config)
        self.mta_sts = mta_sts
        if self.mta_sts is None and config.mta_sts:
            self.mta_sts = MtaSts(dns, cache_file=cache_file, cafile=config.ca_file)
        self.secure = SecureDns(dns) if config.dnssec and config.dane else None

    def context(self, tls: HostTls) -> ssl.SSLContext:
        return self.verifying if tls.verify else self.unverified

    async def plan(self, domain: str, hosts: Sequence[str], *, require_tls: bool = False,
                   tls_optional: bool = False) -> DomainPlan:
        """The TLS of each of ``hosts`` (the MX names of ``domain``, best first).

        ``tls_optional`` (``TLS-Required: No``): what DANE or MTA-STS would require or refuse
        becomes :meth:`relaxed`."""
        if self.config.gateways:
            verified = HostTls("required", True, source=REQUIRETLS)
            return DomainPlan(default=verified if require_tls else self.base, domain=domain)
        names = list(dict.fromkeys(h.rstrip(".").lower() for h in hosts))
        dane = await self._dane(domain, names)
        policy = await self.mta_sts.policy(domain) if self.mta_sts is not None else None
        plan = DomainPlan(domain=domain)
        for host in names:
            tls = self._host(domain, host, dane.get(host), policy)
            if require_tls and tls.source != DANE and tls.refuse is None:
                tls = HostTls("required", True, source=REQUIRETLS)
            elif tls_optional and tls.source in (DANE, MTA_STS):
                relaxed = self.relaxed()
                log.info("TLS-Required: No: the %s policy of %s is not applied to %s; %s",
                         tls.source, domain, host, "the operator's settings apply"
                         if relaxed is self.base else "opportunistic TLS")
                tls = relaxed
            plan.hosts[host] = tls
        if policy is not None and policy.mode == "enforce" and all(
                t.refuse for t in plan.hosts.values()):
            log.warning("MTA-STS: the policy of %s (mx %s) allows none of its MX hosts %s",
                        domain, ", ".join(policy.mx), ", ".join(names))
        return plan

    def relaxed(self) -> HostTls:
        """An exchanger's TLS without the domain's policy (``TLS-Required: No``): the
        operator's settings when they require STARTTLS or a verified certificate, else
        opportunistic TLS (STARTTLS when offered, any certificate, clear text after a failed
        handshake)."""
        base = self.base
        if base.starttls == "required" or (base.verify and base.starttls != "never"):
            return base
        return HostTls("opportunistic", False, clear_fallback=True, source=OPPORTUNISTIC)

    def _host(self, domain: str, host: str, dane: tuple[Tlsa, ...] | str | None,
              policy: Policy | None) -> HostTls:
        if isinstance(dane, str):
            return HostTls(refuse=dane, source=DANE)
        if dane:
            return HostTls("required", False, tlsa=dane, source=DANE)
        if policy is None:
            return self.base
        strict = HostTls("required", True, source=MTA_STS)
        if policy.mode == "enforce":
            if not policy.matches(host):
                return HostTls(refuse=f"MTA-STS policy of {domain} (mode enforce, mx "
                                      f"{', '.join(policy.mx)}) does not list {host}",
                               source=MTA_STS)
            return strict
        if not policy.matches(host):
            log.warning("MTA-STS (testing): %s is not listed by the policy of %s (mx %s); "
                        "delivering anyway", host, domain, ", ".join(policy.mx))
            return self.base
        return replace(strict, fallback=self.base)

    async def _dane(self, domain: str, hosts: list[str]) -> dict[str, tuple[Tlsa, ...] | str]:
        """Per host: its usable TLSA records, or why it cannot be used; absent: no DANE."""
        if self.secure is None:
            return {}
        out: dict[str, tuple[Tlsa, ...] | str] = {}
        try:
            if not await self.secure.mx_secure(domain):
                log.debug("DANE: the MX records of %s are not DNSSEC-validated", domain)
                return {}
        except DaneLookupError as exc:
            log.info("DANE: %s; not used for %s", exc, domain)
            return {}
        for host in hosts:
            try:
                if not await self.secure.host_secure(host):
                    continue
                records = await self.secure.tlsa(host)
            except DaneLookupError as exc:
                out[host] = f"DANE: {exc}"
                continue
            if records:
                out[host] = tuple(records)
        return out
