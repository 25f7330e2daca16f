"""``Sieve`` (``org.apache.james.transport.mailets.Sieve``): each local recipient's active
Sieve script (RFC 5228) decides where their copy goes.

The scripts are those of ``chainmail sieve`` (:mod:`chainmail.store.sieve`).  For each
recipient with an active script the mailet evaluates it and then acts: folders become the
storage directive ``DeliveryPaths_<user>`` that ``LocalDelivery`` honours (as James's
``SievePoster`` sets it), ``redirect`` sends a copy on, ``reject``/``ereject`` answer the
sender, ``vacation`` replies once per sender and period, and a recipient whose copy is
neither kept nor filed (``discard``, ``reject``, ``redirect``) leaves the mail.  A script
that does not compile or fails while running (RFC 5228 §2.10.6) is logged and the message
is kept in the inbox.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from chainmail.autoreply import reason_not_to_reply
from chainmail.mailet.api import GHOST, ROOT, GenericMailet, Mail

from .sieve_actions import rejection, vacation_handle, vacation_reply
from .sieve_eval import Envelope, Outcome, SieveRuntimeError, evaluate
from chainmail.sieve_script import Script, SieveScriptError, compile_script

__all__ = ["Sieve"]

log = logging.getLogger("chainmail.mailet.sieve")

DELIVERY_PATHS = "DeliveryPaths_"
DAY = 86400.0
_CACHE_SIZE = 256   # compiled scripts kept (by text)


class Sieve(GenericMailet):
    """Run each local recipient's active Sieve script: file, redirect, reject, discard,
    vacation (see docs/sieve.md)."""

    parameters = ()

    def configure(self, config):
        self._stores: tuple[Any, Any] | None = None
        self._open_lock = threading.Lock()
        self._compiled: dict[str, Script | SieveScriptError] = {}

    # -- stores (opened on first use, in a worker thread)

    def _open(self) -> tuple[Any, Any]:
        with self._open_lock:
            if self._stores is None:
                from chainmail.store.sieve import SieveStore
                from chainmail.store.sqlite import DB_FILENAME
                from chainmail.store.vacation import VacationStore
                db = os.path.join(self.context.var_dir, DB_FILENAME)
                self._stores = (SieveStore(db), VacationStore(db))
            return self._stores

    def _scripts(self, usernames: list[str]) -> dict[str, Script | SieveScriptError]:
        """The compiled active script of each user that has one (blocking)."""
        sieve_store, _ = self._open()
        out: dict[str, Script | SieveScriptError] = {}
        for username in usernames:
            stored = sieve_store.active(username)
            if stored is None:
                continue
            compiled = self._compiled.get(stored.script)
            if compiled is None:
                try:
                    compiled = compile_script(stored.script)
                except SieveScriptError as exc:
                    compiled = exc
                if len(self._compiled) >= _CACHE_SIZE:
                    self._compiled.clear()
                self._compiled[stored.script] = compiled
            out[username] = compiled
        return out

    # -- service

    async def service(self, mail: Mail) -> None:
        users = self.context.users
        targets: list[tuple[str, str]] = []
        for rcpt in mail.recipients:
            username = users.username_for(rcpt) if users is not None else rcpt.lower()
            if users is None or users.contains(username):
                targets.append((rcpt, username))
        if not targets:
            return
        scripts = await self.context.run_blocking(
            self._scripts, sorted({u for _, u in targets}))
        if not scripts:
            return
        headers = mail.header_fields()
        gone: list[str] = []
        for rcpt, username in targets:
            script = scripts.get(username)
            if script is None:
                continue
            if isinstance(script, SieveScriptError):
                log.warning("%s: Sieve script of %s does not load (%s); kept in the inbox",
                            mail.name, username, script)
                continue
            try:
                outcome = evaluate(script, Envelope(mail.sender, rcpt, mail.size, headers))
            except SieveRuntimeError as exc:
                log.warning("%s: Sieve script of %s failed (%s); kept in the inbox",
                            mail.name, username, exc)
                continue
            if not await self._apply(mail, rcpt, username, outcome):
                gone.append(rcpt)
        if gone:
            mail.recipients = [r for r in mail.recipients if r not in gone]
            if not mail.recipients:
                mail.state = GHOST

    async def _apply(self, mail: Mail, rcpt: str, username: str, outcome: Outcome) -> bool:
        """Carry out ``outcome`` for ``rcpt``; whether the mail still goes to a folder."""
        if outcome.redirects and _already_delivered_to(mail, username):
            log.warning("%s: Sieve script of %s redirects a message it already redirected "
                        "(Delivered-To: %s): a loop; kept in the inbox", mail.name, username,
                        username)
            return True
        folders = outcome.delivered_to
        if folders != ["INBOX"] or not outcome.implicit_keep:
            mail.attributes[DELIVERY_PATHS + username] = folders
        for address in outcome.redirects:
            await self._redirect(mail, username, address)
        if outcome.reject is not None:
            await self._reject(mail, rcpt, username, *outcome.reject)
        if outcome.vacation is not None:
            await self._vacation(mail, rcpt, username, outcome)
        what = ", ".join(folders) if folders else ("rejected" if outcome.reject else
                                                   "redirected" if outcome.redirects
                                                   else "discarded")
        log.info("%s: Sieve for %s: %s%s", mail.name, username, what,
                 "".join(f"; redirected to <{a}>" for a in outcome.redirects))
        return bool(folders)

    async def _redirect(self, mail: Mail, username: str, address: str) -> None:
        copy = mail.duplicate([address])
        for key in [k for k in copy.attributes if k.startswith(("DeliveryPath_", DELIVERY_PATHS))]:
            del copy.attributes[key]
        # as a forwarding local delivery does: a copy coming back to this user is a loop
        copy.add_header("Delivered-To", username, top=True)
        await self.context.send_mail(copy, ROOT)

    async def _reject(self, mail: Mail, rcpt: str, username: str, kind: str,
                      reason: str) -> None:
        if mail.has_null_sender:
            log.info("%s: Sieve %s for %s: no notice to the null sender", mail.name, kind,
                     username)
            return
        if kind == "ereject":
            await self.context.bounce(mail, f"550 5.7.1 {' '.join(reason.split())}",
                                      status="5.7.1", attachment="heading",
                                      recipients=[rcpt])
            return
        content = rejection(mail, rcpt, reason, postmaster=self.context.postmaster,
                            hostname=self.context.hostname)
        await self.context.send_message("", [mail.sender], content, state=ROOT)

    async def _vacation(self, mail: Mail, rcpt: str, username: str, outcome: Outcome) -> None:
        action = outcome.vacation
        assert action is not None
        own = [rcpt, username, *action.addresses]
        reason = reason_not_to_reply(mail.sender, mail, own)
        if reason is not None:
            log.info("%s: Sieve vacation of %s: no reply (%s)", mail.name, username, reason)
            return
        _, vacations = await self.context.run_blocking(self._open)
        handle = vacation_handle(action)
        fresh = await self.context.run_blocking(vacations.claim_notice, username, mail.sender,
                                                handle, action.days * DAY)
        if not fresh:
            log.info("%s: Sieve vacation of %s: <%s> was answered within %d days", mail.name,
                     username, mail.sender, action.days)
            return
        content = vacation_reply(mail, action, user_address=username,
                                 hostname=self.context.hostname)
        await self.context.send_message("", [mail.sender], content, state=ROOT)
        log.info("%s: Sieve vacation of %s: replied to <%s>", mail.name, username, mail.sender)

    def destroy(self) -> None:
        stores, self._stores = self._stores, None
        for store in stores or ():
            store.close()


def _already_delivered_to(mail: Mail, username: str) -> bool:
    return any(v.strip().lower() == username for v in mail.get_headers("Delivered-To"))
