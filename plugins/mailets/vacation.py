"""``VacationMailet`` (``org.apache.james.transport.mailets.VacationMailet``): the
out-of-office reply of each recipient whose vacation (``chainmail vacation set``) is on.

James's behaviour, with the rules of :mod:`chainmail.autoreply` (RFC 3834): no reply to
the null sender, to machines and lists, to mail that does not name the user, nor to the
user; one reply per sender until ``days`` have passed (James registers one per vacation:
here a changed or cleared vacation also forgets who was answered).  The reply goes from
the null sender (``useUserAsMailFrom``: from the user) to the envelope sender, or with
``replyMode`` ``replyToHeader`` to the ``Reply-To`` address; the mail itself goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from chainmail.autoreply import address_of, build_reply, reason_not_to_reply, reply_subject
from chainmail.mailet.api import ROOT, GenericMailet, Mail

__all__ = ["VacationMailet"]

log = logging.getLogger("chainmail.mailet.vacation")

REPLY_MODES = ("envelope", "replytoheader")
DAY = 86400.0


class VacationMailet(GenericMailet):
    """Send each recipient's vacation reply (once per sender and period); the mail goes
    on."""

    parameters = ("useUserAsMailFrom", "replyMode", "days")

    def configure(self, config):
        self.user_as_sender = config.get_bool("useUserAsMailFrom", False)
        mode = (config.get("replyMode") or "envelope").strip()
        if mode.lower() not in REPLY_MODES:
            raise config.error("replyMode", f"{mode!r}: expected envelope or replyToHeader")
        self.reply_to_header = mode.lower() == "replytoheader"
        self.days = config.get_int("days", 7, minimum=1)
        self._store: Any = None
        self._open_lock = threading.Lock()

    def _open(self) -> Any:
        with self._open_lock:
            if self._store is None:
                from chainmail.store.sqlite import DB_FILENAME
                from chainmail.store.vacation import VacationStore
                self._store = VacationStore(os.path.join(self.context.var_dir, DB_FILENAME))
            return self._store

    def _due(self, mail: Mail, targets: list[tuple[str, str]], reply_to: str,
             now: float) -> list[tuple[str, str, Any]]:
        """The recipients to answer now, each with its vacation; records the replies
        (blocking)."""
        from chainmail.store.vacation import MAILET_HANDLE
        store = self._open()
        due = []
        for rcpt, username in targets:
            vacation = store.get(username)
            if vacation is None or not vacation.active_at(now):
                continue
            reason = reason_not_to_reply(mail.sender, mail, (rcpt, username))
            if reason is not None:
                log.info("%s: vacation of %s: no reply (%s)", mail.name, username, reason)
                continue
            if not store.claim_notice(username, reply_to, MAILET_HANDLE, self.days * DAY, now):
                log.info("%s: vacation of %s: <%s> was answered within %d days", mail.name,
                         username, reply_to, self.days)
                continue
            due.append((rcpt, username, vacation))
        return due

    async def service(self, mail: Mail) -> None:
        if mail.has_null_sender:
            return
        users = self.context.users
        targets = []
        for rcpt in mail.recipients:
            username = users.username_for(rcpt) if users is not None else rcpt.lower()
            if users is None or users.contains(username):
                targets.append((rcpt, username))
        if not targets:
            return
        reply_to = mail.sender
        if self.reply_to_header:
            reply_to = address_of(mail.get_header("Reply-To") or "") or mail.sender
        due = await self.context.run_blocking(self._due, mail, targets, reply_to, time.time())
        for rcpt, username, vacation in due:
            content = build_reply(
                mail, from_addr=username, to_addr=reply_to,
                subject=vacation.subject or reply_subject(mail, "Re:"),
                text=vacation.text_body or "", html=vacation.html_body,
                hostname=self.context.hostname)
            sender = username if self.user_as_sender else ""
            await self.context.send_message(sender, [reply_to], content, state=ROOT)
            log.info("%s: vacation of %s: replied to <%s>", mail.name, username, reply_to)

    def destroy(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
