"""A real ``chainmail run`` for integration tests: a subprocess of the test's own
interpreter, on a free loopback port, with a temporary conf and var and a fake DNS."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

from .conf import dnsservice_xml, domainlist_xml, mailetcontainer_xml, server_xml
from .fakedns import FakeDns
from .stores import LocalStores, Spooled

T = TypeVar("T")

__all__ = ["ChainmailProcess", "ChainmailServer", "SHIPPED", "shipped_mailetcontainer"]

LISTENING = re.compile(r"listening on (\[[^\]]+\]|[0-9.]+):(\d+)")
#: ``mailetcontainer=SHIPPED`` (the default): the mailet container chainmail ships.
SHIPPED = "shipped"

_FALLBACK_CONTAINER = """<mailetcontainer><context><postmaster>postmaster</postmaster></context>
<spooler><threads>4</threads><errorRepository>file://var/mail/error/</errorRepository></spooler>
<processors>
<processor state="root"><mailet match="All" class="PostmasterAlias"/>
  <mailet match="All" class="ToProcessor"><processor>transport</processor></mailet></processor>
<processor state="transport">
  <matcher name="relay-allowed" match="org.apache.james.mailetcontainer.impl.matchers.Or">
    <matcher match="SMTPAuthSuccessful"/><matcher match="SMTPIsAuthNetwork"/>
    <matcher match="SentByMailet"/></matcher>
  <mailet match="All" class="RecipientRewriteTable"/>
  <mailet match="RecipientIsLocal" class="LocalDelivery"/>
  <mailet match="HostIsLocal" class="ToProcessor"><processor>local-address-error</processor></mailet>
  <mailet match="relay-allowed" class="RemoteDelivery"><outgoing>outgoing</outgoing>
    <bounceProcessor>bounces</bounceProcessor></mailet>
  <mailet match="All" class="ToProcessor"><processor>relay-denied</processor></mailet></processor>
<processor state="error"><mailet match="All" class="ToRepository">
  <repositoryPath>file://var/mail/error/</repositoryPath></mailet></processor>
<processor state="local-address-error"><mailet match="All" class="Bounce"><attachment>none</attachment></mailet></processor>
<processor state="relay-denied"><mailet match="All" class="ToRepository">
  <repositoryPath>file://var/mail/relay-denied/</repositoryPath></mailet></processor>
<processor state="bounces"><mailet match="All" class="DSNBounce"/></processor>
</processors></mailetcontainer>
"""


def shipped_mailetcontainer() -> str:
    """The ``conf/mailetcontainer.xml`` of the chainmail source tree, or an equivalent of its
    routing when chainmail is installed without it."""
    import chainmail
    path = Path(chainmail.__file__).resolve().parent.parent / "conf" / "mailetcontainer.xml"
    return path.read_text() if path.is_file() else _FALLBACK_CONTAINER


class ChainmailProcess:
    """``chainmail run`` on a configuration directory the test wrote itself, started with the
    test's own interpreter; ready once it has logged "chainmail ready".  ``ports`` lists the
    bound ports in log order (port 0 in a ``<bind>`` picks a free one)."""

    def __init__(self, conf: str | os.PathLike[str], var: str | os.PathLike[str], *,
                 log_path: str | os.PathLike[str] | None = None, args: Iterable[str] = (),
                 startup_timeout: float = 30.0) -> None:
        self.conf, self.var = Path(conf), Path(var)
        self.host = "127.0.0.1"
        self.ports: list[int] = []
        self.log_path = Path(log_path) if log_path is not None else self.var.parent / "chainmail.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chainmail", "run", "--conf", str(self.conf), "--var",
             str(self.var), *args], stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=str(self.log_path.parent))
        try:
            self._wait_ready(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log
            if "chainmail ready" in text:
                self.ports = [int(m.group(2)) for m in LISTENING.finditer(text)]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"chainmail exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"chainmail did not start within {timeout} s:\n{self.log}")

    @property
    def port(self) -> int:
        """The first bound port (the SMTP block's, unless ``smtpserver`` says otherwise)."""
        return self.ports[0]

    @property
    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def smtp(self, port: int | None = None, **kwargs) -> smtplib.SMTP:
        """An ``smtplib.SMTP`` connected to the server (never asks DNS for its own name)."""
        kwargs.setdefault("local_hostname", "client.test")
        kwargs.setdefault("timeout", 30)
        return smtplib.SMTP(self.host, port or self.port, **kwargs)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait (kill after ``timeout``); return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class ChainmailServer(ChainmailProcess):
    """A running ``chainmail run``.

    ``handlers``: ``<handler>`` elements (before the core package) or a whole
    ``<handlerchain>``; ``options``: more elements of the SMTP block; ``smtpserver``: a whole
    ``smtpserver.xml`` instead; ``lmtpserver``: an ``lmtpserver.xml`` too.
    ``mailetcontainer``: ``SHIPPED`` (default), ``None`` (no container: mail stays in the
    spool), or XML (``<processor>`` elements or a whole ``<mailetcontainer>``).
    ``files``: more files of ``conf/`` by name.  ``dns``: a :class:`FakeDns` (one is made).
    """

    def __init__(self, base: str | os.PathLike[str], *, handlers: str = "", options: str = "",
                 smtpserver: str | None = None, lmtpserver: str | None = None,
                 mailetcontainer: str | None = SHIPPED, local_domains: Iterable[str] = ("local.test",),
                 users: Mapping[str, str] | None = None, dns: FakeDns | None = None,
                 files: Mapping[str, str] | None = None, args: Iterable[str] = (),
                 startup_timeout: float = 30.0) -> None:
        base = Path(base)
        self.conf, self.var = base / "conf", base / "var"
        self.conf.mkdir(parents=True, exist_ok=True)
        domains = list(local_domains)
        self.dns = dns if dns is not None else FakeDns()
        self._own_dns = dns is None
        written = {
            "smtpserver.xml": smtpserver if smtpserver is not None else server_xml(handlers, options=options),
            "domainlist.xml": domainlist_xml(domains),
            "dnsservice.xml": dnsservice_xml(self.dns.port),
        }
        if lmtpserver is not None:
            written["lmtpserver.xml"] = lmtpserver
        if mailetcontainer == SHIPPED:
            written["mailetcontainer.xml"] = shipped_mailetcontainer()
        elif mailetcontainer is not None:
            written["mailetcontainer.xml"] = mailetcontainer_xml(mailetcontainer)
        written.update(files or {})
        for name, text in written.items():
            (self.conf / name).write_text(text)
        #: the server's state directory, opened as the server opens it
        self.stores = LocalStores(self.var, default_domain=domains[0] if domains else "localhost",
                                  domains=domains, users=users)
        super().__init__(self.conf, self.var, log_path=base / "chainmail.log", args=args,
                         startup_timeout=startup_timeout)

    # -- talking to it ---------------------------------------------------------------------

    def send(self, sender: str, recipients: str | Iterable[str],
             message: bytes | str | EmailMessage, *, port: int | None = None) -> dict:
        """Send one message over SMTP (EHLO, MAIL, RCPT, DATA, QUIT).  Returns smtplib's
        refused recipients; raises ``smtplib.SMTPException`` if none is accepted."""
        if isinstance(message, EmailMessage):
            message = message.as_bytes()
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        with self.smtp(port) as client:
            return client.sendmail(sender, rcpts, message)

    # -- waiting and reading results ---------------------------------------------------------
    def wait_for(self, condition: Callable[[], T | None], timeout: float = 20.0,
                 what: str = "the condition") -> T:
        """Poll ``condition`` until it returns something true; that value is returned."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                raise RuntimeError(f"chainmail exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout} s; log:\n{self.log}")
            time.sleep(0.05)

    def mailbox(self, user: str) -> list[bytes]:
        """The messages in ``user``'s Maildir now."""
        return self.stores.mailbox(user)

    def wait_for_mailbox(self, user: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
        """Wait until ``user``'s Maildir holds ``count`` messages; return them."""
        return self.wait_for(lambda: (lambda m: m if len(m) >= count else None)(self.mailbox(user)),
                             timeout, f"{count} message(s) in the mailbox of {user}")

    def spooled(self) -> list[Spooled]:
        """Messages in the spool (accepted, not yet processed by the container)."""
        return self.stores.spooled()

    def queue(self, name: str = "outgoing") -> list[Spooled]:
        """The entries of RemoteDelivery's outgoing queue ``name``."""
        return self.stores.spooled(self.var / "outgoing" / name)

    def repository(self, name: str) -> list:
        """The mails of repository ``name`` (``error``, ``relay-denied``...)."""
        return self.stores.repository(name)

    def add_user(self, name: str, password: str) -> None:
        """Create a user while the server runs (seen within its cache refresh, about 1 s)."""
        self.stores.add_user(name, password)

    # -- ending ------------------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait (kill after ``timeout``); return the exit status."""
        code = super().stop(timeout)
        self.stores.close()
        if self._own_dns:
            self.dns.close()
        return code
