"""The mailet context: what matchers and mailets may ask of the server (James's
``MailetContext``): local domains and users, the recipient rewrite table, mailboxes,
repositories, the postmaster, sending new mail, bouncing, logging, blocking work."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, Callable, Iterable, Mapping

import trio

from .api import (ATTR_ARRIVAL, ATTR_ERROR, ATTR_HOPS, ATTR_RETRY_AT, ATTR_SENT_BY_MAILET,
                  ROOT, Mail)
from ..protocol.lineends import canonical
from .engine import current_outputs
from .repository import MailRepository, RepositoryStore

__all__ = ["MailetContext", "mail_from_queued", "envelope_of", "build_dsn", "status_of"]

log = logging.getLogger("chainmail.mailet")

_BLOCKING_THREADS = 8


def mail_from_queued(queued: Any, content: bytes) -> Mail:
    """A :class:`Mail` from a spool entry (``QueuedMessage``) and its body."""
    env = queued.envelope
    attributes = dict(env.attributes)
    error_message = attributes.pop(ATTR_ERROR, None)
    hops = int(attributes.pop(ATTR_HOPS, 0) or 0)
    attributes.pop(ATTR_RETRY_AT, None)
    arrival = attributes.pop(ATTR_ARRIVAL, None)
    queued_at = float(arrival) if isinstance(arrival, (int, float)) else queued.queued_at
    rcpt_params = {r: p for r, p in zip(env.recipients, env.rcpt_params)}
    return Mail(queued.id, env.sender, env.recipients, content, state=env.state or ROOT,
                attributes=attributes, error_message=error_message, mail_params=env.mail_params,
                rcpt_params=rcpt_params, queued_at=queued_at, error_count=env.error_count,
                hops=hops)


def envelope_of(mail: Mail, *, extra: Mapping[str, Any] | None = None):
    """The spool ``Envelope`` that stores ``mail`` (state, error count, attributes)."""
    from chainmail.store.spool import Envelope
    attributes = dict(mail.attributes)
    if mail.error_message:
        attributes[ATTR_ERROR] = mail.error_message
    if mail.hops:
        attributes[ATTR_HOPS] = mail.hops
    if mail.queued_at:
        attributes[ATTR_ARRIVAL] = mail.queued_at
    if extra:
        attributes.update(extra)
    return Envelope(sender=mail.sender, recipients=list(mail.recipients),
                    mail_params=dict(mail.mail_params),
                    rcpt_params=[dict(mail.rcpt_params.get(r, {})) for r in mail.recipients],
                    attributes=attributes, state=mail.state, error_count=mail.error_count)


class MailetContext:
    """Shared by every matcher and mailet of one container.

    ``states`` is filled in when the engine is built, before mailets are initialised, so a
    mailet's ``init`` may check the processors it names (:meth:`has_processor`).
    """

    def __init__(self, *, domains: Any = None, users: Any = None, rrt: Any = None,
                 mailboxes: Any = None, repositories: RepositoryStore | None = None,
                 spool: Any = None, postmaster: str = "postmaster", hostname: str | None = None,
                 auth_networks: Mapping[str, Any] | None = None,
                 limiter: trio.CapacityLimiter | None = None, conf_dir: str = "conf",
                 var_dir: str = "var") -> None:
        self.domains = domains
        self.users = users
        self.rrt = rrt
        self.mailboxes = mailboxes
        self.repositories = repositories
        self.spool = spool
        default = getattr(domains, "default_domain", None) or "localhost"
        self.default_domain = default
        self.postmaster = postmaster if "@" in postmaster else f"{postmaster}@{default}"
        self.hostname = hostname or default or socket.gethostname()
        self.auth_networks = dict(auth_networks or {})
        self.limiter = limiter or trio.CapacityLimiter(_BLOCKING_THREADS)
        self.states: frozenset[str] = frozenset()
        self.log = log
        self.on_spooled: Callable[[str], None] | None = None  # the spooler's wake-up
        #: where mailets find their own configuration files (dnsservice.xml) and state
        self.conf_dir = conf_dir
        self.var_dir = var_dir
        #: mailets that own a named resource (an outgoing queue), by kind and name, so that
        #: two mailets claiming the same one are a configuration error
        self.claims: dict[tuple[str, str], Any] = {}

    # -- processors

    def has_processor(self, state: str) -> bool:
        return state in self.states

    # -- domains, users

    def is_local_server(self, domain: str) -> bool:
        """Is ``domain`` local (a domain of the domain list, or a domain alias of one)?"""
        if not domain or self.domains is None:
            return False
        domain = domain.lower().rstrip(".")
        if self.domains.contains(domain):
            return True
        if self.rrt is not None:
            try:
                canonical = self.rrt.canonical_domain(domain)
            except Exception:
                return False
            return canonical != domain and self.domains.contains(canonical)
        return False

    def is_local_email(self, address: str) -> bool:
        """Is ``address`` a local user's (domain local and the user exists; ``+detail`` ignored)?"""
        if not address or "@" not in address or self.users is None:
            return False
        if not self.is_local_server(address.rpartition("@")[2]):
            return False
        return self.users.contains(self.users.username_for(address))

    def is_auth_network(self, mail: Mail) -> bool:
        """Did ``mail`` come from a client in its server's ``authorizedAddresses``?"""
        addr = mail.remote_addr
        networks = self.auth_networks.get(mail.attributes.get("server_name"))
        if addr and networks is not None:
            return networks.contains(addr)
        return bool(mail.attributes.get("relaying_allowed")) and not mail.auth_user

    # -- blocking work

    async def run_blocking(self, fn: Callable, *args: Any) -> Any:
        """Run a blocking function in a worker thread (bounded by the container's limiter)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- repositories

    def repository(self, url: str) -> MailRepository:
        if self.repositories is None:
            raise RuntimeError("no repository store configured")
        return self.repositories.get(url)

    # -- sending

    async def send_mail(self, mail: Mail, state: str | None = None) -> Mail:
        """Send a copy of ``mail`` through the container again, from processor ``state``
        (default ``root``).  The copy is marked ``sent_by_mailet``.  During processing it is
        committed to the spool with the mail being processed; returns the copy."""
        copy = mail.duplicate()
        copy.state = state or ROOT
        copy.attributes[ATTR_SENT_BY_MAILET] = True
        copy.hops = mail.hops + 1
        copy.error_count = 0
        await self._emit(copy)
        return copy

    async def send_message(self, sender: str, recipients: Iterable[str], content: bytes, *,
                           state: str = ROOT, attributes: Mapping[str, Any] | None = None,
                           error_message: str | None = None) -> Mail:
        """Send a new message (``sender`` ``""`` = the null sender)."""
        mail = Mail(None, sender, list(recipients), content, state=state,
                    attributes=dict(attributes or {}), error_message=error_message,
                    queued_at=time.time())
        mail.attributes[ATTR_SENT_BY_MAILET] = True
        await self._emit(mail)
        return mail

    async def _emit(self, mail: Mail) -> None:
        if not mail.recipients:
            return
        outputs = current_outputs.get()
        if outputs is not None:
            outputs.append(mail)
        else:
            await self.commit(mail)

    async def commit(self, mail: Mail, *, extra: Mapping[str, Any] | None = None) -> str:
        """Durably add ``mail`` to the spool, in its state; return the spool id."""
        if self.spool is None:
            raise RuntimeError("no spool to send mail to")
        writer = self.spool.open_writer()
        try:
            # Mail a mailet wrote enters the spool as the servers let mail in: canonical.
            content = canonical(mail.content)
            if len(content) > 256 * 1024:
                await trio.to_thread.run_sync(writer.write, content, limiter=self.limiter)
            else:
                writer.write(content)
            msg_id = await writer.commit(envelope_of(mail, extra=extra))
        finally:
            writer.abort()
        if self.on_spooled is not None:
            self.on_spooled(msg_id)
        return msg_id

    async def bounce(self, mail: Mail, message: str | None = None, *, status: str | None = None,
                     attachment: str = "message", recipients: Iterable[str] | None = None,
                     state: str = ROOT, details: Mapping[str, str] | None = None,
                     remote_mta: str | None = None, action: str = "failed") -> Mail | None:
        """Send an RFC 3464 delivery status notification about ``mail`` to its sender, from
        the postmaster, with the null reverse-path.  Never for a null-sender mail, nor for
        recipients whose RFC 3461 ``NOTIFY`` does not ask for it (returns ``None``).

        ``details`` gives a recipient its own reason (a remote server's reply);
        ``remote_mta`` names the server that gave it; ``action`` is ``failed``, ``delayed``
        or ``relayed``."""
        if mail.has_null_sender:
            log.info("%s: no bounce for a mail with the null sender", mail.name)
            return None
        rcpts = wanted_notifications(mail, list(recipients) if recipients is not None
                                     else list(mail.recipients), action)
        if not rcpts:
            log.info("%s: no %s notification requested (NOTIFY)", mail.name, action)
            return None
        if str(mail.mail_params.get("RET") or "").upper() == "HDRS" and attachment == "message":
            attachment = "heading"
        reason = message or mail.error_message or "Delivery failed"
        content = build_dsn(mail, reason=reason, reporting_mta=self.hostname,
                            postmaster=self.postmaster, status=status, attachment=attachment,
                            recipients=rcpts, action=action, details=details,
                            remote_mta=remote_mta)
        dsn = await self.send_message("", [mail.sender], content, state=state,
                                      attributes={"bounce_of": mail.name})
        log.info("%s: %s notification %s sent to <%s>: %s", mail.name, action, dsn.name,
                 mail.sender, reason)
        return dsn


# -------------------------------------------------------------------------------- DSN


def status_of(text: str | None, default: str = "5.0.0") -> str:
    """The enhanced status code in an SMTP-like text (``550 5.1.1 ...``), else ``default``."""
    import re
    if text:
        m = re.search(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b", text)
        if m:
            return m.group(0)
        m = re.match(r"\s*([45])\d\d\b", text)
        if m:
            return f"{m.group(1)}.0.0"
    return default


def _boundary() -> str:
    return f"=_chainmail_{uuid.uuid4().hex}"


_NOTIFY_FOR = {"failed": "FAILURE", "delayed": "DELAY", "relayed": "SUCCESS",
               "delivered": "SUCCESS"}


def wanted_notifications(mail: Mail, recipients: list[str], action: str) -> list[str]:
    """The recipients whose RFC 3461 ``NOTIFY`` asks for an ``action`` notification.  Without
    NOTIFY, failures are reported and nothing else (RFC 3461 §4.1)."""
    keyword = _NOTIFY_FOR.get(action, "FAILURE")
    out = []
    for r in recipients:
        notify = mail.rcpt_params.get(r, {}).get("NOTIFY")
        words = {w.strip().upper() for w in str(notify).split(",")} if notify else {"FAILURE"}
        if keyword in words and "NEVER" not in words:
            out.append(r)
    return out


def _diagnostic(reason: str) -> str:
    """``smtp; <reply>`` for a remote server's reply, else chainmail's own words."""
    import re
    line = " ".join(reason.split())
    return f"smtp; {line}" if re.match(r"[245]\d\d[ -]", line) else f"X-chainmail; {line}"


_SUBJECT = {"failed": "Undelivered Mail Returned to Sender",
            "delayed": "Delayed Mail (still being retried)",
            "relayed": "Successful Mail Delivery Report",
            "delivered": "Successful Mail Delivery Report"}

_HUMAN = {
    "failed": lambda permanent: [
        "I'm afraid I wasn't able to deliver your message to the following addresses.",
        "This is a permanent error; I've given up. Sorry it didn't work out." if permanent else
        "The error was temporary, but retrying did not succeed in the time allowed; "
        "I've given up."],
    "delayed": lambda permanent: [
        "Your message could not be delivered yet to the following addresses.",
        "I will keep trying; you do not need to send it again."],
    "relayed": lambda permanent: [
        "Your message was relayed to the following addresses, to a server that does not",
        "send delivery notifications: this is the last notice you will get about them."],
    "delivered": lambda permanent: [
        "Your message was delivered to the following addresses."],
}


def build_dsn(mail: Mail, *, reason: str, reporting_mta: str, postmaster: str,
              status: str | None = None, attachment: str = "message",
              recipients: list[str] | None = None, action: str = "failed",
              details: Mapping[str, str] | None = None, remote_mta: str | None = None) -> bytes:
    """An RFC 3464 ``multipart/report; report-type=delivery-status`` message about ``mail``.

    ``attachment``: ``message`` (the whole original, ``message/rfc822``), ``heading`` (its
    header section, ``text/rfc822-headers``) or ``none``.
    """
    rcpts = recipients if recipients is not None else list(mail.recipients)
    details = dict(details or {})
    reasons = {r: " ".join(details.get(r, reason).split()) for r in rcpts}
    statuses = {r: status or status_of(reasons[r], "2.0.0" if action == "relayed" else "5.0.0")
                for r in rcpts}
    boundary = _boundary()
    now = format_datetime(datetime.now(timezone.utc).astimezone())
    arrival = format_datetime(datetime.fromtimestamp(mail.queued_at or time.time(), timezone.utc).astimezone())
    subject = mail.get_header("Subject")
    human = [f"Hi. This is the chainmail mail server at {reporting_mta}.", ""]
    human += _HUMAN[action if action in _HUMAN else "failed"](
        all(st.startswith("5") for st in statuses.values()))
    human.append("")
    human += [f"<{r}>: {reasons[r]}" for r in rcpts]
    if remote_mta:
        human += ["", f"The remote server was {remote_mta}."]
    if subject:
        human += ["", f"The subject of your message was: {subject}"]
    human_text = "\r\n".join(human) + "\r\n"
    human_bytes = human_text.encode("utf-8", "surrogateescape")
    cte = "7bit" if human_bytes.isascii() else "8bit"
    fields = [f"Reporting-MTA: dns; {reporting_mta}"]
    envid = mail.mail_params.get("ENVID")
    if envid:
        fields.append(f"Original-Envelope-Id: {envid}")
    if mail.name:
        fields.append(f"X-chainmail-Queue-ID: {mail.name}")
    fields.append(f"Arrival-Date: {arrival}")
    per_rcpt = []
    for r in rcpts:
        block = []
        orcpt = mail.rcpt_params.get(r, {}).get("ORCPT")
        if orcpt:
            block.append(f"Original-Recipient: {orcpt}")
        block += [f"Final-Recipient: rfc822; {r}", f"Action: {action}", f"Status: {statuses[r]}"]
        if remote_mta:
            block.append(f"Remote-MTA: dns; {remote_mta}")
        if action != "relayed" or r in details:
            block.append(f"Diagnostic-Code: {_diagnostic(reasons[r])}")
        block.append(f"Last-Attempt-Date: {now}")
        per_rcpt.append("\r\n".join(block))
    status_text = "\r\n".join(fields) + "\r\n\r\n" + "\r\n\r\n".join(per_rcpt) + "\r\n"
    domain = postmaster.rpartition("@")[2] or reporting_mta
    head = [
        f"From: Mail Delivery Subsystem <{postmaster}>",
        f"To: <{mail.sender}>",
        f"Subject: {_SUBJECT.get(action, _SUBJECT['failed'])}",
        f"Date: {now}",
        f"Message-ID: <{uuid.uuid4().hex}@{domain}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
    ]
    parts = [
        b"\r\n".join(h.encode() for h in head) + b"\r\n\r\nThis is a MIME-encapsulated message.\r\n",
        (f"--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; "
         f"charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() + human_bytes,
        (f"--{boundary}\r\nContent-Description: Delivery report\r\n"
         f"Content-Type: message/delivery-status\r\n\r\n{status_text}").encode("utf-8", "surrogateescape"),
    ]
    what = "Undelivered Message" if action in ("failed", "delayed") else "Message"
    # The original is quoted in its canonical form (no bare CR, bare LF or NUL), so that its
    # header fields stay where chainmail saw them for every reader of the report.
    if attachment == "message":
        parts.append(f"--{boundary}\r\nContent-Description: {what}\r\n"
                     f"Content-Type: message/rfc822\r\n\r\n".encode() + canonical(mail.content))
    elif attachment == "heading":
        parts.append(f"--{boundary}\r\nContent-Description: {what} Headers\r\n"
                     f"Content-Type: text/rfc822-headers\r\n\r\n".encode() + canonical(mail.head))
    parts = [p if p.endswith(b"\r\n") else p + b"\r\n" for p in parts]
    parts.append(f"--{boundary}--\r\n".encode())
    # Each part keeps its own last line end; the CRLF before each delimiter is the join's.
    return canonical(b"\r\n".join(parts))
