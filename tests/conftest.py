"""Shared fixtures: a real ``chainmail run`` process with a temporary conf and var directory.

Integration tests talk to it over real sockets with real clients (smtplib, swaks, openssl,
Postfix's tools).  All traffic stays on the loopback interface.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chainmail.testing.server import ChainmailProcess as KitProcess

ROOT = Path(__file__).resolve().parent.parent
CHAINMAIL = [sys.executable, "-m", "chainmail"]

NO_DNS = """<dnsservice><servers><server>127.0.0.1:9</server></servers>
<autodiscover>false</autodiscover><timeout>1</timeout></dnsservice>
"""

DOMAINLIST = """<domainlist>
  <domainnames>{names}</domainnames>
  <autodetect>false</autodetect><autodetectIP>false</autodetectIP>
  <defaultDomain>{default}</defaultDomain>
</domainlist>
"""


def smtpserver_xml(body: str = "", *, bind: str = "127.0.0.1:0", hello: str = "mx.test",
                   core: str = "org.apache.james.smtpserver.NoAuthCmdHandlerLoader",
                   handlers: str = "", authorized: str = "127.0.0.0/8") -> str:
    """One ``<smtpserver>`` block with test defaults; ``body`` adds or overrides options."""
    defaults = {
        "jmxName": f"<jmxName>test{abs(hash(body + bind)) % 100000}</jmxName>",
        "bind": f"<bind>{bind}</bind>",
        "helloName": f'<helloName autodetect="false">{hello}</helloName>',
        "connectiontimeout": "<connectiontimeout>30</connectiontimeout>",
        # James's default (strict) refuses messages without From: and local senders from
        # outside; the identity tests set it explicitly.
        "verifyIdentity": "<verifyIdentity>false</verifyIdentity>",
        "authorizedAddresses": f"<authorizedAddresses>{authorized}</authorizedAddresses>" if authorized else "",
    }
    options = "\n  ".join(v for k, v in defaults.items() if f"<{k}" not in body)
    return (f'<smtpserver enabled="true">\n  {options}\n  {body}\n'
            f'  <handlerchain coreHandlersPackage="{core}">{handlers}</handlerchain>\n</smtpserver>')


class ChainmailProcess(KitProcess):
    """A running ``chainmail run`` (``chainmail.testing``'s process), with the spool at hand."""

    def __init__(self, conf: Path, var: Path, extra_args=()):
        super().__init__(conf, var, args=extra_args, startup_timeout=20)

    def queued(self) -> list:
        from chainmail.store.spool import DirectorySpool
        return DirectorySpool(str(self.var / "spool")).list()

    def queued_body(self, msg_id: str) -> bytes:
        from chainmail.store.spool import DirectorySpool
        with DirectorySpool(str(self.var / "spool")).open_body(msg_id) as f:
            return f.read()


@pytest.fixture
def chainmail_factory(tmp_path):
    """``start(servers_xml, domains=("local.test",), extra_files={})`` -> ChainmailProcess."""
    started: list[ChainmailProcess] = []
    counter = iter(range(1000))

    def start(servers: str | list[str] = "", *, domains=("local.test",), default_domain=None,
              files: dict[str, str] | None = None, raw_smtpserver: str | None = None,
              extra_args=(), **block_options) -> ChainmailProcess:
        base = tmp_path / f"node{next(counter)}"
        conf, var = base / "conf", base / "var"
        conf.mkdir(parents=True)
        if raw_smtpserver is not None:
            (conf / "smtpserver.xml").write_text(raw_smtpserver)
        else:
            blocks = [servers] if isinstance(servers, str) else servers
            blocks = [b if b.lstrip().startswith("<smtpserver") else smtpserver_xml(b, **block_options)
                      for b in blocks]
            (conf / "smtpserver.xml").write_text("<smtpservers>\n" + "\n".join(blocks) + "\n</smtpservers>\n")
        names = "".join(f"<domainname>{d}</domainname>" for d in domains)
        (conf / "domainlist.xml").write_text(
            DOMAINLIST.format(names=names, default=default_domain or (domains[0] if domains else "localhost")))
        # Outgoing mail never asks the system resolver: unless a test brings its own DNS,
        # lookups go to a closed loopback port and fail as temporary errors.
        files = {"dnsservice.xml": NO_DNS, **(files or {})}
        for name, text in files.items():
            (conf / name).write_text(text)
        proc = ChainmailProcess(conf, var, extra_args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def chainmail(chainmail_factory):
    """A default server: local domain local.test, 127.0.0.0/8 may relay."""
    return chainmail_factory()


def need(tool: str) -> str:
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/lib/postfix/sbin/{tool}")
                                       if os.path.exists(p)), None)
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs it (apt-get install postfix swaks)")
    return path


def cli_on_conf(tmp_path, smtpserver: str, *command: str) -> subprocess.CompletedProcess:
    """Write ``smtpserver`` as ``conf/smtpserver.xml`` under ``tmp_path`` and run
    ``chainmail <command> --conf ... --var ...`` on it."""
    conf = tmp_path / "conf"
    conf.mkdir(parents=True)
    (conf / "smtpserver.xml").write_text(smtpserver)
    return subprocess.run([*CHAINMAIL, *command, "--conf", str(conf), "--var", str(tmp_path / "var")],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)


def raw_exchange(port: int, data: bytes, *, host="127.0.0.1", read_until_close=True,
                 timeout=5.0, expect_lines: int | None = None) -> bytes:
    """Send ``data`` in one write and collect what the server answers."""
    import socket
    with socket.create_connection((host, port), timeout=timeout) as s:
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            greeting += chunk
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect_lines is not None and out.count(b"\r\n") >= expect_lines:
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return greeting + out


def read_line(sock, timeout: float = 5) -> bytes:
    """One reply line (up to and including CRLF) from a plain socket."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something true and return that; an
    ``AssertionError`` naming ``what`` after ``timeout`` seconds.  Tests wait on the event
    itself rather than sleeping for a guessed time: fast when it comes at once, patient
    when the machine is slow."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_for_log(source, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
    """Wait until the log of ``source`` (a :class:`ChainmailProcess` or a path) has at least
    ``count`` matches of the regular expression ``pattern``; return the log text."""
    regex = re.compile(pattern)

    def text() -> str:
        if isinstance(source, ChainmailProcess):
            return source.log
        path = Path(source)
        return path.read_text(errors="replace") if path.exists() else ""

    def matched():
        log = text()
        return log if len(regex.findall(log)) >= count else None

    try:
        return wait_for(matched, timeout, f"{count} x {pattern!r} in the log")
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{text()}") from None


#: Seconds within which a running server sees users, aliases and domains changed by the
#: command line (each process asks SQLite at most this often).
STORE_REFRESH = 1.0


def wait_for_recipients(server: ChainmailProcess, *recipients: str, port: int | None = None,
                        hello: bytes = b"EHLO probe.test", changed_at: float | None = None,
                        timeout: float = 10.0) -> None:
    """Wait until ``server`` accepts every one of ``recipients`` at RCPT after a change made
    with the command line at ``changed_at`` (``time.monotonic()``; now by default).

    One process: probe sessions (MAIL, RCPT, RSET, QUIT: nothing is sent) until the
    recipients are accepted, which is at once when the cache is due for a check.  Worker
    processes each keep a cache and a probe reaches only one of them, so first the
    documented bound, :data:`STORE_REFRESH` seconds after the change, has to pass."""
    changed_at = time.monotonic() if changed_at is None else changed_at
    if re.search(r"worker \d+ ready", server.log):
        time.sleep(max(0.0, changed_at + STORE_REFRESH + 0.05 - time.monotonic()))

    def accepted() -> bool:
        data = raw_exchange(port or server.port, hello + b"\r\nMAIL FROM:<probe@remote.example>\r\n" +
                            b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients) +
                            b"RSET\r\nQUIT\r\n")
        return data.count(b"\r\n250 2.1.5 ") == len(recipients)

    wait_for(accepted, timeout, f"RCPT accepted for {', '.join(recipients)}", interval=0.05)


def serving_processes(server: ChainmailProcess) -> int:
    """How many processes of ``server`` serve sessions (its workers, or itself): each logs
    its own ``shutting down``, ``TLS certificates reloaded`` and the like."""
    return len(set(re.findall(r"worker (\d+) ready", server.log))) or 1


@pytest.fixture(scope="session")
def rabbitmq_broker():
    """One RabbitMQ node of the tests' own for the whole run (Debian's rabbitmq-server on
    127.0.0.1, stopped at the end); tests that stop or restart it start it again."""
    from chainmail.testing.rabbitmq import rabbitmq_node
    with rabbitmq_node() as server:
        yield server
