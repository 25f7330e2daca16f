"""Running mailets and matchers on a :class:`Mail`, with the container's real context and
temporary stores (users, domains, Maildirs, repositories, spool).

A whole processor (``<processor>`` XML) is built and run by the container's own engine;
a single mailet or matcher is configured as a ``<mailet>`` element would configure it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from chainmail.mailet.api import Mail, MailetConfig, MatcherConfig

from ._loop import TrioThread
from .conf import mailetcontainer_xml
from .stores import LocalStores

__all__ = ["MailetHarness", "MailetRun", "Processed", "SAMPLE_MESSAGE"]

SAMPLE_MESSAGE = (b"From: Alice <alice@remote.example>\r\nTo: bob@local.test\r\n"
                  b"Subject: hello\r\nMessage-ID: <m1@remote.example>\r\n\r\nbody line\r\n")

#: The processors of the shipped ``conf/mailetcontainer.xml``: a mailet that names a
#: processor (``ToProcessor``, ``errorProcessor``) may check that it exists.
DEFAULT_STATES = ("root", "transport", "local-delivery", "relay", "error", "local-address-error",
                  "relay-denied", "rrt-error", "bounces")


@dataclass
class MailetRun:
    """One ``service`` call: the mail afterwards, the mail the mailet sent (copies, bounces,
    notifications; not processed further) and what was logged."""

    mail: Mail
    sent: list[Mail] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


@dataclass
class Processed:
    """A mail run through processors: the copies that finished, the mail sent by mailets
    (which the spool would then process from their state), the error-repository keys of
    mail stored there, and what was logged."""

    finished: list[Mail] = field(default_factory=list)
    sent: list[Mail] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class MailetHarness:
    """Temporary stores and a real mailet context; see :meth:`mailet`, :meth:`matcher`,
    :meth:`service`, :meth:`match` and :meth:`process`.

    ``local_domains`` and ``users`` (``{"bob@local.test": "password"}``) are created first;
    ``authorized_addresses`` is the ``authorizedAddresses`` of the server the mail is said to
    have come through (``SMTPIsAuthNetwork``).  Close it, or use it as a context manager.
    """

    def __init__(self, *, local_domains: Iterable[str] = ("local.test",),
                 users: Mapping[str, str] | None = None, postmaster: str = "postmaster",
                 hostname: str = "mx.test", authorized_addresses: str = "127.0.0.0/8",
                 states: Iterable[str] = DEFAULT_STATES, var: str | Path | None = None) -> None:
        from chainmail.config.netmatch import NetworkSet
        from chainmail.mailet.context import ContainerContext

        self._tmp = None
        if var is None:
            self._tmp = tempfile.mkdtemp(prefix="chainmail-mailets-")
            var = Path(self._tmp) / "var"
        self.var = Path(var)
        self.conf = self.var.parent / "conf"
        self.conf.mkdir(parents=True, exist_ok=True)
        domains = list(local_domains)
        self.stores = LocalStores(self.var, default_domain=domains[0] if domains else "localhost",
                                  domains=domains, users=users)
        s = self.stores
        networks = NetworkSet(authorized_addresses)
        #: the container's context, as mailets see it (``mailet.context``)
        self.context = ContainerContext(
            domains=s.domains, users=s.users, rrt=s.rrt, mailboxes=s.mailboxes,
            repositories=s.repositories, spool=s.spool, postmaster=postmaster, hostname=hostname,
            auth_networks={"smtpserver": networks}, conf_dir=str(self.conf), var_dir=str(self.var),
            states=states)
        self._loop = TrioThread(name="chainmail-mailets")
        self._objects: list[Any] = []

    # -- building ------------------------------------------------------------------------
    def mail(self, content: bytes | str = SAMPLE_MESSAGE, *, sender: str = "alice@remote.example",
             recipients: Iterable[str] = ("bob@local.test",), remote_addr: str = "127.0.0.1",
             attributes: Mapping[str, Any] | None = None, **kwargs: Any) -> Mail:
        """A :class:`Mail` as the SMTP server hands it over: the client's address and the
        server it came through among its attributes (``attributes`` adds or replaces some:
        ``auth_user``, ``helo`` ...).  ``kwargs`` go to ``Mail`` (``state``, ``name``...)."""
        data = content.encode() if isinstance(content, str) else bytes(content)
        attrs = {"remote_addr": remote_addr, "server_name": "smtpserver", "helo": "client.test",
                 "relaying_allowed": False, **(attributes or {})}
        return Mail(kwargs.pop("name", None), sender, list(recipients), data, attributes=attrs,
                    **kwargs)

    def mailet(self, mailet: Any, params: Mapping[str, Any] | None = None, *,
               processor: str = "root") -> Any:
        """An initialised mailet: a class, or a name installed in ``chainmail.mailets``;
        ``params`` as the ``<mailet>`` element's children."""
        cls, name = self._resolve("mailet", mailet)
        obj = cls() if isinstance(cls, type) else cls
        config = MailetConfig(name, {k: str(v) for k, v in (params or {}).items()}, self.context,
                              processor, str(self.conf / "mailetcontainer.xml"), None)
        obj.init(config)
        self._objects.append(obj)
        return obj

    def matcher(self, matcher: Any, condition: str | None = None, *,
                processor: str = "root") -> Any:
        """An initialised matcher: a class, or a name installed in ``chainmail.matchers``;
        ``condition`` as written after ``match="Name="``."""
        cls, name = self._resolve("matcher", matcher)
        obj = cls() if isinstance(cls, type) else cls
        obj.init(MatcherConfig(name, condition, self.context, processor,
                               str(self.conf / "mailetcontainer.xml"), None))
        self._objects.append(obj)
        return obj

    @staticmethod
    def _resolve(what: str, item: Any) -> tuple[Any, str]:
        if not isinstance(item, str):
            return item, getattr(item, "__name__", type(item).__name__)
        from chainmail.mailet import engine
        resolve = engine.resolve_mailet if what == "mailet" else engine.resolve_matcher
        cls, _ = resolve(item)
        return cls, item

    # -- running -------------------------------------------------------------------------
    def _run(self, fn, *args) -> tuple[Any, list[str]]:
        capture = _Capture()
        logger = logging.getLogger("chainmail")
        logger.addHandler(capture)
        level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            return self._loop.call(fn, *args), capture.lines
        finally:
            logger.removeHandler(capture)
            logger.setLevel(level)

    async def _call(self, obj: Any, method: str, mail: Mail) -> Any:
        import inspect
        fn = getattr(obj, method)
        if inspect.iscoroutinefunction(fn):
            return await fn(mail)
        if getattr(obj, "runs_on", None) == "thread":
            return await self.context.run_blocking(fn, mail)
        return fn(mail)

    async def _collecting(self, obj: Any, method: str, mail: Mail) -> tuple[Any, list[Mail]]:
        from chainmail.mailet.outbox import current_outputs
        sent: list[Mail] = []
        token = current_outputs.set(sent)
        try:
            return await self._call(obj, method, mail), sent
        finally:
            current_outputs.reset(token)

    def service(self, mailet: Any, mail: Mail) -> MailetRun:
        """Run ``mailet.service(mail)`` (sync, trio ``async`` or ``runs_on = "thread"``).
        Errors are raised to the test as they would reach the container."""
        (_, sent), logs = self._run(self._collecting, mailet, "service", mail)
        return MailetRun(mail, sent, logs)

    def match(self, matcher: Any, mail: Mail) -> list[str]:
        """The recipients ``matcher`` matches, in ``mail``'s order (``[]`` for none)."""
        (result, _), _ = self._run(self._collecting, matcher, "match", mail)
        if not result:
            return []
        wanted = {str(r).lower() for r in ([result] if isinstance(result, str) else result)}
        return [r for r in mail.recipients if r.lower() in wanted]

    def process(self, processors: str, mail: Mail) -> Processed:
        """Build a container from ``processors`` (``<processor>`` elements or a whole
        ``<mailetcontainer>``) with the container's own code, and run ``mail`` through it
        from its state (``root`` by default)."""
        from chainmail.mailet.config import load_mailetcontainer
        from chainmail.mailet.engine import build_engine
        path = self.conf / "mailetcontainer.xml"
        path.write_text(mailetcontainer_xml(processors))
        config = load_mailetcontainer(str(path))
        assert config is not None   # the file was just written
        states = self.context.states
        self.context.states = frozenset(config.states)   # what the mailets may name
        engine = build_engine(config, self.context)
        try:
            result, logs = self._run(engine.service, mail)
        finally:
            engine.destroy()
            self.context.states = states
        return Processed(list(result.finished), list(result.outputs), list(result.stored), logs)

    # -- results -------------------------------------------------------------------------
    def mailbox(self, user: str) -> list[bytes]:
        """What ``LocalDelivery`` delivered into ``user``'s Maildir."""
        return self.stores.mailbox(user)

    def repository(self, name: str) -> list[Mail]:
        """The mails in repository ``name`` (``error``, or ``file://var/mail/...``)."""
        return self.stores.repository(name)

    def spooled(self):
        """What mailets committed to the spool outside a processing run."""
        return self.stores.spooled()

    def close(self) -> None:
        for obj in self._objects:
            destroy = getattr(obj, "destroy", None)
            if callable(destroy):
                destroy()
        self._objects.clear()
        try:
            self._loop.call(self.context.spool.aclose)
        finally:
            self._loop.stop()
            self.stores.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def __enter__(self) -> "MailetHarness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
