"""The mailet context: what matchers and mailets may ask of the server (James's
``MailetContext``): local domains and users, the recipient rewrite table, mailboxes,
repositories, the postmaster, sending new mail, bouncing, logging, blocking work.

:class:`ContainerContext` is the container's implementation of the
:class:`chainmail.mailet.api.MailetContext` protocol.  The spool codec
(:mod:`chainmail.mailet.spoolcodec`) and the delivery reports (:mod:`chainmail.mailet.dsn`)
live in their own modules; their names stay importable from here.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable, Iterable, Mapping

import trio

from ..protocol.lineends import canonical
from .api import ATTR_RETRY_AT, ATTR_SENT_BY_MAILET, ROOT, Mail
from .dsn import build_dsn, public_reason, report_delivered, status_of, wanted_notifications
from .outbox import current_outputs
from .repository import MailRepository, RepositoryStore
from .spoolcodec import (ATTR_QUEUE_ID, envelope_of, mail_from_queued, original_queue_id,
                         queue_id_of)

__all__ = ["ContainerContext", "MailetContext", "mail_from_queued", "envelope_of", "build_dsn",
           "status_of", "wanted_notifications", "ATTR_QUEUE_ID", "queue_id_of",
           "original_queue_id", "public_reason", "report_delivered"]

log = logging.getLogger("chainmail.mailet")

_BLOCKING_THREADS = 8


class ContainerContext:
    """Shared by every matcher and mailet of one container.

    ``states`` are the container's processors: whoever builds the engine sets them first
    (``states=config.states``), so that a mailet's ``init`` may check the processors it names
    (:meth:`has_processor`); empty, nothing is checked.
    """

    def __init__(self, *, domains: Any = None, users: Any = None, rrt: Any = None,
                 mailboxes: Any = None, repositories: RepositoryStore | None = None,
                 spool: Any = None, postmaster: str = "postmaster", hostname: str | None = None,
                 auth_networks: Mapping[str, Any] | None = None,
                 limiter: trio.CapacityLimiter | None = None, conf_dir: str = "conf",
                 var_dir: str = "var", states: Iterable[str] = ()) -> None:
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
        self.states: frozenset[str] = frozenset(states)
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
        server = mail.attributes.get("server_name")
        networks = self.auth_networks.get(server) if isinstance(server, str) else None
        if addr and networks is not None:
            return networks.contains(addr)
        return bool(mail.attributes.get("relaying_allowed")) and not mail.auth_user

    # -- blocking work

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
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

    async def send_later(self, mail: Mail, at: float) -> None:
        """Put ``mail`` back in the spool, in its state, not to be processed before ``at``
        (epoch seconds): a mailet's retry after a temporary failure.  The mail keeps its
        name (its queue id), error count and attributes."""
        mail.attributes[ATTR_RETRY_AT] = at
        await self._emit(mail)

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
        ``remote_mta`` names the server that gave it; ``action`` is ``failed``, ``delayed``,
        ``relayed`` or ``delivered`` (:func:`~chainmail.mailet.dsn.report_delivered`)."""
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


#: The name the container's context had before :class:`chainmail.mailet.api.MailetContext`
#: became the protocol mailets are typed against; kept for code that builds one.
MailetContext = ContainerContext
