"""One delivery attempt of one outgoing mail (James's ``MailDelivrer.deliver``).

:func:`deliver` finds the hosts (the gateways, or the MX records of the first recipient's
domain with the A/AAAA fallback), expands each host to its addresses, and tries them in
order with :class:`chainmail.remote.client.SmtpClient` until one takes the mail:

- a connection error (refused, reset, timeout, TLS handshake) moves on to the next address;
- a reply error ends the attempt: ``5xx`` is permanent, anything else temporary;
- refused recipients: ``5xx`` ones fail for good, ``4xx`` ones are retried later; with
  ``sendpartial`` the accepted ones get the mail now, without it nobody does (the accepted
  ones are retried with the temporarily refused ones);
- every address failing with connection errors is a temporary failure;
- DNS: null MX is permanent; no DNS entries is permanent once the mail has been retried
  ``maxDnsProblemRetries`` times (temporary before); a DNS lookup that could not complete is
  temporary.

The outcome says, per recipient, what happened; the RemoteDelivery mailet turns it into
retries and bounces.  See docs/remote-delivery.md.
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass, field
from typing import Sequence

from .client import (
    SmtpClient, SmtpConnectionError, SmtpError, SmtpReplyError, SmtpTlsRequiredError,
    client_tls_context,
)
from .config import RemoteDeliveryConfig
from .dns import DnsError, DnsService, NoDnsEntries

__all__ = ["Target", "Outcome", "deliver", "targets_for", "SUCCESS", "PERMANENT", "TEMPORARY"]

log = logging.getLogger("chainmail.remote")

SUCCESS, PERMANENT, TEMPORARY = "success", "permanent", "temporary"


@dataclass(frozen=True)
class Target:
    """One address to try: ``host`` is the name (for the certificate check and messages)."""

    host: str
    address: str
    port: int
    implicit_tls: bool = False


@dataclass
class Outcome:
    """What one attempt achieved.

    ``delivered``: recipients the remote server accepted the mail for; ``failed``: recipient
    -> reason, permanent; ``pending``: recipients to retry later.  ``kind`` is ``success``
    when nothing is pending or failed, ``temporary`` when something is pending, else
    ``permanent``.
    """

    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    message: str = ""
    code: int | None = None
    remote_mta: str | None = None

    @property
    def kind(self) -> str:
        if self.pending:
            return TEMPORARY
        if self.failed:
            return PERMANENT
        return SUCCESS


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


async def targets_for(domain: str, config: RemoteDeliveryConfig, dns: DnsService, *,
                      rng: random.Random | None = None) -> list[Target]:
    """The addresses to try for ``domain`` (or for the gateways), in order.

    ``mail.smtp.port`` / ``mail.smtps.port`` change the MX ports (25 and 465).
    """
    props = config.mail_properties
    smtp_port = int(props.get("mail.smtp.port", 25))
    smtps_port = int(props.get("mail.smtps.port", 465))
    hosts: list[tuple[str, int | None]]
    if config.gateways:
        hosts = list(config.gateway_hosts)
        if config.load_balancing:
            (rng or random).shuffle(hosts)
        names = [(h, await dns.addresses(h), p) for h, p in hosts]
    else:
        names = [(mx.name, list(mx.addresses), None) for mx in await dns.route(domain)]
    out: list[Target] = []
    for host, addresses, port in names:
        for address in addresses:
            if config.ssl_enable:
                out.append(Target(host, address, port or smtps_port, implicit_tls=True))
            out.append(Target(host, address, port or smtp_port))
    if config.gateways and not out:
        raise NoDnsEntries(", ".join(h for h, _ in hosts), nxdomain=False)
    return out


def _tls_context(config: RemoteDeliveryConfig) -> ssl.SSLContext:
    return client_tls_context(verify_identity=config.check_server_identity,
                              trust_all=config.ssl_trust_all_certs)


async def deliver(sender: str, recipients: Sequence[str], content: bytes, *,
                  config: RemoteDeliveryConfig, dns: DnsService, retry_count: int = 0,
                  tls_context: ssl.SSLContext | None = None,
                  rng: random.Random | None = None) -> Outcome:
    """Try once to deliver ``content`` to ``recipients`` (all of one domain, or via gateways)."""
    outcome = Outcome()
    remaining = list(recipients)
    if not remaining:
        return outcome
    domain = _domain(remaining[0])
    try:
        targets = await targets_for(domain, config, dns, rng=rng)
    except DnsError as exc:
        outcome.message = str(exc)
        permanent = exc.permanent or (isinstance(exc, NoDnsEntries)
                                      and retry_count >= config.max_dns_problem_retries)
        if permanent:
            outcome.failed = {r: str(exc) for r in remaining}
        else:
            outcome.pending = remaining
        return outcome
    ctx = tls_context or _tls_context(config)
    if config.starttls_required:
        starttls = "required"
    elif config.starttls_enabled:
        starttls = "opportunistic"
    else:
        starttls = "never"
    last_error = f"no address to connect to for {domain}"
    for target in targets:
        try:
            client = await SmtpClient.connect(
                target.address, target.port, helo_name=config.helo_name,
                timeout=max(config.timeout_ms, 1) / 1000,
                connect_timeout=max(config.connection_timeout_ms, 1) / 1000,
                tls_context=ctx, server_hostname=target.host, implicit_tls=target.implicit_tls,
                starttls="never" if target.implicit_tls else starttls, bind=config.bind)
        except SmtpConnectionError as exc:
            last_error = str(exc)
            log.info("%s: %s", target.host, exc)
            continue
        except SmtpError as exc:
            return _stop(outcome, remaining, exc, target)
        try:
            if config.gateways and config.gateway_username is not None:
                await client.login(config.gateway_username, config.gateway_password or "")
            result = await client.send(sender, remaining, content, send_partial=config.send_partial)
        except SmtpConnectionError as exc:
            await client.aclose()
            last_error = str(exc)
            continue
        except SmtpError as exc:
            await client.quit()
            return _stop(outcome, remaining, exc, target)
        await client.quit()
        outcome.remote_mta = target.host
        refused_perm = {r.address: str(r.reply) for r in result.refused if r.reply.code >= 500}
        refused_temp = [r for r in result.refused if r.reply.code < 500]
        outcome.failed.update(refused_perm)
        if result.data_reply is not None and not 200 <= result.data_reply.code < 300:
            reason = str(result.data_reply)
            outcome.message, outcome.code = reason, result.data_reply.code
            if result.data_reply.code >= 500:
                outcome.failed.update({r: reason for r in result.accepted})
            else:
                outcome.pending += result.accepted
        else:
            outcome.delivered += result.delivered
            if result.data_reply is None:   # not sent: refused recipients, no sendpartial
                outcome.pending += result.accepted
        outcome.pending += [r.address for r in refused_temp]
        if result.refused:
            worst = result.refused[0].reply
            outcome.message = outcome.message or str(worst)
            outcome.code = outcome.code or worst.code
        return outcome
    outcome.pending = remaining
    outcome.message = last_error
    return outcome


def _stop(outcome: Outcome, remaining: list[str], exc: SmtpError, target: Target) -> Outcome:
    """A reply error (or required TLS missing) ends the attempt for every recipient."""
    outcome.message = str(exc)
    outcome.remote_mta = target.host
    if isinstance(exc, SmtpReplyError):
        outcome.code = exc.reply.code
    if exc.permanent:
        outcome.failed.update({r: str(exc) for r in remaining})
    else:
        outcome.pending += remaining
    if isinstance(exc, SmtpTlsRequiredError):
        log.warning("%s: %s", target.host, exc)
    return outcome
