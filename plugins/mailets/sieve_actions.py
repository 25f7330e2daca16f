"""The messages Sieve actions send: the rejection of ``reject`` (RFC 5429 §2.1.1, an MDN
with the ``deleted`` disposition) and the reply of ``vacation`` (RFC 5230, through the
shared rules of :mod:`chainmail.autoreply`)."""

from __future__ import annotations

import email.policy
import hashlib
import uuid
from email.message import EmailMessage
from email.utils import format_datetime

from chainmail.autoreply import build_reply, reply_subject
from chainmail.mailet.api import Mail

from chainmail.sieve_script import VacationAction

__all__ = ["rejection", "vacation_reply", "vacation_handle"]


def rejection(mail: Mail, recipient: str, reason: str, *, postmaster: str,
              hostname: str) -> bytes:
    """The MDN telling the sender of ``mail`` that ``recipient``'s script refused it:
    ``multipart/report; report-type=disposition-notification`` with the reason, the
    disposition ``automatic-action/MDN-sent-automatically; deleted`` and the original's
    header section."""
    from datetime import datetime, timezone
    report = EmailMessage(policy=email.policy.SMTP)
    report["From"] = f"Mail Delivery Subsystem <{postmaster}>"
    report["To"] = mail.sender
    report["Subject"] = reply_subject(mail, "Rejected:")
    report["Date"] = format_datetime(datetime.now(timezone.utc), usegmt=True)
    report["Message-ID"] = f"<{uuid.uuid4().hex}@{hostname}>"
    report["Auto-Submitted"] = "auto-replied"
    original_id = (mail.get_header("Message-ID") or "").strip()
    if original_id:
        report["In-Reply-To"] = original_id
    report.set_content(
        f"Your message to <{recipient}> was automatically rejected:\n\n{reason.rstrip()}\n",
        charset="utf-8")
    fields = [f"Reporting-UA: {hostname}; chainmail Sieve",
              f"Final-Recipient: rfc822; {recipient}"]
    if original_id:
        fields.append(f"Original-Message-ID: {original_id}")
    fields.append("Disposition: automatic-action/MDN-sent-automatically; deleted")
    notification = EmailMessage(policy=email.policy.SMTP)
    notification.set_content(("\r\n".join(fields) + "\r\n").encode("ascii", "replace"),
                             maintype="message", subtype="disposition-notification",
                             cte="7bit")
    report.make_mixed()
    report.attach(notification)
    headers = EmailMessage(policy=email.policy.SMTP)
    headers.set_content(mail.head.replace(b"\r\n", b"\n").decode("ascii", "replace") + "\n",
                        subtype="rfc822-headers")
    report.attach(headers)
    report.set_param("report-type", "disposition-notification")
    report.set_type("multipart/report")
    return report.as_bytes()


def vacation_handle(action: VacationAction) -> str:
    """The handle of a ``vacation`` (RFC 5230 §4.2): ``:handle``, or one drawn from the
    reason, subject, from and ``:mime``, so that another text answers everyone again."""
    if action.handle:
        return "sieve:" + action.handle
    digest = hashlib.sha256("\0".join((action.reason, action.subject or "",
                                       action.from_addr or "", str(action.mime)))
                            .encode("utf-8")).hexdigest()
    return "sieve:#" + digest[:32]


def vacation_reply(mail: Mail, action: VacationAction, *, user_address: str,
                   hostname: str) -> bytes:
    """The reply of ``vacation`` to the sender of ``mail``: from ``:from`` or the user,
    subject ``:subject`` or ``Auto:`` and the original's (RFC 5230 §4.5)."""
    subject = action.subject if action.subject is not None else reply_subject(mail, "Auto:")
    from_addr = action.from_addr or user_address
    if action.mime:
        return build_reply(mail, from_addr=from_addr, to_addr=mail.sender, subject=subject,
                           text=None, mime_entity=action.reason.encode("utf-8"),
                           hostname=hostname)
    return build_reply(mail, from_addr=from_addr, to_addr=mail.sender, subject=subject,
                       text=action.reason, hostname=hostname)
