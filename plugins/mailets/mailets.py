"""The standard mailets (``org.apache.james.transport.mailets.*``)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime

from chainmail.mailet.api import ERROR, GHOST, ROOT, GenericMailet, Mail, encode_header_value
from chainmail.protocol import xtext
from chainmail.protocol.lineends import canonical
from chainmail.sevenbit import for_line_store

__all__ = [
    "RecipientRewriteTable", "LocalDelivery", "ToProcessor", "ToRepository", "Null", "Bounce",
    "DSNBounce", "NotifyPostmaster", "AddHeader", "SetMimeHeader", "RemoveMimeHeader",
    "SetMailAttribute", "RemoveMailAttribute", "LogMessage", "PostmasterAlias", "Redirect",
    "Forward", "MailAttributesToMimeHeaders",
]

log = logging.getLogger("chainmail.mailet")


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _check_processor(mailet: GenericMailet, key: str, state: str) -> str:
    context = mailet.context
    if context is not None and context.states and state not in context.states and state != GHOST:
        raise mailet.config.error(key, f"no processor named {state!r}; the processors are "
                                       + ", ".join(sorted(context.states)))
    return state


def _attachment(mailet: GenericMailet, default: str) -> str:
    value = (mailet.config.get("attachment") or default).strip().lower()
    aliases = {"all": "message", "message": "message", "heading": "heading", "headers": "heading",
               "none": "none", "body": "message"}
    if value not in aliases:
        raise mailet.config.error("attachment", f"{value!r}: expected message, heading or none")
    return aliases[value]


# ---------------------------------------------------------------------- routing and storage


class ToProcessor(GenericMailet):
    """Send the mail to another processor.  ``processor`` (required): its name; ``notice``:
    becomes the mail's error message (shown in bounces)."""

    parameters = ("processor", "notice")

    def configure(self, config):
        self.processor = _check_processor(self, "processor", config.require("processor").strip())
        self.notice = config.get("notice")

    def service(self, mail):
        if self.notice:
            mail.error_message = self.notice
        mail.state = self.processor


class ToRepository(GenericMailet):
    """Store the mail in a repository.  ``repositoryPath`` (required): its URL, such as
    ``file://var/mail/error/``; ``passThrough`` (default false): go on processing afterwards."""

    parameters = ("repositoryPath", "passThrough")

    def configure(self, config):
        self.url = config.require("repositoryPath").strip()
        self.pass_through = config.get_bool("passThrough", False)
        self.repository = self.context.repository(self.url)

    async def service(self, mail):
        key = await self.context.run_blocking(self.repository.store, mail)
        log.info("%s: stored in %s as %s (from <%s> to %s)%s", mail.name, self.url, key,
                 mail.sender, ", ".join(f"<{r}>" for r in mail.recipients),
                 f": {mail.error_message}" if mail.error_message else "")
        if not self.pass_through:
            mail.state = GHOST


class Null(GenericMailet):
    """Drop the mail (it is finished: state ``ghost``)."""

    parameters = ()

    def service(self, mail):
        mail.state = GHOST


# ------------------------------------------------------------------------------ delivery


class RecipientRewriteTable(GenericMailet):
    """Rewrite recipients with the recipient rewrite table: aliases, forwards, domain aliases.

    Recipients without a mapping stay as they are.  Local results of a rewriting replace the
    recipient; remote results are sent as a new mail (marked as sent by a mailet, so the
    ``transport`` processor may relay it).  A recipient whose
    rewriting loops goes to ``errorProcessor`` (default ``error``) with the reason.
    """

    parameters = ("errorProcessor",)

    def configure(self, config):
        self.error_processor = _check_processor(self, "errorProcessor",
                                                (config.get("errorProcessor") or ERROR).strip())

    async def service(self, mail):
        rrt = self.context.rrt
        if rrt is None:
            return
        from chainmail.store.rrt import RewriteLoopError
        local: list[str] = []   # what this mail keeps
        remote: list[str] = []
        errors: dict[str, list[str]] = {}
        for rcpt in mail.recipients:
            try:
                targets = rrt.resolve(rcpt)
            except RewriteLoopError as exc:
                errors.setdefault(f"554 5.4.6 Recipient rewriting failed: {exc}", []).append(rcpt)
                continue
            if targets == [rcpt.lower()] or targets == [rcpt]:
                if rcpt not in local:
                    local.append(rcpt)  # no mapping: stays as it is, local or not
                continue
            log.info("%s: <%s> rewritten to %s", mail.name, rcpt,
                     ", ".join(f"<{t}>" for t in targets))
            _pass_dsn_parameters(mail, rcpt, targets)
            for target in targets:
                keep = target == rcpt.lower() or self.context.is_local_server(_domain(target))
                bucket = local if keep else remote
                if target not in bucket:
                    bucket.append(target)
        for reason, rcpts in errors.items():
            failed = mail.duplicate(rcpts)
            failed.error_message = reason
            log.warning("%s: %s", mail.name, reason)
            await self.context.send_mail(failed, self.error_processor)
        if remote:
            await self.context.send_mail(mail.duplicate(remote), ROOT)
        mail.recipients = local
        if not local:
            mail.state = GHOST


def _pass_dsn_parameters(mail, rcpt: str, targets: list[str]) -> None:
    """RFC 3461 §6.2.7: a recipient's DSN request follows it through an alias.  To one
    address it passes as it is; expanded to several, NOTIFY=SUCCESS is not passed on (the
    sender asked about one recipient, not about each member), and ORCPT names the address the
    sender gave."""
    params = mail.rcpt_params.get(rcpt)
    if not params:
        return
    passed = dict(params)
    passed.setdefault("ORCPT", f"rfc822;{xtext.encode(rcpt)}")
    if len(targets) > 1 and passed.get("NOTIFY"):
        words = [w for w in str(passed["NOTIFY"]).upper().split(",") if w and w != "SUCCESS"]
        passed["NOTIFY"] = ",".join(words) or "NEVER"
    for target in targets:
        mail.rcpt_params.setdefault(target, dict(passed))


class LocalDelivery(GenericMailet):
    """Deliver to the inbox of each recipient (a local user; ``+detail`` ignored), adding
    ``Return-Path`` and ``Delivered-To``.  The mail is finished afterwards.

    A temporary failure (a Maildir that cannot be written: I/O error, full disk, wrong
    permissions) is retried: the recipients it concerns are put back in the spool, in this
    processor, after each delay of ``delayTime`` (James's syntax, default
    ``1 minute, 5 minutes, 15 minutes, 1 hour, 4 hours``), at most ``maxRetries`` times
    (default 5).  Permanent failures (unknown user, over quota) and retries exhausted go to
    ``errorProcessor`` (default ``error``), whose bounce says ``Action: failed`` with a 5.x.x
    status.  The sender only ever sees ``Mailbox temporarily unavailable``; the log has the
    details, under the queue id.

    A recipient that asked for ``NOTIFY=SUCCESS`` (RFC 3461) earns its sender a report with
    ``Action: delivered`` and status 2.0.0 (the header section attached) once every copy of
    it is written; never for a mail with the null sender.

    Folders (James's storage directive): the attribute ``DeliveryPaths_<user>`` (a list of
    folder names; ``DeliveryPath_<user>``, one name, as James's older mailets set it), set
    by ``Sieve`` or ``JMAPFiltering``, sends the user's copy to those Maildir++ folders
    instead of the inbox (``INBOX`` names the inbox).  A folder name the store refuses
    (``..``, control characters) is logged and that copy goes to the inbox."""

    parameters = ("errorProcessor", "maxRetries", "delayTime")

    def configure(self, config):
        from chainmail.remote.config import DelayError, DelaysAndMaxRetry, delays_and_max_retry
        self.error_processor = _check_processor(self, "errorProcessor",
                                                (config.get("errorProcessor") or ERROR).strip())
        max_retries = config.get_int("maxRetries", LOCAL_MAX_RETRIES)
        delay_time = config.get("delayTime")
        if delay_time is None:   # the default's first delays (the last one repeats)
            delay_time = ", ".join(LOCAL_DELAY_TIME.split(", ")[:max(1, max_retries)])
        problems: list[str] = []
        try:
            self.schedule = (delays_and_max_retry(max_retries, delay_time, problems)
                             if max_retries else DelaysAndMaxRetry(0, ()))
        except DelayError as exc:
            raise config.error("delayTime", str(exc)) from None
        for problem in problems:
            log.warning("%s:%s: LocalDelivery delayTime: %s", config.file, config.line, problem)

    async def service(self, mail):
        from chainmail.store.mailbox import QuotaExceededError
        context = self.context
        users, mailboxes = context.users, context.mailboxes
        if mailboxes is None:
            raise RuntimeError("no mailbox store configured")
        failed: dict[str, list[str]] = {}
        temporary: list[str] = []
        targets: list[tuple[str, str, str | None]] = []   # (recipient, username, folder)
        for rcpt in mail.recipients:
            username = users.username_for(rcpt) if users is not None else rcpt.lower()
            if users is not None and not users.contains(username):
                failed.setdefault(f"550 5.1.1 Unknown user: <{rcpt}>", []).append(rcpt)
                continue
            for folder in _folders(mail, rcpt, username):
                targets.append((rcpt, username, folder))
        # Every recipient in one delivery group (shared with concurrent mails): fifty
        # recipients cost one sync round, not fifty.
        # shared by every item: no copy per recipient
        content = for_line_store(mail.content, mail.mail_params)
        items = [(username, content, f"Return-Path: <{mail.sender}>\r\nDelivered-To: {rcpt}\r\n"
                  .encode("utf-8", "surrogateescape"), folder) for rcpt, username, folder in targets]
        results = await mailboxes.adeliver_many(items, limiter=context.limiter) if items else []
        delivered = []
        failed_rcpts: set[str] = set()
        retry_folders: dict[str, list[str]] = {}   # username -> the folders to try again
        partly: set[str] = set()   # usernames with a folder written
        for (rcpt, username, folder), result in zip(targets, results):
            if isinstance(result, QuotaExceededError) and rcpt not in failed_rcpts:
                failed_rcpts.add(rcpt)
                failed.setdefault(str(result), []).append(rcpt)
            elif isinstance(result, QuotaExceededError):
                continue   # the recipient's other folders: one reason is enough
            elif isinstance(result, Exception):
                # The details (paths, errno) are for the operator only.
                log.warning("%s: mailbox of %s not written: %s: %s", mail.name, username,
                            type(result).__name__, result)
                if rcpt not in temporary:
                    temporary.append(rcpt)
                retry_folders.setdefault(username, []).append(folder or "INBOX")
            else:
                partly.add(username)
                where = "" if folder is None else f" in {folder}"
                delivered.append((f"<{rcpt}>" if rcpt.lower() == username
                                  else f"<{rcpt}> ({username})") + where)
        if delivered:   # one line per mail, however many recipients
            log.info("%s: delivered to %s", mail.name, ", ".join(delivered))
        if temporary:
            # a retry writes only the folders not written yet
            await self._retry_or_fail(mail, temporary, failed, {
                user: names for user, names in retry_folders.items() if user in partly})
        for reason, rcpts in failed.items():
            copy = mail.duplicate(rcpts)
            copy.error_message = reason
            log.warning("%s: not delivered to %s: %s", mail.name,
                        ", ".join(f"<{r}>" for r in rcpts), reason)
            await context.send_mail(copy, self.error_processor)
        done = [r for r in dict.fromkeys(r for r, _, _ in targets)
                if r not in failed_rcpts and r not in temporary]
        if done:
            await self._report_delivered(mail, done)
        mail.state = GHOST

    async def _report_delivered(self, mail, rcpts: list[str]) -> None:
        """RFC 3461 ``NOTIFY=SUCCESS``: a ``delivered`` report for the recipients that asked.
        A report that cannot be made is logged: the mail is delivered all the same, and
        failing here would deliver it twice."""
        from chainmail.mailet.dsn import report_delivered
        try:
            await report_delivered(self.context, mail, rcpts)
        except Exception:
            log.exception("%s: delivered report for %s not sent", mail.name,
                          ", ".join(f"<{r}>" for r in rcpts))

    async def _retry_or_fail(self, mail, rcpts: list[str], failed: dict[str, list[str]],
                             folders: dict[str, list[str]] | None = None) -> None:
        """Put ``rcpts`` back in the spool for a later try, or (retries exhausted) add them
        to ``failed`` with a reason that says so.  ``folders``: the storage directive of
        the retry for users whose other folders were written."""
        import time
        from chainmail.mailet.api import ATTR_ERROR
        done = int(mail.attributes.get(ATTR_LOCAL_RETRIES) or 0)
        if done >= self.schedule.max_retries:
            reason = (f"{TEMPORARY_FAILURE}; gave up after {done} "
                      f"{'retry' if done == 1 else 'retries'}")
            failed.setdefault(reason, []).extend(rcpts)
            return
        delay = self.schedule.delay_before_retry(done + 1) / 1000
        retry = mail.duplicate(rcpts, name=mail.name)   # the same queue id
        retry.attributes[ATTR_LOCAL_RETRIES] = done + 1
        retry.attributes.pop(ATTR_ERROR, None)
        for username, names in (folders or {}).items():
            retry.attributes.pop(f"{DELIVERY_PATH}{username}", None)
            retry.attributes[f"{DELIVERY_PATHS}{username}"] = names
        retry.error_message = f"{TEMPORARY_FAILURE} (retry {done + 1} of {self.schedule.max_retries})"
        retry.state = mail.state
        await self.context.send_later(retry, time.time() + delay)
        log.info("%s: temporary failure for %s; retry %d of %d in %.0f s", mail.name,
                 ", ".join(f"<{r}>" for r in rcpts), done + 1, self.schedule.max_retries, delay)


def _folders(mail: Mail, rcpt: str, username: str) -> list[str | None]:
    """The folders the storage directive of ``mail`` names for this recipient (James's
    ``DeliveryPaths_<user>`` list, or the single ``DeliveryPath_<user>``), each once, names
    the Maildir store refuses dropped with a warning; ``[None]`` (the inbox) without one."""
    from chainmail.store.mailbox import MailboxError, maildir_folder_for
    attributes = mail.attributes
    value = None
    for key in (username, rcpt, rcpt.lower()):
        if f"{DELIVERY_PATHS}{key}" in attributes:
            value = attributes[f"{DELIVERY_PATHS}{key}"]
            break
        if f"{DELIVERY_PATH}{key}" in attributes:
            value = [attributes[f"{DELIVERY_PATH}{key}"]]
            break
    if value is None:
        return [None]
    if isinstance(value, str):
        value = [value]
    folders: list[str | None] = []
    seen: set[str] = set()
    for name in value if isinstance(value, (list, tuple)) else [value]:
        try:
            directory = maildir_folder_for(str(name))
        except MailboxError as exc:
            log.warning("%s: %s: %s; delivered to the inbox instead", mail.name, username, exc)
            directory, name = "", None
        if directory not in seen:
            seen.add(directory)
            folders.append(str(name) if directory else None)
    return folders or [None]


#: James's storage directive: the folders of a user (``DeliveryPaths_<user>``, a list) or
#: its one folder (``DeliveryPath_<user>``, the older form)
DELIVERY_PATHS = "DeliveryPaths_"
DELIVERY_PATH = "DeliveryPath_"
#: LocalDelivery's retry schedule (parameters ``maxRetries`` and ``delayTime``)
LOCAL_MAX_RETRIES = 5
LOCAL_DELAY_TIME = "1 minute, 5 minutes, 15 minutes, 1 hour, 4 hours"
#: the attribute counting LocalDelivery's retries of a mail
ATTR_LOCAL_RETRIES = "chainmail.local-delivery-retries"
#: what a sender is told about a mailbox that could not be written (never why: see the log)
TEMPORARY_FAILURE = "451 4.3.0 Mailbox temporarily unavailable"


class PostmasterAlias(GenericMailet):
    """Rewrite ``postmaster@<any local domain>`` to the container's postmaster address."""

    parameters = ()

    def service(self, mail):
        postmaster = self.context.postmaster
        out: list[str] = []
        for rcpt in mail.recipients:
            local, _, domain = rcpt.rpartition("@")
            if local.lower() == "postmaster" and self.context.is_local_server(domain):
                rcpt = postmaster
            if rcpt not in out:
                out.append(rcpt)
        mail.recipients = out


# --------------------------------------------------------------------------- notifications


class Bounce(GenericMailet):
    """Send the sender an RFC 3464 delivery status notification (``multipart/report``) from
    the postmaster, with the null reverse-path; never for mail with the null sender.

    ``message``: the reason (default: the mail's error message); ``attachment``: ``message``
    (default), ``heading`` or ``none``; ``status``: the enhanced status code (default: from
    the reason, else 5.0.0); ``passThrough`` (default true): go on processing afterwards."""

    parameters = ("message", "notice", "attachment", "status", "passThrough")

    default_pass_through = True

    def configure(self, config):
        self.notice = config.get("message") or config.get("notice")
        self.attachment = _attachment(self, "message")
        self.status = config.get("status")
        self.pass_through = config.get_bool("passThrough", self.default_pass_through)

    async def service(self, mail):
        # After RemoteDelivery (bounceProcessor): each recipient's own reason and the server
        # that gave it go into the report.
        details = mail.attributes.get("chainmail.delivery-errors")
        await self.context.bounce(mail, mail.error_message if not self.notice else
                                  self.notice + (f" ({mail.error_message})" if mail.error_message else ""),
                                  status=self.status, attachment=self.attachment,
                                  details=details if isinstance(details, dict) else None,
                                  remote_mta=mail.attributes.get("chainmail.remote-mta"))
        if not self.pass_through:
            mail.state = GHOST


class DSNBounce(Bounce):
    """James's ``DSNBounce``: the same RFC 3464 notification as :class:`Bounce`."""


class NotifyPostmaster(GenericMailet):
    """Send the postmaster a notification with the mail attached.

    ``notice``: the text; ``attachment``: ``message`` (default), ``heading``, ``none``;
    ``attachError`` (default false): include the error message; ``prefix``: subject prefix
    (default ``[NOTIFY]``); ``to``: recipients (default the postmaster); ``passThrough``
    (default true).  Sent with the null sender, so it never bounces."""

    parameters = ("notice", "attachment", "attachError", "prefix", "to", "passThrough")

    def configure(self, config):
        self.notice = config.get("notice") or ("We were unable to deliver the attached message "
                                               "because of an error in the mail server.")
        self.attachment = _attachment(self, "message")
        self.attach_error = config.get_bool("attachError", False)
        self.prefix = config.get("prefix", "[NOTIFY]")
        self.to = config.get_list("to")
        self.pass_through = config.get_bool("passThrough", True)

    async def service(self, mail):
        context = self.context
        recipients = [context.postmaster if t.lower() == "postmaster" else t for t in self.to] or [context.postmaster]
        text = [self.notice, "", "Message details:", f"  Queue ID: {mail.name}",
                f"  Sender: <{mail.sender}>",
                "  Recipients: " + ", ".join(f"<{r}>" for r in mail.recipients),
                f"  Remote address: {mail.remote_addr or '-'}",
                f"  Subject: {mail.get_header('Subject') or '-'}", f"  Size: {mail.size} bytes"]
        if self.attach_error and mail.error_message:
            text += ["", f"Error message: {mail.error_message}"]
        subject = f"{self.prefix} {mail.get_header('Subject') or ''}".strip()
        content = _multipart(context, recipients, subject, "\r\n".join(text) + "\r\n", mail,
                             self.attachment)
        await context.send_message("", recipients, content)
        if not self.pass_through:
            mail.state = GHOST


def _multipart(context, recipients, subject, text, mail: Mail, attachment: str) -> bytes:
    boundary = f"=_chainmail_{uuid.uuid4().hex}"
    domain = context.postmaster.rpartition("@")[2]
    body = text.encode("utf-8")
    head = [
        f"From: Mail Delivery Subsystem <{context.postmaster}>",
        "To: " + ", ".join(f"<{r}>" for r in recipients),
        f"Subject: {encode_header_value(subject, 'Subject')}",
        f"Date: {format_datetime(datetime.now(timezone.utc).astimezone())}",
        f"Message-ID: <{uuid.uuid4().hex}@{domain}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    parts = [b"\r\n".join(h.encode() for h in head) + b"\r\n\r\n",
             (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
              f"Content-Transfer-Encoding: {'7bit' if body.isascii() else '8bit'}\r\n\r\n").encode() + body]
    if attachment == "message":   # quoted in canonical form, as bounces quote it
        parts.append(f"--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode()
                     + canonical(mail.content))
    elif attachment == "heading":
        parts.append(f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode()
                     + canonical(mail.head))
    parts = [p if p.endswith(b"\r\n") else p + b"\r\n" for p in parts]
    parts.append(f"--{boundary}--\r\n".encode())
    return canonical(b"\r\n".join(parts))


def _addresses(mailet, values: list[str], mail: Mail) -> list[str]:
    context = mailet.context
    out: list[str] = []
    for value in values:
        special = value.lower()
        if special == "postmaster":
            targets = [context.postmaster]
        elif special in ("sender", "from"):
            targets = [mail.sender] if mail.sender else []
        elif special in ("unaltered", "recipients"):
            targets = list(mail.recipients)
        elif special == "null":
            targets = []
        else:
            targets = [value]
        out.extend(t for t in targets if t not in out)
    return out


class Redirect(GenericMailet):
    """Send the mail to other recipients.

    ``recipients`` (or ``to``; required): comma list of addresses, or ``postmaster``,
    ``sender``, ``unaltered``; ``sender``: the new envelope sender (an address,
    ``postmaster``, ``null``, default ``unaltered``); ``prefix``: subject prefix;
    ``passThrough`` (default false): the original also goes on."""

    parameters = ("recipients", "to", "sender", "prefix", "passThrough")

    default_pass_through = False

    def configure(self, config):
        self.targets = config.get_list("recipients") or config.get_list("to")
        if not self.targets:
            raise config.error("recipients", "is required: the addresses to redirect to")
        self.sender = (config.get("sender") or "unaltered").strip()
        self.prefix = config.get("prefix")
        self.pass_through = config.get_bool("passThrough", self.default_pass_through)

    async def service(self, mail):
        recipients = _addresses(self, self.targets, mail)
        copy = mail.duplicate(recipients)
        special = self.sender.lower()
        if special == "postmaster":
            copy.sender = self.context.postmaster
        elif special == "null":
            copy.sender = ""
        elif special not in ("unaltered", "sender"):
            copy.sender = self.sender
        if self.prefix:
            subject = copy.get_header("Subject") or ""
            copy.set_header("Subject", f"{self.prefix} {subject}".strip())
        if recipients:
            await self.context.send_mail(copy, ROOT)
            log.info("%s: redirected to %s", mail.name, ", ".join(f"<{r}>" for r in recipients))
        if not self.pass_through:
            mail.state = GHOST


class Forward(GenericMailet):
    """Forward the mail, unchanged, to ``forwardTo`` (or ``forwardto``; required, comma
    list).  The original is finished unless ``passThrough`` is true."""

    parameters = ("forwardTo", "forwardto", "passThrough")

    def configure(self, config):
        self.targets = config.get_list("forwardTo") or config.get_list("forwardto")
        if not self.targets:
            raise config.error("forwardTo", "is required: the addresses to forward to")
        self.pass_through = config.get_bool("passThrough", False)

    async def service(self, mail):
        recipients = _addresses(self, self.targets, mail)
        if recipients:
            await self.context.send_mail(mail.duplicate(recipients), ROOT)
            log.info("%s: forwarded to %s", mail.name, ", ".join(f"<{r}>" for r in recipients))
        if not self.pass_through:
            mail.state = GHOST


# ---------------------------------------------------------------------------- headers


class AddHeader(GenericMailet):
    """Add a header field: ``name`` and ``value`` (both required)."""

    parameters = ("name", "value")

    def configure(self, config):
        self.name = config.require("name").strip()
        self.value = config.get("value", "")
        if ":" in self.name or " " in self.name:
            raise config.error("name", f"{self.name!r} is not a header field name")

    def service(self, mail):
        mail.add_header(self.name, self.value)


class SetMimeHeader(AddHeader):
    """Set a header field (replacing any existing one): ``name`` and ``value``."""

    def service(self, mail):
        mail.set_header(self.name, self.value)


class RemoveMimeHeader(GenericMailet):
    """Remove header fields: ``name`` (required; comma list)."""

    parameters = ("name",)

    def configure(self, config):
        self.names = config.get_list("name")
        if not self.names:
            raise config.error("name", "is required: the header field(s) to remove")

    def service(self, mail):
        for name in self.names:
            mail.remove_header(name)


class MailAttributesToMimeHeaders(GenericMailet):
    """Copy attributes into header fields: ``simplemapping`` = ``attribute; Header-Name``
    (repeat the element, or separate mappings by commas)."""

    parameters = ("simplemapping",)

    def configure(self, config):
        self.mappings: list[tuple[str, str]] = []
        for item in config.get_list("simplemapping"):
            attr, sep, header = item.partition(";")
            if not sep or not attr.strip() or not header.strip():
                raise config.error("simplemapping", f"{item!r}: expected 'attribute; Header-Name'")
            self.mappings.append((attr.strip(), header.strip()))
        if not self.mappings:
            raise config.error("simplemapping", "is required")

    def service(self, mail):
        for attr, header in self.mappings:
            if attr in mail.attributes:
                value = mail.attributes[attr]
                mail.add_header(header, value if isinstance(value, str) else str(value))


# ------------------------------------------------------------------------- attributes


class SetMailAttribute(GenericMailet):
    """Set attributes: every parameter is an attribute name with its (string) value."""

    parameters = None   # every child element is an attribute name: nothing to check

    def configure(self, config):
        self.values = dict(config.params)
        if not self.values:
            raise config.error("(parameters)", "expected at least one <name>value</name>")

    def service(self, mail):
        mail.attributes.update(self.values)


class RemoveMailAttribute(GenericMailet):
    """Remove attributes: ``name`` (comma list)."""

    parameters = ("name",)

    def configure(self, config):
        self.names = config.get_list("name")
        if not self.names:
            raise config.error("name", "is required: the attribute(s) to remove")

    def service(self, mail):
        for name in self.names:
            mail.attributes.pop(name, None)


# ------------------------------------------------------------------------------ logging


class LogMessage(GenericMailet):
    """Log the mail: ``comment``; ``headers`` (default true); ``body`` (default true);
    ``bodyMax`` (bytes of body, default 0 = all); ``passThrough`` (default true)."""

    parameters = ("comment", "headers", "body", "bodyMax", "passThrough")

    def configure(self, config):
        self.comment = config.get("comment")
        self.headers = config.get_bool("headers", True)
        self.body = config.get_bool("body", True)
        self.body_max = config.get_int("bodyMax", 0)
        self.pass_through = config.get_bool("passThrough", True)

    def service(self, mail):
        lines = [f"{mail.name}: from <{mail.sender}> to "
                 + ", ".join(f"<{r}>" for r in mail.recipients) + f", {mail.size} bytes"]
        if self.comment:
            lines.append(self.comment)
        if self.headers:
            lines.append(mail.head.decode("utf-8", "replace").rstrip())
        if self.body:
            body = mail.body
            if self.body_max:
                body = body[:self.body_max]
            lines.append(body.decode("utf-8", "replace").rstrip())
        log.info("%s", "\n".join(lines))
        if not self.pass_through:
            mail.state = GHOST
