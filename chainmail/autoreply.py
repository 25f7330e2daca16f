"""Automatic replies (RFC 3834): when not to answer, and the reply itself.

Shared by the ``VacationMailet`` and Sieve's ``vacation`` action, so that both follow the
same rules: never answer the null sender or a mailer daemon, mail that says it was sent
automatically (``Auto-Submitted`` other than ``no``, ``Precedence: bulk|list|junk``, a
``List-*`` field), mail on which the user is not named in ``To``/``Cc``/``Bcc`` (nor its
``Resent-`` forms), or the user's own mail; and answer one sender at most once per period
(the period is the caller's: see :mod:`chainmail.store.vacation`).  The reply carries
``Auto-Submitted: auto-replied``, ``In-Reply-To`` and ``References``, and is sent with the
null reverse-path so that nothing answers it in turn.
"""

from __future__ import annotations

import contextlib
import email.policy
import re
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from typing import Iterable, Protocol

__all__ = ["HeaderSource", "reason_not_to_reply", "build_reply", "reply_subject",
           "address_of", "AUTO_REPLIED"]

AUTO_REPLIED = "auto-replied"
#: local parts that are machines, not people (RFC 5230 §4.6, and James's ``-noreply``)
_MACHINE_LOCALPARTS = ("mailer-daemon", "listserv", "majordomo", "noreply", "no-reply",
                       "do-not-reply", "donotreply")
_BULK_PRECEDENCE = ("bulk", "list", "junk")
_LIST_FIELDS = ("list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post",
                "list-owner", "list-archive")
_NAMING_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


class HeaderSource(Protocol):
    """What the rules read of a message (a :class:`chainmail.mailet.api.Mail` is one)."""

    def get_headers(self, name: str) -> list[str]: ...

    def get_header(self, name: str, default: str | None = None) -> str | None: ...


def reason_not_to_reply(sender: str, message: HeaderSource,
                        own_addresses: Iterable[str]) -> str | None:
    """Why ``message`` (from envelope ``sender``) must get no automatic reply, or ``None``.

    ``own_addresses``: the user's addresses (its own, and Sieve's ``:addresses``); one of
    them must be named in ``To``, ``Cc``, ``Bcc`` or their ``Resent-`` forms."""
    if not sender:
        return "the sender is null"
    local = sender.rpartition("@")[0].lower() or sender.lower()
    if (local in _MACHINE_LOCALPARTS or local.startswith("owner-")
            or local.endswith("-request") or local.endswith("-noreply")):
        return f"the sender {sender} is a machine"
    own = {a.strip().lower() for a in own_addresses if a and a.strip()}
    if sender.lower() in own:
        return "the sender is the user"
    for value in message.get_headers("Auto-Submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return f"Auto-Submitted: {value.strip()}"
    for value in message.get_headers("Precedence"):
        if value.strip().lower() in _BULK_PRECEDENCE:
            return f"Precedence: {value.strip()}"
    for name in _LIST_FIELDS:
        if message.get_headers(name):
            return f"a {name.title()} field (list mail)"
    for value in message.get_headers("X-Auto-Response-Suppress"):
        if {v.strip().lower() for v in value.split(",")} & {"all", "oof"}:
            return f"X-Auto-Response-Suppress: {value.strip()}"
    named = {addr.lower() for _, addr in
             getaddresses([v for f in _NAMING_FIELDS for v in message.get_headers(f)]) if addr}
    if not named & own:
        return "the user is not named in To, Cc or Bcc"
    return None


def reply_subject(message: HeaderSource, prefix: str) -> str:
    """``prefix`` and the original subject (decoded), without doubling ``Re:``/``Auto:``."""
    from email.header import decode_header, make_header
    original = message.get_header("Subject") or ""
    with contextlib.suppress(ValueError, LookupError):
        original = str(make_header(decode_header(original)))
    original = " ".join(original.split())
    if original.lower().startswith(prefix.strip().lower()):
        return original
    return f"{prefix} {original}".strip()


def build_reply(message: HeaderSource, *, from_addr: str, to_addr: str, subject: str,
                text: str | None, html: str | None = None, mime_entity: bytes | None = None,
                hostname: str = "localhost") -> bytes:
    """The reply to ``message`` (CRLF line ends): ``From`` ``from_addr``, ``To``
    ``to_addr``, ``Subject`` ``subject``, ``Auto-Submitted: auto-replied``,
    ``In-Reply-To`` and ``References`` from the original's ``Message-ID``.

    The body: ``text`` (and ``html``, as ``multipart/alternative``), or ``mime_entity``, a
    whole MIME part (its own header fields and body, as Sieve's ``vacation :mime`` gives
    it)."""
    reply = EmailMessage(policy=email.policy.SMTP)
    reply["From"] = from_addr
    reply["To"] = to_addr
    reply["Subject"] = subject
    reply["Date"] = format_datetime(_now(), usegmt=True)
    reply["Message-ID"] = f"<{uuid.uuid4().hex}@{hostname}>"
    reply["Auto-Submitted"] = AUTO_REPLIED
    original_id = (message.get_header("Message-ID") or "").strip()
    if original_id:
        reply["In-Reply-To"] = original_id
        references = " ".join((message.get_header("References") or "").split())
        reply["References"] = f"{references} {original_id}".strip()
    if mime_entity is not None:
        return _with_entity(reply, mime_entity)
    reply.set_content(text or "", charset="utf-8")
    if html:
        reply.add_alternative(html, subtype="html", charset="utf-8")
    return reply.as_bytes()


def _with_entity(reply: EmailMessage, entity: bytes) -> bytes:
    """The reply's header fields, ``MIME-Version``, then the entity as it is (its
    ``Content-*`` fields and body), with CRLF line ends."""
    head = reply.as_bytes().split(b"\r\n\r\n", 1)[0]
    body = entity.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").lstrip(b"\r\n")
    if not re.match(rb"[!-9;-~]+:", body):
        # no header section: a plain text entity
        body = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    return head + b"\r\nMIME-Version: 1.0\r\n" + body


def _now():
    from datetime import datetime, timezone
    return datetime.now(timezone.utc)


def address_of(value: str) -> str:
    """The address in a ``From``-like value (``"Name <a@b>"`` -> ``a@b``)."""
    return parseaddr(value)[1]
