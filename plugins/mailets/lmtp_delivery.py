"""LMTPDelivery: final delivery to a mail store over LMTP (RFC 2033), such as Dovecot's.

Mailboxes that live in a store shared by a cluster are written by the store itself, so every
chainmail node hands its mail to the store's LMTP service instead of writing Maildirs.  LMTP
answers once per recipient after the content, which maps onto per-recipient outcomes:

- ``2xx``: delivered (and a ``delivered`` report for recipients that asked RFC 3461
  ``NOTIFY=SUCCESS``, as :class:`LocalDelivery` sends it);
- ``4xx``: those recipients only are retried later, on :class:`LocalDelivery`'s schedule
  (``maxRetries``, ``delayTime``); once retries are exhausted they bounce;
- ``5xx``: those recipients bounce, with the store's reply as the reason.

A store that cannot be reached or refuses the session (connection refused or timed out, any
refusal of the greeting or ``LHLO``, ``4xx`` to ``MAIL``) retries the whole mail.  The mail
is finished (``ghost``) once every recipient is delivered, bounced or queued for its retry.
"""

from __future__ import annotations

import logging

from chainmail.mailet.api import ATTR_SENT_BY_MAILET, GHOST, GenericMailet, Mail
from chainmail.remote.client import SmtpClient, SmtpConnectionError, SmtpError, SendResult
from chainmail.remote.config import (DEFAULT_CONNECTION_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, DelayError,
                                     DelaysAndMaxRetry, delays_and_max_retry, parse_duration_ms,
                                     split_host_port)
from chainmail.remote.delivery import is_binarymime
from chainmail.sevenbit import for_line_store

from .mailets import LOCAL_DELAY_TIME, LOCAL_MAX_RETRIES, LocalDelivery, _check_processor
from .remote import (ATTR_DELIVERY_ERROR, ATTR_DELIVERY_ERROR_CODE, ATTR_DELIVERY_ERRORS,
                     ATTR_PERMANENT_ERROR, ATTR_REMOTE_MTA)

__all__ = ["LMTPDelivery", "LMTP_PORT"]

log = logging.getLogger("chainmail.mailet")

#: RFC 2033's port (James's LMTP default)
LMTP_PORT = 24


class LMTPDelivery(GenericMailet):
    """Deliver to a mail store over LMTP; see the module documentation.

    ``host`` (required): the store, ``host``, ``host:port`` or a Unix socket path; several,
    comma-separated, are tried in order until one answers.  ``port`` (default 24),
    ``lhloName`` (default the server's name), ``timeout`` and ``connectiontimeout`` (James's
    durations, default unit ms: 180000 and 60000), ``chunking`` (default true: BDAT when the
    store offers CHUNKING), ``maxRetries`` and ``delayTime`` (as :class:`LocalDelivery`),
    ``bounceProcessor``: where failed recipients go, with RemoteDelivery's attributes;
    without it the sender gets an RFC 3464 report from the postmaster."""

    parameters = ("host", "port", "lhloName", "timeout", "connectiontimeout", "chunking",
                  "maxRetries", "delayTime", "bounceProcessor")

    def configure(self, config):
        port = config.get_int("port", LMTP_PORT, minimum=1)
        self.hosts: list[tuple[str, int]] = []
        for item in config.get_list("host"):
            try:
                self.hosts.append(_host(item, port))
            except ValueError as exc:
                raise config.error("host", f"{exc}; expected host, host:port or a socket "
                                           "path") from None
        if not self.hosts:
            raise config.error("host", "is required: the mail store's LMTP service "
                                       "(host, host:port or a Unix socket path)")
        self.lhlo_name = (config.get("lhloName") or "").strip() or self.context.hostname
        self.timeout = _seconds(config, "timeout", DEFAULT_TIMEOUT_MS)
        self.connect_timeout = _seconds(config, "connectiontimeout", DEFAULT_CONNECTION_TIMEOUT_MS)
        self.chunking = config.get_bool("chunking", True)
        bounce = (config.get("bounceProcessor") or "").strip()
        self.bounce_processor = (_check_processor(self, "bounceProcessor", bounce)
                                 if bounce else None)
        # LocalDelivery's retries and delivered reports, on this mailet's schedule
        self.local = LocalDelivery()
        self.local.config, self.local.context = config, self.context
        self.local.schedule = retry_schedule(config)

    async def service(self, mail):
        if not mail.recipients:
            mail.state = GHOST
            return
        rcpts = list(dict.fromkeys(mail.recipients))
        reasons: dict[str, str] = {}      # recipient -> the reply that decided it
        delivered, temporary, permanent, store = await self._attempt(mail, rcpts, reasons)
        if delivered:
            log.info("%s: delivered to %s by LMTP at %s", mail.name,
                     ", ".join(f"<{r}>" for r in delivered), _label(*store))
        failed: dict[str, list[str]] = {}
        for rcpt in permanent:
            failed.setdefault(reasons[rcpt], []).append(rcpt)
        exhausted: list[str] = []
        if temporary:
            gave_up: dict[str, list[str]] = {}
            await self.local._retry_or_fail(mail, temporary, gave_up)
            for text, given_up in gave_up.items():   # "<local reason>; gave up after N retries"
                suffix = text.partition("; ")[2]
                for rcpt in given_up:
                    failed.setdefault(f"{reasons[rcpt]}; {suffix}", []).append(rcpt)
                    exhausted.append(rcpt)
        if failed:
            # Remote-MTA is a host name (RFC 3464 §2.3.5): not a socket path, not a port
            host = store[0]
            await self._bounce(mail, failed, reasons, exhausted,
                               host if host and not host.startswith("/") else None)
        if delivered:
            await self.local._report_delivered(mail, delivered)
        mail.state = GHOST

    async def _attempt(self, mail: Mail, rcpts: list[str], reasons: dict[str, str]
                       ) -> tuple[list[str], list[str], list[str], tuple[str, int]]:
        """One LMTP transaction: the delivered, temporary and permanent recipients, and the
        store that answered (``("", 0)`` when none did)."""
        store = ("", 0)
        try:
            client, store = await self._connect()
            closing = False
            try:
                content, binary = mail.content, is_binarymime(mail.mail_params)
                takes_binary = {"BINARYMIME", "CHUNKING"} <= set(client.extensions)
                if binary and not (self.chunking and takes_binary):
                    # a store of lines: binary parts in base64, as LocalDelivery stores them
                    content, binary = for_line_store(content, mail.mail_params), False
                result = await client.send(mail.sender, rcpts, content, send_partial=True,
                                           chunking=self.chunking, binarymime=binary)
                # a 421 (said or made up for a lost connection): no QUIT to wait for
                closing = any(r.code == 421 for r in
                              (result.final_reply(a) for a in rcpts) if r is not None)
            except SmtpConnectionError:
                closing = True
                raise
            finally:
                await (client.aclose() if closing else client.quit())
        except SmtpError as exc:
            reason = (str(exc.reply) if exc.reply is not None
                      else f"4.4.1 {exc}" if isinstance(exc, SmtpConnectionError) else str(exc))
            log.warning("%s: LMTP delivery to %s failed: %s", mail.name,
                        _label(*store) if store[0] else self._names(), exc)
            reasons.update(dict.fromkeys(rcpts, reason))
            return ([], [], rcpts, store) if exc.permanent else ([], rcpts, [], store)
        return (*_sort(result, rcpts, reasons), store)

    async def _connect(self) -> tuple[SmtpClient, tuple[str, int]]:
        """The first store that answers ``LHLO``, else the last store's failure, always
        temporary: a store that refuses the session (or is no LMTP server at all) says
        nothing about the recipients, so their mail waits instead of bouncing."""
        problem = ""
        for host, port in self.hosts:
            try:
                client = await SmtpClient.connect(
                    host, port, helo_name=self.lhlo_name, timeout=self.timeout,
                    connect_timeout=self.connect_timeout, starttls="never", lmtp=True)
                return client, (host, port)
            except SmtpError as exc:
                problem = str(exc) if isinstance(exc, SmtpConnectionError) else \
                    f"LMTP session with {_label(host, port)} refused: {exc}"
                log.warning("LMTP store %s: %s", _label(host, port), problem)
        raise SmtpConnectionError(problem)

    def _names(self) -> str:
        return ", ".join(_label(h, p) for h, p in self.hosts)

    async def _bounce(self, mail: Mail, failed: dict[str, list[str]], reasons: dict[str, str],
                      exhausted: list[str], remote_mta: str | None) -> None:
        """One report for every failed recipient, each with its own reason: through
        ``bounceProcessor`` when set (RemoteDelivery's attributes), else straight to the sender."""
        rcpts = [r for group in failed.values() for r in group]
        details = {r: reason for reason, group in failed.items() for r in group}
        message = next(iter(failed))
        for reason, group in failed.items():
            log.warning("%s: not delivered to %s: %s", mail.name,
                        ", ".join(f"<{r}>" for r in group), reason)
        copy = mail.duplicate(rcpts)
        copy.error_message = message
        if self.bounce_processor is None:
            await self.context.bounce(copy, message, details=details, remote_mta=remote_mta)
            return
        code = reasons[rcpts[0]][:3]
        copy.attributes.update({
            ATTR_DELIVERY_ERROR: message,
            ATTR_PERMANENT_ERROR: not any(r in exhausted for r in rcpts),
            ATTR_DELIVERY_ERRORS: details,
            ATTR_SENT_BY_MAILET: True,
        })
        if code.isdigit():
            copy.attributes[ATTR_DELIVERY_ERROR_CODE] = int(code)
        if remote_mta:
            copy.attributes[ATTR_REMOTE_MTA] = remote_mta
        await self.context.send_mail(copy, self.bounce_processor)

    @property
    def info(self) -> str:
        return "LMTPDelivery: final delivery to a mail store over LMTP, with retries and bounces"


def _sort(result: SendResult, rcpts: list[str],
          reasons: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Delivered, temporary and permanent recipients of one transaction; ``reasons`` gets
    the reply that decided each undelivered one."""
    delivered: list[str] = []
    temporary: list[str] = []
    permanent: list[str] = []
    done = set(result.delivered)
    for rcpt in rcpts:
        if rcpt in done:
            delivered.append(rcpt)
            continue
        reply = result.final_reply(rcpt)
        if reply is None:   # the content was never sent: every recipient refused
            reply = result.mail_reply
        reasons[rcpt] = str(reply)
        (permanent if reply.code >= 500 else temporary).append(rcpt)
    return delivered, temporary, permanent


def _label(host: str, port: int) -> str:
    """How logs name a store: its socket path, or host:port."""
    return host if host.startswith("/") else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host(item: str, port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("/"):
        return item, port
    host, given = split_host_port(item)
    if not host:
        raise ValueError(f"{item!r} names no host")
    return host, given or port


def _seconds(config, key: str, default_ms: int) -> float:
    text = config.get(key)
    if text is None or not text.strip():
        return default_ms / 1000
    try:
        ms = parse_duration_ms(text.strip())
    except DelayError as exc:
        raise config.error(key, str(exc)) from None
    if ms <= 0:
        raise config.error(key, f"{text!r}: expected a duration above 0")
    return ms / 1000


def retry_schedule(config) -> DelaysAndMaxRetry:
    """``maxRetries`` and ``delayTime`` read as :class:`LocalDelivery` reads them."""
    max_retries = config.get_int("maxRetries", LOCAL_MAX_RETRIES)
    delay_time = config.get("delayTime")
    if delay_time is None:
        delay_time = ", ".join(LOCAL_DELAY_TIME.split(", ")[:max(1, max_retries)])
    problems: list[str] = []
    try:
        schedule = (delays_and_max_retry(max_retries, delay_time, problems)
                    if max_retries else DelaysAndMaxRetry(0, ()))
    except DelayError as exc:
        raise config.error("delayTime", str(exc)) from None
    for problem in problems:
        log.warning("%s:%s: %s delayTime: %s", config.file, config.line, config.name, problem)
    return schedule

