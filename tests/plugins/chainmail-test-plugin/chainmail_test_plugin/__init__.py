"""Example third-party handlers for chainmail.

Each class is a handler: chainmail finds it through the ``chainmail.handlers`` entry points in
this package's ``pyproject.toml`` when an operator names it in ``<handlerchain>``, creates one
instance per server block, calls ``configure()`` with the ``<handler>`` element's parameters,
and calls the hook methods it defines.
"""

from __future__ import annotations

import asyncio
import time

import trio

from chainmail.chain import HandlerConfig
from chainmail.verdict import HookResult


class RecipientBlocker:
    """Refuses RCPT to the addresses listed in ``<blocked>`` (comma separated), with the
    reply given by ``<code>``, ``<enhanced>`` and ``<text>``.

    ``<handler class="RecipientBlocker"><blocked>a@example.org</blocked><code>550</code>
    <enhanced>5.7.1</enhanced><text>Not here</text></handler>``
    """

    def configure(self, config: HandlerConfig) -> None:
        blocked = config.get("blocked", "")
        self.blocked = {a.strip().lower() for a in blocked.split(",") if a.strip()}
        self.code = config.get_int("code", 550, minimum=400)
        self.enhanced = config.get("enhanced")
        self.text = config.get("text", "Recipient blocked")

    def on_rcpt(self, recipient):
        if str(recipient).lower() in self.blocked:
            return HookResult.deny(self.code, self.text, self.enhanced)
        return None


class KeywordAnnouncer:
    """Adds ``<keyword>`` to the EHLO reply (shows chain order in EHLO)."""

    def configure(self, config: HandlerConfig) -> None:
        self.keyword = config.get("keyword", "X-EXAMPLE")

    def ehlo_keywords(self, session):
        return (self.keyword,)


class AsyncioSenderCheck:
    """An asyncio coroutine hook: refuses senders from ``<domain>`` with a 450, after an
    ``asyncio.sleep`` that proves it runs on an asyncio loop."""

    runs_on = "asyncio"

    def configure(self, config: HandlerConfig) -> None:
        self.domain = (config.get("domain", "asyncio.example") or "").lower()

    async def on_mail(self, session, sender):
        asyncio.get_running_loop()  # raises unless an asyncio loop runs this coroutine
        await asyncio.sleep(0.001)
        if sender is not None and sender.domain_lower == self.domain:
            return HookResult.denysoft(450, "Greylisted by an asyncio hook", "4.7.1")
        return None


class SlowHeloCheck:
    """A trio coroutine hook that never answers for HELO ``<name>`` (tests the time budget)."""

    def configure(self, config: HandlerConfig) -> None:
        self.name = (config.get("name", "slow.example") or "").lower()

    async def on_helo(self, session, helo):
        if helo.lower() == self.name:
            await trio.sleep_forever()
        await trio.sleep(0)
        return None


class BlockingRecipientCheck:
    """A blocking function run in a worker thread (``runs_on = "thread"``)."""

    runs_on = "thread"

    def on_rcpt(self, recipient):
        time.sleep(0.005)
        if recipient.local.lower() == "thread-denied":
            return HookResult.deny(550, "Refused by a thread hook", "5.1.1")
        return None


class FaultyHook:
    """Raises for the recipient ``explode@...``: the server must answer 451 and go on."""

    def on_rcpt(self, recipient):
        if recipient.local.lower() == "explode":
            raise RuntimeError("handler bug")
        return None


class HeaderStamper:
    """Adds ``X-Stamped-By: <value>`` on top of each message."""

    def configure(self, config: HandlerConfig) -> None:
        self.value = config.get("value", "chainmail-test-plugin")

    def prepend_headers(self, session):
        return f"X-Stamped-By: {self.value}\r\n".encode()


class RecordingDelivery:
    """An LMTP delivery hook that stores messages in a log file (``<log>``, relative to the
    configuration directory) instead of Maildirs: a third-party mailbox store."""

    def configure(self, config: HandlerConfig) -> None:
        import os
        conf_dir = os.path.dirname(config.file) if config.file else "."
        self.path = os.path.join(conf_dir, config.get("log", "deliveries.log"))

    def deliver_to_recipient(self, recipient, message):
        with open(self.path, "ab") as f:
            f.write(f"== {recipient}\n".encode() + message.read() + b"\n")
        return HookResult.ok()


class PassedGreylist:
    """A greylister whose every client has passed its retry: OK for every recipient.  Not a
    relay authoriser, so the server's relay decision still applies to outside domains."""

    def on_rcpt(self, recipient):
        return HookResult.ok()


# -- mailets (entry-point group ``chainmail.mailets``) ----------------------------------------

from chainmail.mailet.api import GenericMailet, MailetError  # noqa: E402


class FailForRecipient(GenericMailet):
    """Raises when the mail is addressed to ``<recipient>`` (with the other recipients or
    alone): with ``onMailetException=propagate`` the failure leaves the container."""

    def configure(self, config) -> None:
        self.recipient = config.require("recipient").strip().lower()

    def service(self, mail):
        if any(r.lower() == self.recipient for r in mail.recipients):
            raise MailetError(f"refusing mail for {self.recipient}")


class DecodeOctetNames(GenericMailet):
    """Rewrites the content, turning the names ``<CR>``, ``<LF>`` and ``<NUL>`` into those
    octets: a mailet that writes bare line ends, as a careless one might (the servers refuse
    them from clients, so this is how they reach the writers in the tests)."""

    NAMES = {b"<CR>": b"\r", b"<LF>": b"\n", b"<NUL>": b"\x00"}

    def service(self, mail):
        content = mail.content
        for name, octet in self.NAMES.items():
            content = content.replace(name, octet)
        mail.set_content(content)
