"""Delivery status notifications (RFC 3464 ``multipart/report``) about a :class:`Mail`, and
the reasons a sender may read in them.

Its own module: the context's ``bounce`` sends what :func:`build_dsn` builds, and mailets and
tests build or check reports without a context.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING, Iterable, Mapping

from ..protocol.lineends import canonical
from ..protocol.xtext import (XtextError, decode_envid, encode, encode_utf8_addr, is_xtext,
                              parse_orcpt)
from .api import Mail
from .spoolcodec import original_queue_id

if TYPE_CHECKING:  # pragma: no cover
    from .api import MailetContext

__all__ = ["build_dsn", "status_of", "public_reason", "wanted_notifications",
           "report_delivered", "original_envelope_id", "original_recipient"]


def status_of(text: str | None, default: str = "5.0.0") -> str:
    """The enhanced status code in an SMTP-like text (``550 5.1.1 ...``), else ``default``."""
    if text:
        m = re.search(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b", text)
        if m:
            return m.group(0)
        m = re.match(r"\s*([45])\d\d\b", text)
        if m:
            return f"{m.group(1)}.0.0"
    return default


_ERRNO_PATH = re.compile(r"(\[Errno -?\d+\] [^:'\"]*?):\s*(?:'[^']*'|\"[^\"]*\")"
                         r"(?:\s*->\s*(?:'[^']*'|\"[^\"]*\"))?")
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+[^\s'\",;)]*")
_TRACEBACK = "Traceback (most recent call last)"


def public_reason(text: str | None) -> str:
    """``text`` fit for a sender to read: one line, no file system path, no stack trace.
    The full text belongs in the log, with the queue id."""
    if not text:
        return ""
    if _TRACEBACK in text:
        return "Internal error while processing the message"
    text = _ERRNO_PATH.sub(r"\1", text)
    text = _ABS_PATH.sub("[path]", text)
    return " ".join(text.split())


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


#: What a ``delivered`` report says of each recipient.
DELIVERED = "delivered to the mailbox"


async def report_delivered(context: MailetContext, mail: Mail,
                           recipients: Iterable[str]) -> Mail | None:
    """RFC 3461 ``NOTIFY=SUCCESS``: send ``mail``'s sender a ``delivered`` report (status
    2.0.0, the header section attached) for those of ``recipients`` that asked for one.
    Nothing for a null sender or when nobody asked; returns the report sent, if any."""
    if mail.has_null_sender:
        return None
    wanted = wanted_notifications(mail, list(recipients), "delivered")
    if not wanted:
        return None
    return await context.bounce(mail, DELIVERED, status="2.0.0", attachment="heading",
                                recipients=wanted, action="delivered")


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def original_envelope_id(value: object) -> str | None:
    """The ``Original-Envelope-Id`` of a report (RFC 3464 §2.2.1): ``ENVID`` decoded from
    xtext.  A value that is not valid xtext (set by a mailet, say) is quoted as it is if it
    is printable US-ASCII, else left out."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return decode_envid(value)
    except XtextError:
        return value if _printable(value) and is_xtext(value) else None


def original_recipient(value: object) -> str | None:
    """The ``Original-Recipient`` of a report (RFC 3464 §2.3.1): ``ORCPT``'s address type and
    its decoded address.  A non-ASCII address stays encoded (``utf-8-addr-xtext`` for the
    ``utf-8`` type, xtext for others), so the report is 7-bit; an invalid value is quoted
    as it is if printable US-ASCII, else left out."""
    if not isinstance(value, str) or not value:
        return None
    try:
        addr_type, address = parse_orcpt(value)
    except XtextError:
        return value if _printable(value) else None
    if not address.isascii():
        address = encode_utf8_addr(address) if addr_type.lower() == "utf-8" else encode(address)
    return f"{addr_type};{address}"


def _diagnostic(reason: str) -> str:
    """``smtp; <reply>`` for a remote server's reply, else chainmail's own words."""
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
    reasons = {r: public_reason(details.get(r, reason)) for r in rcpts}
    success = action in ("relayed", "delivered")
    given = {r: status or status_of(reasons[r], "2.0.0" if success else "5.0.0")
             for r in rcpts}
    permanent = all(st.startswith("5") for st in given.values())
    # A failure is final, whatever the last attempt said: a temporary status (4.x.x) that
    # was retried until the server gave up is reported as the permanent one (5.x.x), as
    # Postfix does; the human text says it was temporary.
    statuses = {r: "5" + st[1:] if action == "failed" and st.startswith("4.") else st
                for r, st in given.items()}
    boundary = _boundary()
    now = format_datetime(datetime.now(timezone.utc).astimezone())
    arrival = format_datetime(datetime.fromtimestamp(mail.queued_at or time.time(), timezone.utc).astimezone())
    subject = mail.get_header("Subject")
    human = [f"Hi. This is the chainmail mail server at {reporting_mta}.", ""]
    human += _HUMAN[action if action in _HUMAN else "failed"](permanent)
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
    envid = original_envelope_id(mail.mail_params.get("ENVID"))
    if envid:
        fields.append(f"Original-Envelope-Id: {envid}")
    if mail.name:   # the id the sender's 250 reply named, not that of a copy made of it
        fields.append(f"X-chainmail-Queue-ID: {original_queue_id(mail.name)}")
    fields.append(f"Arrival-Date: {arrival}")
    per_rcpt = []
    for r in rcpts:
        block = []
        orcpt = original_recipient(mail.rcpt_params.get(r, {}).get("ORCPT"))
        if orcpt:
            block.append(f"Original-Recipient: {orcpt}")
        block += [f"Final-Recipient: rfc822; {r}", f"Action: {action}", f"Status: {statuses[r]}"]
        if remote_mta:
            block.append(f"Remote-MTA: dns; {remote_mta}")
        if not success or r in details:
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
