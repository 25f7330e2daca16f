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

TLS is decided per exchanger by :mod:`chainmail.remote.tlspolicy` (REQUIRETLS, DANE, MTA-STS,
the James parameters, opportunistic TLS): an exchanger a domain policy refuses, or that
fails it, is skipped, and the attempt is temporary (``451 4.7.5``) when nothing else took
the mail; opportunistic TLS retries a failed handshake once in clear text.

Binary mail (``BODY=BINARYMIME``, RFC 3030) goes only to an exchanger offering BINARYMIME
and CHUNKING, unless it is made of lines anyway; an exchanger that cannot take it is
skipped without a transaction, and when every exchanger reached was such, the mail fails
with ``554 5.6.3``.  A message whose header says ``TLS-Required: No`` (RFC 8689 §5) has the
DANE and MTA-STS requirements of the domain relaxed to opportunistic TLS, unless it came
with REQUIRETLS.

Beyond James: ``pool`` reuses idle connections (:mod:`chainmail.remote.pool`);
``require_tls`` (RFC 8689) skips every host that cannot give verified TLS with REQUIRETLS and
fails with ``5.7.30`` when none can; DSN parameters (RFC 3461) and MT-PRIORITY (RFC 6710) go
only to servers that offer them, and a NOTIFY=SUCCESS that cannot be passed on is reported in
``Outcome.relayed``.

The outcome says, per recipient, what happened; the RemoteDelivery mailet turns it into
retries and bounces.  See docs/remote-delivery.md.
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .client import (
    SendResult, SmtpClient, SmtpConnectionError, SmtpConversionError, SmtpError, SmtpReplyError,
    SmtpTlsHandshakeError, SmtpTlsRequiredError,
)
from .pool import ConnectionPool, PoolKey
from .config import RemoteDeliveryConfig
from .dns import DnsError, DnsService, NoDnsEntries
from .tlspolicy import REQUIRETLS, HostTls, TlsPolicy, tls_required_no

__all__ = ["Target", "Outcome", "deliver", "targets_for", "is_binarymime", "SUCCESS", "PERMANENT",
           "TEMPORARY"]

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
    -> reason, permanent; ``pending``: recipients to retry later; ``relayed``: delivered
    recipients that asked NOTIFY=SUCCESS of a server without DSN, owed a "relayed" DSN by
    the caller (RFC 3461 §4.1).  ``kind`` is ``success``
    when nothing is pending or failed, ``temporary`` when something is pending, else
    ``permanent``.
    """

    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    message: str = ""
    code: int | None = None
    remote_mta: str | None = None
    relayed: list[str] = field(default_factory=list)

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


def is_binarymime(mail_params: Mapping[str, Any] | None) -> bool:
    """The mail was received with ``BODY=BINARYMIME`` (RFC 3030)."""
    body = {str(k).upper(): v for k, v in (mail_params or {}).items()}.get("BODY")
    return isinstance(body, str) and body.upper() == "BINARYMIME"


def _verifies(ctx: ssl.SSLContext) -> bool:
    """RFC 8689 §4.2.1: REQUIRETLS needs the chain and the name verified."""
    return ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def _verification_off(config: RemoteDeliveryConfig) -> bool:
    """The operator turned certificate checks off (``sslTrustAllCerts``, or
    ``verifyServerIdentity`` set to false)."""
    return config.ssl_trust_all_certs or config.verify_explicit is False


def _priority(priority: int | None) -> int | None:
    """RFC 6710 priorities are -9..9; a value outside is clamped rather than lost."""
    if priority is None:
        return None
    clamped = max(-9, min(9, int(priority)))
    if clamped != priority:
        log.warning("MT-PRIORITY %s is outside -9..9; sending %d", priority, clamped)
    return clamped


@dataclass
class _Attempt:
    """What stays the same for every target of one attempt."""

    sender: str
    recipients: list[str]
    content: bytes
    config: RemoteDeliveryConfig
    policy: TlsPolicy
    domain: str
    pool: ConnectionPool | None
    send_args: dict

    def key(self, target: Target, tls: HostTls) -> PoolKey:
        config = self.config
        auth = config.gateway_username if config.gateways else None
        return PoolKey(target.address, target.port, target.implicit_tls, target.host,
                       "never" if target.implicit_tls else tls.starttls,
                       (tls.verify, tls.tlsa, tls.source), auth, config.helo_name, config.bind)

    async def connect(self, target: Target, tls: HostTls) -> SmtpClient:
        config = self.config
        client = await SmtpClient.connect(
            target.address, target.port, helo_name=config.helo_name,
            timeout=max(config.timeout_ms, 1) / 1000,
            connect_timeout=max(config.connection_timeout_ms, 1) / 1000,
            tls_context=self.policy.context(tls), server_hostname=target.host,
            implicit_tls=target.implicit_tls,
            starttls="never" if target.implicit_tls else tls.starttls, bind=config.bind,
            tls_check=tls.check([target.host, self.domain]))
        if config.gateways and config.gateway_username is not None:
            try:
                await client.login(config.gateway_username, config.gateway_password or "")
            except BaseException:
                await client.quit()
                raise
        return client

    async def transaction(self, client: SmtpClient) -> SendResult:
        """One mail on ``client``; on an error the connection is closed, never reused."""
        try:
            return await client.send(self.sender, self.recipients, self.content,
                                     send_partial=self.config.send_partial, **self.send_args)
        except SmtpConnectionError:
            await client.aclose()
            raise
        except BaseException:
            await client.quit()
            raise

    async def send(self, target: Target, tls: HostTls) -> tuple[SmtpClient, SendResult]:
        """The mail over a pooled connection when one is idle, else over a new one.

        A pooled connection that dies before the first reply of the new transaction (or
        answers MAIL with ``421``) was closed by the server while idle: it is replaced once
        by a new connection, and the target does not count as failed.
        """
        client = await self.pool.take(self.key(target, tls)) if self.pool else None
        if client is not None:
            before = client.replies
            try:
                return client, await self.transaction(client)
            except SmtpConnectionError as exc:
                if client.replies != before:
                    raise
                log.info("%s: idle connection was closed (%s); connecting again", target.host, exc)
            except SmtpReplyError as exc:
                if exc.command != "MAIL" or exc.reply.code != 421:
                    raise
                log.info("%s: idle connection refused (%s); connecting again", target.host, exc)
        client = await self.connect(target, tls)
        return client, await self.transaction(client)

    async def send_with_fallback(self, target: Target,
                                 tls: HostTls) -> tuple[SmtpClient, SendResult, HostTls]:
        """:meth:`send`, then the fallbacks the TLS policy allows: after a failed MTA-STS
        check in testing mode, the host as without the policy; after a failed handshake in
        opportunistic TLS, the same address once more in clear text (RFC 7435).  Returns the
        TLS that was used too."""
        try:
            return (*await self.send(target, tls), tls)
        except (SmtpTlsHandshakeError, SmtpTlsRequiredError) as exc:
            if tls.fallback is not None:
                log.warning("%s: MTA-STS policy of %s (mode testing) not satisfied: %s; "
                            "delivering as without the policy", target.host, self.domain, exc)
                return await self.send_with_fallback(target, tls.fallback)
            if (tls.clear_fallback and not target.implicit_tls
                    and isinstance(exc, SmtpTlsHandshakeError)):
                log.warning("%s: %s; trying once more without TLS", target.host, exc)
                clear = HostTls("never", source=tls.source)
                return (*await self.send(target, clear), clear)
            raise

    async def release(self, target: Target, tls: HostTls, client: SmtpClient,
                      result: SendResult) -> None:
        """Back to the pool after a delivered mail; QUIT otherwise."""
        if self.pool is not None and result.delivered:
            await self.pool.give_back(self.key(target, tls), client)
        else:
            await client.quit()


def _dns_failure(outcome: Outcome, remaining: list[str], exc: DnsError, config: RemoteDeliveryConfig,
                 retry_count: int) -> Outcome:
    outcome.message = str(exc)
    permanent = exc.permanent or (isinstance(exc, NoDnsEntries)
                                  and retry_count >= config.max_dns_problem_retries)
    if permanent:
        outcome.failed = {r: str(exc) for r in remaining}
    else:
        outcome.pending = remaining
    return outcome


async def deliver(sender: str, recipients: Sequence[str], content: bytes, *,
                  config: RemoteDeliveryConfig, dns: DnsService, retry_count: int = 0,
                  tls_context: ssl.SSLContext | None = None,
                  rng: random.Random | None = None,
                  mail_params: Mapping[str, Any] | None = None,
                  rcpt_params: Mapping[str, Mapping[str, Any]] | None = None,
                  require_tls: bool = False, priority: int | None = None,
                  pool: ConnectionPool | None = None,
                  tls_policy: TlsPolicy | None = None) -> Outcome:
    """Try once to deliver ``content`` to ``recipients`` (all of one domain, or via gateways).

    ``mail_params`` gives ``RET``/``ENVID`` and ``rcpt_params`` each recipient's
    ``NOTIFY``/``ORCPT`` (RFC 3461; other keys are ignored), sent only to servers offering
    DSN.  ``require_tls`` asks for RFC 8689 REQUIRETLS; ``priority`` is RFC 6710's
    MT-PRIORITY.  ``pool`` reuses idle connections and keeps them after a delivery.
    ``tls_policy`` decides each host's TLS (REQUIRETLS, DANE, MTA-STS, the settings); by
    default one is made from ``config`` with ``tls_context`` for verified TLS.
    """
    outcome = Outcome()
    remaining = list(recipients)
    if not remaining:
        return outcome
    domain = _domain(remaining[0])
    try:
        targets = await targets_for(domain, config, dns, rng=rng)
    except DnsError as exc:
        return _dns_failure(outcome, remaining, exc, config, retry_count)
    policy = tls_policy or TlsPolicy(config, dns, tls_context=tls_context)
    if require_tls and (_verification_off(config) or not _verifies(policy.verifying)):
        return _requiretls_failed(outcome, remaining, "certificate verification is turned off")
    relaxed = tls_required_no(content)
    if relaxed and require_tls:
        log.info("TLS-Required: No ignored for %s: the mail asks for REQUIRETLS", domain)
    plan = await policy.plan(domain, [t.host for t in targets], require_tls=require_tls,
                             tls_optional=relaxed and not require_tls)
    attempt = _Attempt(sender, remaining, content, config, policy, domain, pool,
                       dict(dsn=mail_params, rcpt_dsn=rcpt_params,
                            priority=_priority(priority), require_tls=require_tls,
                            chunking=config.chunking, binarymime=is_binarymime(mail_params)))
    last_error = f"no address to connect to for {domain}"
    unsatisfied: list[str] = []     # REQUIRETLS: hosts reached that cannot provide it
    not_allowed: list[str] = []     # DANE, MTA-STS: hosts refused or failing the policy
    unconvertible: list[str] = []   # BINARYMIME: hosts reached that cannot take binary content
    unreachable = False
    for target in targets:
        tls = plan.for_host(target.host)
        if tls.refuse is not None or (tls.tlsa and target.implicit_tls):
            if tls.refuse is not None and tls.refuse not in not_allowed:
                log.info("%s: %s", target.host, tls.refuse)
                not_allowed.append(tls.refuse)
            continue
        try:
            client, result, used = await attempt.send_with_fallback(target, tls)
        except (SmtpTlsHandshakeError, SmtpTlsRequiredError) as exc:
            last_error = str(exc)
            if tls.mandatory and tls.source != REQUIRETLS:
                log.warning("%s: %s policy not satisfied: %s", target.host, tls.source, exc)
                not_allowed.append(f"{target.host}: {exc}")
            elif require_tls:
                log.info("%s: %s", target.host, exc)
                unsatisfied.append(f"{target.host}: {exc}" if isinstance(
                    exc, SmtpTlsHandshakeError) else str(exc))
            elif isinstance(exc, SmtpTlsHandshakeError):
                log.info("%s: %s", target.host, exc)
                unreachable = True
            else:
                return _stop(outcome, remaining, exc, target)
            continue
        except SmtpConnectionError as exc:
            last_error, unreachable = str(exc), True
            log.info("%s: %s", target.host, exc)
            continue
        except SmtpConversionError as exc:
            last_error = str(exc.reply)
            log.info("%s: %s", target.host, exc.reply)
            unconvertible.append(target.host)
            continue
        except SmtpError as exc:
            return _stop(outcome, remaining, exc, target)
        relayed = _relayed(result, client, rcpt_params)
        await attempt.release(target, used, client, result)
        _record(outcome, result, target)
        outcome.relayed += relayed
        return outcome
    if unsatisfied and not unreachable and not not_allowed:
        return _requiretls_failed(outcome, remaining, "; ".join(unsatisfied))
    if unconvertible and not unreachable and not not_allowed and not unsatisfied:
        outcome.failed.update({r: last_error for r in remaining})
        outcome.message, outcome.code = last_error, 554
        outcome.remote_mta = unconvertible[-1]
        return outcome
    outcome.pending = remaining
    outcome.message = last_error
    if not_allowed:
        outcome.message = (f"451 4.7.5 TLS policy of {domain} not satisfied "
                           f"({'; '.join(not_allowed)})")
        outcome.code = 451
    return outcome


def _record(outcome: Outcome, result: SendResult, target: Target) -> None:
    """Per recipient: delivered, failed (5xx) or pending (4xx, or not sent)."""
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


def _relayed(result: SendResult, client: SmtpClient,
             rcpt_params: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """RFC 3461 §4.1: NOTIFY=SUCCESS to a server without DSN earns a "relayed" DSN."""
    if "DSN" in client.extensions or not rcpt_params:
        return []
    return [r for r in result.delivered if _notify_success(rcpt_params.get(r))]


def _notify_success(params: Mapping[str, Any] | None) -> bool:
    notify = {str(k).upper(): v for k, v in (params or {}).items()}.get("NOTIFY")
    return isinstance(notify, str) and "SUCCESS" in notify.upper().split(",")


def _requiretls_failed(outcome: Outcome, remaining: list[str], why: str) -> Outcome:
    """RFC 8689 §5: no host could take the mail with REQUIRETLS, a permanent failure."""
    reason = f"550 5.7.30 REQUIRETLS support required ({why})"
    outcome.failed.update({r: reason for r in remaining})
    outcome.message, outcome.code = reason, 550
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
