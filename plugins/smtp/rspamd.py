"""Spam and policy checks by rspamd at the end of DATA, answering the client with rspamd's
action: refused (``reject``), deferred (``soft reject``, ``greylist``) or accepted with its
verdict in the header (``add header``, ``rewrite subject``, ``no action``), as a milter-
connected MTA does, but without a milter: chainmail speaks rspamd's HTTP protocol itself."""

from __future__ import annotations

import contextlib

import logging

import trio

from chainmail.protocol.replies import Reply
from chainmail.verdict import HookResult

from . import spam_rspamd
from .spam_net import FilterUnavailable, get_seconds, split_http_url

__all__ = ["RspamdHandler", "request_headers"]

log = logging.getLogger("chainmail.rspamd")

#: Default texts when rspamd gives no ``smtp_message`` (those of rspamd's own milter proxy).
REJECT_TEXT = "Spam message rejected"
SOFT_REJECT_TEXT = "Try again later"
GREYLIST_TEXT = "Try again later"
#: rspamd could not be asked and ``failOpen`` is false.
UNAVAILABLE = Reply.of(451, "Spam filter unavailable. Please try again later", "4.7.1")
#: How long the client's reverse name may take to look up (part of ``rspamdTimeout``).
HOSTNAME_TIMEOUT = 2.0


async def client_hostname(session) -> str | None:
    """The client's forward-confirmed reverse name (rspamd's ``Hostname``), looked up once
    per connection; None when it has none or DNS does not answer in time."""
    key = "rspamd.hostname"
    if key not in session.state:
        from chainmail.remote.dns import DnsError
        name = None
        with trio.move_on_after(HOSTNAME_TIMEOUT):
            try:
                names = await session.server.dns.confirmed_names(session.remote_ip)
            except (DnsError, ValueError):
                names = []
            name = names[0] if names else None
        session.state[key] = name
    return session.state[key]


async def request_headers(session, message) -> list[tuple[str, str]]:
    """The SMTP transaction as rspamd's request headers."""
    headers = [("IP", session.remote_ip)]
    if session.helo_name:
        headers.append(("Helo", session.helo_name))
    hostname = await client_hostname(session)
    if hostname:
        headers.append(("Hostname", hostname))
    if message.sender is not None:
        headers.append(("From", str(message.sender)))
    headers += [("Rcpt", str(r)) for r in message.recipients]
    if message.writer is not None and getattr(message.writer, "id", None):
        headers.append(("Queue-Id", str(message.writer.id)))
    if session.auth_user:
        headers.append(("User", str(session.auth_user)))
    if session.tls is not None:
        headers.append(("TLS-Version", str(session.tls.protocol)))
        headers.append(("TLS-Cipher", str(session.tls.cipher)))
    headers.append(("MTA-Name", session.hostname))
    return headers


def annotate(message, result: spam_rspamd.RspamdResult, rewrite_subject: bool) -> None:
    """The verdict's header fields on top of the message and James's attributes on the mail:
    the fields rspamd's ``milter`` block asks for, ``X-Spamd-Result`` and
    ``X-Rspamd-Action`` unless that block has them, ``X-Spam: Yes`` for spam, and the
    rewritten ``Subject`` in place of the client's; the fields the block's
    ``remove_headers`` names are removed."""
    message.attributes[spam_rspamd.FLAG_ATTRIBUTE] = result.flag
    message.attributes[spam_rspamd.STATUS_ATTRIBUTE] = result.status
    fields: list[tuple[str, str]] = []
    if result.is_spam:
        fields.append(("X-Spam", "Yes"))
    fields.append(("X-Rspamd-Action", result.action))
    fields.append(("X-Spamd-Result", result.spamd_result()))
    given = {name.lower() for name, _ in result.add_headers}
    fields = [(n, v) for n, v in fields if n.lower() not in given]
    fields += [(n, v) for n, v in result.add_headers if n.lower() != "subject"]
    for name in result.remove_headers:
        with contextlib.suppress(ValueError):
            message.remove_header(name)
    if rewrite_subject and result.action == "rewrite subject" and result.subject:
        message.remove_header("Subject")
        fields.append(("Subject", result.subject))
    for name, value in fields:
        try:
            message.add_header(name, value)
        except ValueError as exc:
            log.warning("%s: rspamd's header field %r not added: %s", message.session, name, exc)


class RspamdHandler:
    """Scan each message with rspamd at ``rspamdUrl`` (``http://localhost:11333``, the
    normal worker; the controller's port with ``rspamdPassword`` works too) within
    ``rspamdTimeout`` seconds (15) and apply its action: ``reject`` → 554 5.7.1,
    ``soft reject`` and ``greylist`` → 451 4.7.1 (rspamd's message, or its milter's
    default text), others accepted with the verdict's header fields.  ``rewriteSubject``
    (true) puts rspamd's rewritten Subject on top.  rspamd unavailable: accepted unscanned
    (``failOpen``, true) or 451 4.7.1."""

    parameters = ("rspamdUrl", "rspamdPassword", "rspamdTimeout", "rewriteSubject", "failOpen")

    def configure(self, config):
        self.url = (config.get("rspamdUrl") or "http://localhost:11333").strip()
        try:
            split_http_url(self.url)
        except ValueError as exc:
            raise config.error("rspamdUrl", f"{exc} (expected e.g. http://localhost:11333)") from None
        self.password = config.get("rspamdPassword") or ""
        self.timeout = get_seconds(config, "rspamdTimeout", 15.0)
        self.rewrite_subject = config.get_bool("rewriteSubject", True)
        self.fail_open = config.get_bool("failOpen", True)

    async def on_message(self, session, message):
        server = session.server
        try:
            with trio.fail_after(self.timeout):
                content = await trio.to_thread.run_sync(message.read)
                headers = await request_headers(session, message)
                result = await spam_rspamd.checkv2(self.url, content, headers,
                                                   timeout=self.timeout, password=self.password,
                                                   dns=lambda: server.dns)
        except (FilterUnavailable, trio.TooSlowError) as exc:
            reason = exc if isinstance(exc, FilterUnavailable) else "no verdict in time"
            if self.fail_open:
                log.error("%s: message accepted without a spam check: %s", session, reason)
                return None
            log.error("%s: message deferred, no spam check: %s", session, reason)
            return HookResult.reply(UNAVAILABLE)
        log.info("%s: rspamd: %s (score %.2f / %.2f)", session, result.action, result.score,
                 result.required_score)
        if result.action == "reject":
            return HookResult.reply(Reply.of(554, result.smtp_message or REJECT_TEXT, "5.7.1"))
        if result.action == "soft reject":
            return HookResult.reply(Reply.of(451, result.smtp_message or SOFT_REJECT_TEXT, "4.7.1"))
        if result.action == "greylist":
            return HookResult.reply(Reply.of(451, result.smtp_message or GREYLIST_TEXT, "4.7.1"))
        annotate(message, result, self.rewrite_subject)
        return None
