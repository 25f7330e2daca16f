"""Test matchers and mailets, and helpers to build an engine from XML without sockets."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import trio

from chainmail.config.xml import parse_bytes
from chainmail.mailet import engine as engine_mod
from chainmail.mailet.api import GHOST, GenericMailet, GenericMatcher, Mail
from chainmail.mailet.config import parse_mailetcontainer

CONTENT = (b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"From: Alice <alice@remote.example>\r\nTo: bob@local.test\r\n"
           b"Subject: hello\r\nMessage-ID: <m1@remote.example>\r\n\r\nbody line\r\n")


def mail(recipients=("bob@local.test",), sender="alice@remote.example", content=CONTENT, **kw) -> Mail:
    return Mail(kw.pop("name", None), sender, list(recipients), content, **kw)


class Record(GenericMailet):
    """Records (processor, name, recipients) of every mail it sees in ``Record.seen``."""

    seen: list = []

    def configure(self, config):
        self.tag = config.get("tag", config.processor)

    def service(self, mail):
        Record.seen.append((self.tag, tuple(mail.recipients)))


class Crash(GenericMailet):
    """Always raises."""

    def service(self, mail):
        raise RuntimeError("crash test")


class GoTo(GenericMailet):
    """Sets the state to ``state``."""

    def configure(self, config):
        self.state = config.get("state", "root")

    def service(self, mail):
        mail.state = self.state


class Slow(GenericMailet):
    """Sleeps ``delay`` seconds on trio, counting concurrent services per mail name."""

    active: dict = {}
    overlap = 0
    calls = 0

    def configure(self, config):
        self.delay = float(config.get("delay", "0.05"))

    async def service(self, mail):
        key = mail.attributes.get("id", mail.name)
        Slow.calls += 1
        if Slow.active.get(key):
            Slow.overlap += 1
        Slow.active[key] = Slow.active.get(key, 0) + 1
        try:
            await trio.sleep(self.delay)
        finally:
            Slow.active[key] -= 1


class SendBack(GenericMailet):
    """Sends the mail to state ``state`` through the spool (``context.send_mail``) and ghosts it."""

    def configure(self, config):
        self.state = config.get("state", "root")

    async def service(self, mail):
        await self.context.send_mail(mail, self.state)
        mail.state = GHOST


class ThreadMailet(GenericMailet):
    """A blocking mailet run in a worker thread."""

    runs_on = "thread"

    def service(self, mail):
        import threading
        mail.attributes["thread"] = threading.current_thread().name


class Boom(GenericMatcher):
    """A matcher that raises."""

    def match(self, mail):
        raise ValueError("matcher exploded")


class FirstRecipient(GenericMatcher):
    def match(self, mail):
        return mail.recipients[:1]


class AsyncAll(GenericMatcher):
    async def match(self, mail):
        await trio.sleep(0)
        return list(mail.recipients)


TEST_MAILETS = {n: f"tests.mailet.helpers:{n}" for n in
                ("Record", "Crash", "GoTo", "Slow", "SendBack", "ThreadMailet")}
TEST_MATCHERS = {n: f"tests.mailet.helpers:{n}" for n in ("Boom", "FirstRecipient", "AsyncAll")}


def install_test_plugins(monkeypatch) -> None:
    """Make the test classes visible as entry points (as an installed plugin's would be)."""
    original = engine_mod._installed

    def installed(group):
        eps = dict(original(group))
        extra = TEST_MAILETS if group == engine_mod.MAILET_GROUP else TEST_MATCHERS
        for name, value in extra.items():
            eps[name] = EntryPoint(name, value, group)
        return eps

    monkeypatch.setattr(engine_mod, "_installed", installed)


def container_xml(processors: str, *, spooler: str = "") -> str:
    return (f"<mailetcontainer><context><postmaster>postmaster@local.test</postmaster></context>"
            f"{spooler}<processors>{processors}</processors></mailetcontainer>")


def parse(xml: str, file: str = "mailetcontainer.xml"):
    return parse_mailetcontainer(parse_bytes(xml.encode(), file), file)


def build(xml: str, context):
    config = parse(xml)
    context.states = frozenset(config.states)   # as the container gives them before building
    return engine_mod.build_engine(config, context)
